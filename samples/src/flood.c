/* Produces too much output. Mode (argv[1]): stdout (default) writes to
 * stdout forever; file writes one ever-growing /outputs/big; many creates
 * empty files in /outputs forever. */
#include "common.h"
int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "stdout";
    static char line[4096];
    memset(line, 'x', sizeof line - 1);
    if (!strcmp(mode, "stdout")) {
        for (;;) puts(line);
    } else if (!strcmp(mode, "file")) {
        FILE *f = fopen("/outputs/big", "wb");
        if (!f) { perror("/outputs/big"); return 1; }
        for (;;) if (fwrite(line, 1, sizeof line, f) != sizeof line) { perror("write"); return 1; }
    } else if (!strcmp(mode, "many")) {
        char name[64];
        for (unsigned long i = 0;; i++) {
            snprintf(name, sizeof name, "/outputs/f%lu", i);
            FILE *f = fopen(name, "w");
            if (!f) { perror(name); return 1; }
            fclose(f);
        }
    }
    fprintf(stderr, "unknown mode %s\n", mode);
    return 2;
}
