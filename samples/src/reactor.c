/* A reactor: the runtime calls _initialize (C constructors) and then the
 * exported `invoke`, whose return value is the exit code. */
#include "common.h"
static int initialized = 0;
__attribute__((constructor)) static void setup(void) { initialized = 42; }
__attribute__((export_name("invoke"))) int invoke(void) {
    printf("reactor invoked, initialized=%d\n", initialized);
    return initialized == 42 ? 0 : 3;
}
