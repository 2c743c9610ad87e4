/* Traps on purpose. Mode (argv[1]): unreachable (default), div, oob, stack. */
#include "common.h"
__attribute__((noinline)) static int divide(volatile int a, volatile int b) { return a / b; }
__attribute__((noinline)) static int recurse(volatile int n) { volatile char pad[256]; pad[0] = (char)n; return recurse(n + 1) + pad[0]; }
__attribute__((noinline)) static void fail_here(void) { __builtin_trap(); }
int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "unreachable";
    if (!strcmp(mode, "div")) printf("%d\n", divide(1, 0));
    else if (!strcmp(mode, "oob")) { volatile int *p = (int *)0xfffffff0u; printf("%d\n", *p); }
    else if (!strcmp(mode, "stack")) printf("%d\n", recurse(0));
    else fail_here();
    return 0;
}
