/* The wasi-nn preview 1 ABI (module "wasi_ephemeral_nn"), as Shoal's
 * runtime provides it (docs/wasi-nn.md). wasi-libc has no header for it. */
#ifndef SHOAL_WASI_NN_H
#define SHOAL_WASI_NN_H
#include <stdint.h>

typedef uint16_t nn_errno;   /* 0 = success */
enum { NN_SUCCESS = 0, NN_INVALID_ARGUMENT, NN_INVALID_ENCODING, NN_MISSING_MEMORY, NN_BUSY,
       NN_RUNTIME_ERROR, NN_UNSUPPORTED_OPERATION, NN_TOO_LARGE, NN_NOT_FOUND };
enum { NN_ENCODING_ONNX = 1 };
enum { NN_TARGET_CPU = 0, NN_TARGET_GPU = 1 };
enum { NN_TYPE_F32 = 1 };

typedef struct { const uint8_t *buf; uint32_t len; } nn_graph_builder;
typedef struct {
    const uint32_t *dims; uint32_t rank;
    uint8_t type;
    const uint8_t *data; uint32_t data_len;
} nn_tensor;

#define NN_IMPORT(name) __attribute__((import_module("wasi_ephemeral_nn"), import_name(name)))
NN_IMPORT("load") int32_t nn_load(const nn_graph_builder *builders, uint32_t n, uint32_t encoding,
                                  uint32_t target, uint32_t *graph);
NN_IMPORT("load_by_name") int32_t nn_load_by_name(const char *name, uint32_t len, uint32_t *graph);
NN_IMPORT("init_execution_context") int32_t nn_init_execution_context(uint32_t graph, uint32_t *ctx);
NN_IMPORT("set_input") int32_t nn_set_input(uint32_t ctx, uint32_t index, const nn_tensor *tensor);
NN_IMPORT("compute") int32_t nn_compute(uint32_t ctx);
NN_IMPORT("get_output") int32_t nn_get_output(uint32_t ctx, uint32_t index, uint8_t *buf, uint32_t max,
                                              uint32_t *written);

static inline const char *nn_strerror(int32_t e) {
    static const char *names[] = {"success", "invalid argument", "invalid encoding", "missing memory", "busy",
                                  "runtime error", "unsupported operation", "too large", "not found"};
    return e >= 0 && e <= 8 ? names[e] : "unknown error";
}
#endif
