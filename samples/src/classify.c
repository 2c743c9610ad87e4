/* Classifies every PGM image of a dataset directory with an ONNX model
 * through wasi-nn, and writes one line per image (file, class, score) to
 * /outputs/predictions.tsv. With a labels.tsv (file, label) beside the
 * images it also prints the accuracy.
 *
 *   classify [-n NAME | -m MODEL.onnx] [-t cpu|gpu] [-b BATCH] [-4]
 *            [-i REPEAT] [-d DIR] [-o OUT]
 *
 *   -n NAME   a model the task maps (shoal run --model NAME=CID); default
 *             "digits". It runs on the GPU when the job asks for one.
 *   -m FILE   read the model from FILE (e.g. an --input) and load it.
 *   -t cpu|gpu  the execution target for -m (default cpu).
 *   -b BATCH  images per inference (default 32).
 *   -4        feed [N,1,H,W] instead of [N,H*W] (for CNNs).
 *   -i REPEAT run each batch REPEAT times (benchmarks; default 1).
 *   -d DIR    the dataset (default /inputs).
 *   -o OUT    the predictions (default /outputs/predictions.tsv).
 *
 * Pixels are fed as value/maxval, float32. */
#include <stdint.h>
#include "common.h"
#include "wasi_nn.h"

#define MAX_IMAGES 100000
#define MAX_PIXELS 4096
#define MAX_OUT (1 << 20)

struct list { char **names; int n; };

static void collect(const char *path, const char *name, void *ctx) {
    (void)path;
    struct list *l = ctx;
    size_t len = strlen(name);
    if (len < 4 || strcmp(name + len - 4, ".pgm") != 0 || l->n >= MAX_IMAGES) return;
    l->names[l->n++] = strdup(name);
}

/* Reads a binary PGM (P5, maxval < 256) into px as value/maxval. */
static int read_pgm(const char *path, float *px, int *w, int *h) {
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); return -1; }
    int maxval;
    if (fscanf(f, "P5 %d %d %d", w, h, &maxval) != 3 || *w <= 0 || *h <= 0 || *w * *h > MAX_PIXELS ||
        maxval <= 0 || maxval > 255 || fgetc(f) == EOF) {
        fprintf(stderr, "%s: not an 8-bit binary PGM\n", path);
        fclose(f);
        return -1;
    }
    for (int i = 0; i < *w * *h; i++) {
        int c = fgetc(f);
        if (c == EOF) { fprintf(stderr, "%s: truncated\n", path); fclose(f); return -1; }
        px[i] = (float)c / (float)maxval;
    }
    fclose(f);
    return 0;
}

static uint8_t *read_file(const char *path, uint32_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); return NULL; }
    size_t cap = 1 << 16, n = 0;
    uint8_t *buf = malloc(cap);
    size_t r;
    while (buf && (r = fread(buf + n, 1, cap - n, f)) > 0) {
        n += r;
        if (n == cap) buf = realloc(buf, cap *= 2);
    }
    fclose(f);
    *len = (uint32_t)n;
    return buf;
}

static int label_of(const char *dir, const char *name) {
    char path[4096], file[256];
    int label;
    snprintf(path, sizeof path, "%s/labels.tsv", dir);
    static FILE *f;
    if (!f && !(f = fopen(path, "r"))) return -1;
    rewind(f);
    while (fscanf(f, "%255s %d", file, &label) == 2)
        if (!strcmp(file, name)) return label;
    return -1;
}

#define CHECK(call) do { int32_t e_ = (call); if (e_) { \
    fprintf(stderr, "classify: %s failed: %s (%d)\n", #call, nn_strerror(e_), e_); return 1; } } while (0)

int main(int argc, char **argv) {
    const char *name = "digits", *model_path = NULL, *dir = "/inputs", *out = "/outputs/predictions.tsv";
    uint32_t target = NN_TARGET_CPU;
    int batch = 32, rank4 = 0, repeat = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-4")) { rank4 = 1; continue; }
        if (!v) { fprintf(stderr, "classify: %s needs a value\n", a); return 2; }
        i++;
        if (!strcmp(a, "-n")) name = v;
        else if (!strcmp(a, "-m")) model_path = v;
        else if (!strcmp(a, "-t")) target = !strcmp(v, "gpu") ? NN_TARGET_GPU : NN_TARGET_CPU;
        else if (!strcmp(a, "-b")) batch = atoi(v);
        else if (!strcmp(a, "-i")) repeat = atoi(v);
        else if (!strcmp(a, "-d")) dir = v;
        else if (!strcmp(a, "-o")) out = v;
        else { fprintf(stderr, "classify: unknown option %s\n", a); return 2; }
    }
    if (batch < 1 || batch > 4096 || repeat < 1) { fprintf(stderr, "classify: bad -b or -i\n"); return 2; }

    uint32_t graph, ctx;
    if (model_path) {
        nn_graph_builder b;
        b.buf = read_file(model_path, &b.len);
        if (!b.buf) return 1;
        CHECK(nn_load(&b, 1, NN_ENCODING_ONNX, target, &graph));
    } else {
        CHECK(nn_load_by_name(name, (uint32_t)strlen(name), &graph));
    }
    CHECK(nn_init_execution_context(graph, &ctx));

    struct list l = { malloc(sizeof(char *) * MAX_IMAGES), 0 };
    if (for_each_entry(dir, collect, &l) != 0) return 1;
    if (l.n == 0) { fprintf(stderr, "classify: no .pgm images in %s\n", dir); return 1; }
    FILE *tsv = fopen(out, "w");
    if (!tsv) { perror(out); return 1; }

    float *input = malloc(sizeof(float) * MAX_PIXELS * batch);
    float *probs = malloc(MAX_OUT);
    int w0 = 0, h0 = 0, correct = 0, labelled = 0, batches = 0;
    for (int start = 0; start < l.n; start += batch) {
        int n = l.n - start < batch ? l.n - start : batch;
        for (int k = 0; k < n; k++) {
            char path[4096];
            int w, h;
            snprintf(path, sizeof path, "%s/%s", dir, l.names[start + k]);
            if (read_pgm(path, input + (size_t)k * MAX_PIXELS, &w, &h) != 0) return 1;
            if (w0 == 0) { w0 = w; h0 = h; }
            if (w != w0 || h != h0) { fprintf(stderr, "%s: size %dx%d differs from %dx%d\n", path, w, h, w0, h0); return 1; }
        }
        /* Pack the rows contiguously. */
        int px = w0 * h0;
        for (int k = 1; k < n; k++) memmove(input + (size_t)k * px, input + (size_t)k * MAX_PIXELS, sizeof(float) * px);
        uint32_t dims4[4] = { (uint32_t)n, 1, (uint32_t)h0, (uint32_t)w0 }, dims2[2] = { (uint32_t)n, (uint32_t)px };
        nn_tensor t = { rank4 ? dims4 : dims2, rank4 ? 4 : 2, NN_TYPE_F32, (const uint8_t *)input,
                        (uint32_t)(sizeof(float) * px * n) };
        uint32_t written = 0;
        for (int r = 0; r < repeat; r++) {
            CHECK(nn_set_input(ctx, 0, &t));
            CHECK(nn_compute(ctx));
            CHECK(nn_get_output(ctx, 0, (uint8_t *)probs, MAX_OUT, &written));
        }
        batches++;
        int classes = (int)(written / sizeof(float)) / n;
        if (classes < 1) { fprintf(stderr, "classify: the model returned %u bytes for %d images\n", written, n); return 1; }
        for (int k = 0; k < n; k++) {
            const float *p = probs + (size_t)k * classes;
            int best = 0;
            for (int c = 1; c < classes; c++) if (p[c] > p[best]) best = c;
            fprintf(tsv, "%s\t%d\t%.9g\n", l.names[start + k], best, p[best]);
            int label = label_of(dir, l.names[start + k]);
            if (label >= 0) { labelled++; correct += label == best; }
        }
    }
    fclose(tsv);
    printf("classified %d images in %d batches of up to %d\n", l.n, batches, batch);
    if (labelled) printf("accuracy: %.4f (%d/%d)\n", (double)correct / labelled, correct, labelled);
    return 0;
}
