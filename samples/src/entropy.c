/* Prints what a nondeterministic world would change: wall clock,
 * monotonic clock, random bytes, rand(). Deterministic runs with the same
 * seed must print the same thing. */
#include <stdint.h>
#include <time.h>
#include <unistd.h>
#include "common.h"
int main(void) {
    struct timespec rt, m1, m2;
    clock_gettime(CLOCK_REALTIME, &rt);
    clock_gettime(CLOCK_MONOTONIC, &m1);
    clock_gettime(CLOCK_MONOTONIC, &m2);
    printf("realtime %lld.%09ld\n", (long long)rt.tv_sec, rt.tv_nsec);
    printf("monotonic %lld.%09ld %lld.%09ld\n", (long long)m1.tv_sec, m1.tv_nsec, (long long)m2.tv_sec, m2.tv_nsec);
    unsigned char buf[16];
    if (getentropy(buf, sizeof buf) != 0) { perror("getentropy"); return 1; }
    printf("random ");
    for (size_t i = 0; i < sizeof buf; i++) printf("%02x", buf[i]);
    printf("\narc4random %08x\n", arc4random());
    return 0;
}
