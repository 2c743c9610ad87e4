/* A hostile wasi-nn guest: every call below passes a bad pointer, size,
 * handle or model, and must get a wasi-nn error back (never crash the
 * host). Prints "case: errno" per call; exits 1 if any call succeeded,
 * then proves the node still works with one good inference.
 *
 *   nn_hostile MODEL.onnx   (a model with one input of 64 floats per row) */
#include <stdint.h>
#include "common.h"
#include "wasi_nn.h"

static int failures;

static void expect_error(const char *what, int32_t e) {
    printf("%s: %d (%s)\n", what, e, nn_strerror(e));
    if (e == 0) { printf("  ^ unexpectedly succeeded\n"); failures++; }
}

#define FAR ((void *)0xfffffff0u)

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: nn_hostile MODEL.onnx\n"); return 2; }
    FILE *f = fopen(argv[1], "rb");
    if (!f) { perror(argv[1]); return 2; }
    static uint8_t model[1 << 20];
    uint32_t len = (uint32_t)fread(model, 1, sizeof model, f);
    fclose(f);
    uint32_t graph = 0, ctx = 0, written = 0;
    nn_graph_builder good = { model, len };

    expect_error("load: builder array out of memory", nn_load(FAR, 1, NN_ENCODING_ONNX, NN_TARGET_CPU, &graph));
    nn_graph_builder far_buf = { FAR, 4096 };
    expect_error("load: model bytes out of memory", nn_load(&far_buf, 1, NN_ENCODING_ONNX, NN_TARGET_CPU, &graph));
    nn_graph_builder huge = { model, 0xffffffffu };
    expect_error("load: model length 4 GiB", nn_load(&huge, 1, NN_ENCODING_ONNX, NN_TARGET_CPU, &graph));
    expect_error("load: graph handle out of memory", nn_load(&good, 1, NN_ENCODING_ONNX, NN_TARGET_CPU, FAR));
    expect_error("load: two builders", nn_load(&good, 2, NN_ENCODING_ONNX, NN_TARGET_CPU, &graph));
    expect_error("load: openvino encoding", nn_load(&good, 1, 0, NN_TARGET_CPU, &graph));
    expect_error("load: tpu target", nn_load(&good, 1, NN_ENCODING_ONNX, 2, &graph));
    expect_error("load: unknown target", nn_load(&good, 1, NN_ENCODING_ONNX, 77, &graph));
    expect_error("load: gpu target in a job without --gpu", nn_load(&good, 1, NN_ENCODING_ONNX, NN_TARGET_GPU, &graph));
    static uint8_t garbage[256];
    for (int i = 0; i < 256; i++) garbage[i] = (uint8_t)(i * 37 + 11);
    nn_graph_builder junk = { garbage, sizeof garbage };
    expect_error("load: garbage model", nn_load(&junk, 1, NN_ENCODING_ONNX, NN_TARGET_CPU, &graph));
    expect_error("load_by_name: name out of memory", nn_load_by_name(FAR, 64, &graph));
    expect_error("load_by_name: invalid UTF-8", nn_load_by_name("\xff\xfe", 2, &graph));
    expect_error("load_by_name: unknown name", nn_load_by_name("nope", 4, &graph));
    expect_error("init_execution_context: bad graph", nn_init_execution_context(12345, &ctx));

    if (nn_load(&good, 1, NN_ENCODING_ONNX, NN_TARGET_CPU, &graph)) { printf("good load failed\n"); return 1; }
    expect_error("init_execution_context: handle out of memory", nn_init_execution_context(graph, FAR));
    if (nn_init_execution_context(graph, &ctx)) { printf("good init failed\n"); return 1; }

    static float data[64 * 4];
    uint32_t dims[2] = { 4, 64 };
    nn_tensor t = { dims, 2, NN_TYPE_F32, (const uint8_t *)data, sizeof data };
    expect_error("set_input: tensor out of memory", nn_set_input(ctx, 0, FAR));
    nn_tensor bad = t; bad.dims = FAR;
    expect_error("set_input: dims out of memory", nn_set_input(ctx, 0, &bad));
    bad = t; bad.data = FAR;
    expect_error("set_input: data out of memory", nn_set_input(ctx, 0, &bad));
    bad = t; bad.data_len = 12;
    expect_error("set_input: data shorter than the shape", nn_set_input(ctx, 0, &bad));
    uint32_t big[4] = { 0xffffffffu, 0xffffffffu, 0xffffffffu, 0x10u };
    bad = t; bad.dims = big; bad.rank = 4;
    expect_error("set_input: huge dimensions", nn_set_input(ctx, 0, &bad));
    uint32_t wrap[2] = { 0x40000000u, 4 };   /* 2^32 elements * 4 bytes: wraps to 0 in u32 */
    bad = t; bad.dims = wrap; bad.data_len = 0;
    expect_error("set_input: size that wraps to 0", nn_set_input(ctx, 0, &bad));
    bad = t; bad.rank = 1000;
    expect_error("set_input: rank 1000", nn_set_input(ctx, 0, &bad));
    bad = t; bad.type = 42;
    expect_error("set_input: unknown tensor type", nn_set_input(ctx, 0, &bad));
    bad = t; bad.type = 4;
    expect_error("set_input: i32 tensor", nn_set_input(ctx, 0, &bad));
    expect_error("set_input: input index 7", nn_set_input(ctx, 7, &t));
    expect_error("set_input: bad context", nn_set_input(999, 0, &t));
    uint32_t wrong[2] = { 4, 63 };
    bad = t; bad.dims = wrong; bad.data_len = 4 * 63 * 4;
    expect_error("compute: wrong input shape", nn_set_input(ctx, 0, &bad) ? -1 : nn_compute(ctx));

    uint32_t ctx2;
    if (nn_init_execution_context(graph, &ctx2)) { printf("second init failed\n"); return 1; }
    expect_error("compute: no input set", nn_compute(ctx2));
    expect_error("get_output: before compute", nn_get_output(ctx2, 0, (uint8_t *)data, sizeof data, &written));
    expect_error("compute: bad context", nn_compute(4242));

    if (nn_set_input(ctx, 0, &t) || nn_compute(ctx)) { printf("good compute failed\n"); return 1; }
    static float out[64];
    expect_error("get_output: buffer out of memory", nn_get_output(ctx, 0, FAR, 4096, &written));
    expect_error("get_output: buffer too small", nn_get_output(ctx, 0, (uint8_t *)out, 8, &written));
    expect_error("get_output: length out of memory", nn_get_output(ctx, 0, (uint8_t *)out, sizeof out, FAR));
    expect_error("get_output: output index 3", nn_get_output(ctx, 3, (uint8_t *)out, sizeof out, &written));
    expect_error("get_output: buffer wraps around", nn_get_output(ctx, 0, (uint8_t *)out, 0xffffffffu, &written));

    int32_t e = nn_get_output(ctx, 0, (uint8_t *)out, sizeof out, &written);
    printf("after all that, a good inference: %s, %u bytes\n", e ? nn_strerror(e) : "ok", written);
    if (e || written != 4 * 10 * 4) return 1;
    if (failures) { printf("%d hostile calls succeeded\n", failures); return 1; }
    printf("every hostile call got an error\n");
    return 0;
}
