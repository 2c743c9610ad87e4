/* Lists a directory (default /inputs) in readdir order, one name per line. */
#include "common.h"
static void print(const char *path, const char *name, void *ctx) { (void)path; (void)ctx; printf("%s\n", name); }
int main(int argc, char **argv) {
    return for_each_entry(argc > 1 ? argv[1] : "/inputs", print, NULL) ? 1 : 0;
}
