/* Counts lines, words and bytes of every file under a directory (default
 * /inputs, recursively); prints a summary and writes /outputs/counts.tsv
 * with one row per file, named by its path relative to the directory. */
#include <ctype.h>
#include <sys/stat.h>
#include "common.h"

struct totals { FILE *tsv; unsigned long long lines, words, bytes, files; const char *prefix; };

static void count(const char *path, const char *entry, void *ctx) {
    struct totals *t = ctx;
    char name[4096];
    snprintf(name, sizeof name, "%s%s", t->prefix, entry);
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        char sub[4096];
        snprintf(sub, sizeof sub, "%s/", name);
        const char *saved = t->prefix;
        t->prefix = sub;
        for_each_entry(path, count, t);
        t->prefix = saved;
        return;
    }
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
    t.prefix = "";
    t.tsv = fopen("/outputs/counts.tsv", "w");
    if (!t.tsv) perror("/outputs/counts.tsv");
    else fprintf(t.tsv, "file\tlines\twords\tbytes\n");
    if (for_each_entry(dir, count, &t)) return 1;
    printf("%8llu %8llu %8llu total (%llu files)\n", t.lines, t.words, t.bytes, t.files);
    if (t.tsv) { fprintf(t.tsv, "total\t%llu\t%llu\t%llu\n", t.lines, t.words, t.bytes); fclose(t.tsv); }
    return 0;
}
