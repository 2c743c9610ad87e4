/* Tries to get out of its mounts and prints, for every attempt, ESCAPED
 * when it worked and denied otherwise. Expects a read-only mount at
 * /inputs containing a file `data.txt` and a symlink `link` pointing to a
 * file outside the mount, and a writable /outputs. */
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include "common.h"

static int escaped = 0;

static void try_read(const char *what, const char *path) {
    FILE *f = fopen(path, "r");
    if (f) { char buf[64] = {0}; size_t n = fread(buf, 1, sizeof buf - 1, f); fclose(f); printf("ESCAPED %s: read %zu bytes from %s\n", what, n, path); escaped++; }
    else printf("denied %s: %s (%s)\n", what, path, strerror(errno));
}

static void try_write(const char *what, const char *path) {
    FILE *f = fopen(path, "w");
    if (f) { fputs("pwned\n", f); fclose(f); printf("ESCAPED %s: wrote %s\n", what, path); escaped++; }
    else printf("denied %s: %s (%s)\n", what, path, strerror(errno));
}

int main(void) {
    try_read("dotdot", "/inputs/../../../../etc/passwd");
    try_read("dotdot-relative", "../etc/passwd");
    try_read("absolute", "/etc/passwd");
    try_read("symlink-out", "/inputs/link");
    try_read("outputs-dotdot", "/outputs/../inputs/data.txt");
    try_write("write-input", "/inputs/data.txt");
    try_write("create-in-input", "/inputs/new.txt");
    try_write("write-via-dotdot", "/outputs/../inputs/data.txt");
    if (symlink("/etc/passwd", "/outputs/sneaky") == 0) {
        printf("created symlink /outputs/sneaky\n");
        try_read("own-symlink-out", "/outputs/sneaky");
    } else printf("denied make-symlink: %s\n", strerror(errno));
    if (symlink("../inputs/data.txt", "/outputs/sneaky2") == 0)
        try_write("own-symlink-to-input", "/outputs/sneaky2");
    if (link("/inputs/data.txt", "/outputs/hard") == 0) {
        printf("ESCAPED hardlink: linked input into outputs\n");
        escaped++;
        try_write("write-hardlink", "/outputs/hard");
    } else printf("denied hardlink: %s\n", strerror(errno));
    if (unlink("/inputs/data.txt") == 0) { printf("ESCAPED unlink-input\n"); escaped++; }
    else printf("denied unlink-input: %s\n", strerror(errno));
    if (rename("/inputs/data.txt", "/outputs/moved") == 0) { printf("ESCAPED rename-input\n"); escaped++; }
    else printf("denied rename-input: %s\n", strerror(errno));
    printf("escapes: %d\n", escaped);
    return 0;
}
