/* Counts lines, words and bytes of every file in a directory (default
 * /inputs); prints a summary and writes /outputs/counts.tsv. */
#include <ctype.h>
#include "common.h"

struct totals { FILE *tsv; unsigned long long lines, words, bytes, files; };

static void count(const char *path, const char *name, void *ctx) {
    struct totals *t = ctx;
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); return; }
    unsigned long long lines = 0, words = 0, bytes = 0;
    int c, in_word = 0;
    while ((c = getc(f)) != EOF) {
        bytes++;
        if (c == '\n') lines++;
        if (isspace(c)) in_word = 0;
        else if (!in_word) { in_word = 1; words++; }
    }
    fclose(f);
    printf("%8llu %8llu %8llu %s\n", lines, words, bytes, name);
    if (t->tsv) fprintf(t->tsv, "%s\t%llu\t%llu\t%llu\n", name, lines, words, bytes);
    t->lines += lines; t->words += words; t->bytes += bytes; t->files++;
}

int main(int argc, char **argv) {
    const char *dir = argc > 1 ? argv[1] : "/inputs";
    struct totals t = {0};
    t.tsv = fopen("/outputs/counts.tsv", "w");
    if (!t.tsv) perror("/outputs/counts.tsv");
    else fprintf(t.tsv, "file\tlines\twords\tbytes\n");
    if (for_each_entry(dir, count, &t)) return 1;
    printf("%8llu %8llu %8llu total (%llu files)\n", t.lines, t.words, t.bytes, t.files);
    if (t.tsv) { fprintf(t.tsv, "total\t%llu\t%llu\t%llu\n", t.lines, t.words, t.bytes); fclose(t.tsv); }
    return 0;
}
