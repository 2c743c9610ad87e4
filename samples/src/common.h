/* Small helpers shared by the samples. */
#ifndef SHOAL_SAMPLES_COMMON_H
#define SHOAL_SAMPLES_COMMON_H
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Calls fn(path, name) for every entry of dir except . and .., in the order
 * readdir returns them (the runtime guarantees sorted order). */
static inline int for_each_entry(const char *dir, void (*fn)(const char *path, const char *name, void *ctx), void *ctx) {
    DIR *d = opendir(dir);
    if (!d) { perror(dir); return -1; }
    struct dirent *e;
    char path[4096];
    while ((e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        fn(path, e->d_name, ctx);
    }
    closedir(d);
    return 0;
}
#endif
