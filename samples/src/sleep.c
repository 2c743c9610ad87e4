/* Sleeps for argv[1] milliseconds (default one hour), then says so. A
 * sleep is a blocking host call the epoch timeout cannot interrupt, so the
 * runtime must refuse sleeps past the job's deadline. */
#include <time.h>
#include "common.h"
int main(int argc, char **argv) {
    long ms = argc > 1 ? atol(argv[1]) : 3600L * 1000;
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    if (nanosleep(&ts, NULL) != 0) { perror("nanosleep"); return 1; }
    printf("slept %ld ms\n", ms);
    return 0;
}
