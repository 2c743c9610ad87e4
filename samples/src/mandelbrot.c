/* CPU- and FP-heavy: renders a SIZE x SIZE Mandelbrot set with up to ITER
 * iterations per pixel (args: SIZE ITER, default 400 256). Prints a
 * checksum; with a third argument, writes a PGM image to that path. */
#include "common.h"
int main(int argc, char **argv) {
    int size = argc > 1 ? atoi(argv[1]) : 400;
    int iter = argc > 2 ? atoi(argv[2]) : 256;
    if (size <= 0 || iter <= 0) { fprintf(stderr, "usage: mandelbrot SIZE ITER [OUT.pgm]\n"); return 2; }
    unsigned char *img = malloc((size_t)size * size);
    if (!img) { fprintf(stderr, "out of memory\n"); return 1; }
    unsigned long long sum = 0;
    double esc = 0;
    for (int y = 0; y < size; y++) {
        double ci = 2.0 * y / size - 1.0;
        for (int x = 0; x < size; x++) {
            double cr = 3.0 * x / size - 2.0, zr = 0, zi = 0;
            int i = 0;
            while (i < iter && zr * zr + zi * zi <= 4.0) {
                double t = zr * zr - zi * zi + cr;
                zi = 2.0 * zr * zi + ci;
                zr = t;
                i++;
            }
            esc += zr * zr + zi * zi;
            img[(size_t)y * size + x] = (unsigned char)(i * 255 / iter);
            sum += i;
        }
    }
    printf("mandelbrot %dx%d iter=%d sum=%llu esc=%.6e\n", size, size, iter, sum, esc);
    if (argc > 3) {
        FILE *f = fopen(argv[3], "wb");
        if (!f) { perror(argv[3]); return 1; }
        fprintf(f, "P5\n%d %d\n255\n", size, size);
        fwrite(img, 1, (size_t)size * size, f);
        fclose(f);
    }
    free(img);
    return 0;
}
