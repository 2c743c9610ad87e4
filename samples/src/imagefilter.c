/* Reads a binary PGM (P5) or PPM (P6), applies OP and writes the result.
 * usage: imagefilter IN OUT OP   with OP one of: invert, gray, blur
 * (gray turns P6 into P5; blur is a 3x3 box blur). */
#include "common.h"

static int read_num(FILE *f) {
    int c, n = 0;
    do { c = getc(f); if (c == '#') while (c != '\n' && c != EOF) c = getc(f); } while (c == ' ' || c == '\n' || c == '\r' || c == '\t');
    if (c < '0' || c > '9') return -1;
    while (c >= '0' && c <= '9') { n = n * 10 + (c - '0'); if (n > 1 << 20) return -1; c = getc(f); }
    return n;
}

int main(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: imagefilter IN OUT invert|gray|blur\n"); return 2; }
    FILE *in = fopen(argv[1], "rb");
    if (!in) { perror(argv[1]); return 1; }
    char magic[3] = {0};
    if (fread(magic, 1, 2, in) != 2 || magic[0] != 'P' || (magic[1] != '5' && magic[1] != '6')) { fprintf(stderr, "%s: not a binary PGM/PPM\n", argv[1]); return 1; }
    int ch = magic[1] == '6' ? 3 : 1;
    int w = read_num(in), h = read_num(in), max = read_num(in);
    if (w <= 0 || h <= 0 || max != 255) { fprintf(stderr, "%s: unsupported header (need 8-bit)\n", argv[1]); return 1; }
    size_t n = (size_t)w * h * ch;
    unsigned char *px = malloc(n), *out = malloc(n);
    if (!px || !out) { fprintf(stderr, "image too large\n"); return 1; }
    if (fread(px, 1, n, in) != n) { fprintf(stderr, "%s: truncated pixel data\n", argv[1]); return 1; }
    fclose(in);
    int och = ch;
    if (!strcmp(argv[3], "invert")) {
        for (size_t i = 0; i < n; i++) out[i] = 255 - px[i];
    } else if (!strcmp(argv[3], "gray")) {
        och = 1;
        for (size_t i = 0; i < (size_t)w * h; i++)
            out[i] = ch == 1 ? px[i] : (unsigned char)((px[3*i] * 299 + px[3*i+1] * 587 + px[3*i+2] * 114) / 1000);
    } else if (!strcmp(argv[3], "blur")) {
        for (int y = 0; y < h; y++) for (int x = 0; x < w; x++) for (int c = 0; c < ch; c++) {
            int s = 0, k = 0;
            for (int dy = -1; dy <= 1; dy++) for (int dx = -1; dx <= 1; dx++) {
                int yy = y + dy, xx = x + dx;
                if (yy < 0 || yy >= h || xx < 0 || xx >= w) continue;
                s += px[((size_t)yy * w + xx) * ch + c]; k++;
            }
            out[((size_t)y * w + x) * ch + c] = (unsigned char)(s / k);
        }
    } else { fprintf(stderr, "unknown op %s\n", argv[3]); return 2; }
    FILE *o = fopen(argv[2], "wb");
    if (!o) { perror(argv[2]); return 1; }
    fprintf(o, "P%c\n%d %d\n255\n", och == 3 ? '6' : '5', w, h);
    fwrite(out, 1, (size_t)w * h * och, o);
    fclose(o);
    printf("%s: %dx%d %s -> %s\n", argv[3], w, h, argv[1], argv[2]);
    return 0;
}
