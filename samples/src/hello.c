/* The trivial job: greets, echoes its arguments and environment. */
#include "common.h"
extern char **environ;
int main(int argc, char **argv) {
    printf("hello from shoal\n");
    for (int i = 1; i < argc; i++) printf("arg %d: %s\n", i, argv[i]);
    for (char **e = environ; *e; e++) printf("env %s\n", *e);
    return 0;
}
