/* Exits with the code given as argv[1] (default 7). */
#include "common.h"
int main(int argc, char **argv) { printf("exiting\n"); return argc > 1 ? atoi(argv[1]) : 7; }
