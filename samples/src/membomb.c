/* Allocates and touches 1 MiB blocks until malloc fails, then exits 1. */
#include "common.h"
/* Blocks are chained so the compiler cannot prove them unused and elide
 * the allocations (which would turn this into an endless loop). */
void *volatile head = NULL;
int main(void) {
    unsigned long mib = 0;
    for (;;) {
        char *p = malloc(1 << 20);
        if (!p) break;
        memset(p, 0xab, 1 << 20);
        *(void **)p = head;
        head = p;
        mib++;
    }
    fprintf(stderr, "allocation failed after %lu MiB\n", mib);
    return 1;
}
