/* Allocates and touches 1 MiB blocks until malloc fails, then exits 1. */
#include "common.h"
int main(void) {
    unsigned long mib = 0;
    for (;;) {
        char *p = malloc(1 << 20);
        if (!p) break;
        memset(p, 0xab, 1 << 20);
        mib++;
    }
    fprintf(stderr, "allocation failed after %lu MiB\n", mib);
    return 1;
}
