#!/usr/bin/env python3
"""Trains the digits classifier and writes everything the wasi-nn tests use.

    python3 -m pip install scikit-learn==1.9.1 onnx==1.23.2 onnxruntime==1.32.0
    python3 samples/digits/make_model.py

Only needed to *regenerate* the committed files (tests need no Python):

  digits_mlp.onnx   a trained MLP (64 -> 64 ReLU -> 10 softmax) on
                    scikit-learn's 8x8 digits, input "input" [N,64] with
                    pixels scaled to 0..1 (value/16), output "probabilities".
  ops_cnn.onnx      a small CNN with fixed random weights that uses every op
                    of the GPU backend's op set (docs/wasi-nn.md), input
                    [N,1,8,8]: the op-coverage model of the tests.
  data/NNNN.pgm     the held-out digits (20%, split with a fixed seed) as
                    8x8 binary PGM images with maxval 16 (the raw values).
  data/labels.tsv   file, true label: lets the sample print its accuracy.
  reference.tsv     onnxruntime's probabilities for every held-out image
                    (digits_mlp.onnx), "%.9g": the tests' reference.
  ops_reference.tsv onnxruntime's outputs of ops_cnn.onnx for the first 32
                    held-out images.
  conv_variants.onnx  Conv with auto_pad SAME_UPPER and stride 2, grouped
                    dilated Conv (channels per group not a multiple of 4),
                    padded MaxPool and AveragePool counting pads, on a
                    [2,1,8,8] input x[i] = ((i * 7919) % 17) / 16 - 0.5;
                    conv_reference.tsv holds onnxruntime's outputs.
  unsupported.onnx  a graph with ops outside the GPU op set (LeakyRelu,
                    Erf): the GPU backend must refuse it at load.
  bench_matmul.onnx one MatMul, [N,256] x [256,256], and
  bench_conv.onnx   one Conv, 16 -> 32 channels, 3x3, on [N,16,32,32]:
                    what `make bench` times for GFLOP/s.

The ONNX graphs are written with onnx.helper from the trained weights
rather than skl2onnx: skl2onnx's classifier graph ends in ZipMap, ArgMax and
int64 label outputs, which neither the guest nor the GPU op set needs.
Everything is seeded: reruns give the same files.
"""
import os

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

HERE = os.path.dirname(os.path.abspath(__file__))
SEED = 5


def mlp_model(clf):
    w1, w2 = clf.coefs_
    b1, b2 = clf.intercepts_
    inits = [
        numpy_helper.from_array(w1.astype(np.float32), "w1"),
        numpy_helper.from_array(b1.astype(np.float32), "b1"),
        numpy_helper.from_array(w2.astype(np.float32), "w2"),
        numpy_helper.from_array(b2.astype(np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("Gemm", ["input", "w1", "b1"], ["h"], name="dense1"),
        helper.make_node("Relu", ["h"], ["hr"], name="relu1"),
        helper.make_node("Gemm", ["hr", "w2", "b2"], ["logits"], name="dense2"),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1, name="softmax"),
    ]
    graph = helper.make_graph(
        nodes,
        "digits_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    return finish(graph)


def ops_model():
    rng = np.random.default_rng(SEED)

    def w(name, *shape, scale=0.5):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    inits = [
        w("conv1_w", 4, 1, 3, 3),
        w("conv1_b", 4),
        numpy_helper.from_array((1 + 0.1 * rng.standard_normal(4)).astype(np.float32), "bn_scale"),
        w("bn_bias", 4, scale=0.1),
        w("bn_mean", 4, scale=0.1),
        numpy_helper.from_array((0.5 + rng.random(4)).astype(np.float32), "bn_var"),
        w("conv2_w", 4, 4, 1, 1),
        w("conv2_b", 4),
        w("fc_w", 64, 10, scale=0.2),
        w("fc_b", 10),
        w("gemm_w", 10, 20, scale=0.2),
        w("gemm_b", 10),
        w("scale", 1, 4, 1, 1),
        numpy_helper.from_array(np.array([0, 4], dtype=np.int64), "shape_n4"),
    ]
    n = helper.make_node
    nodes = [
        n("Conv", ["input", "conv1_w", "conv1_b"], ["c1"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        n("BatchNormalization", ["c1", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["bn"], epsilon=1e-5),
        n("Relu", ["bn"], ["r1"]),
        n("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        n("Conv", ["p1", "conv2_w", "conv2_b"], ["c2"], kernel_shape=[1, 1]),
        n("Sigmoid", ["c2"], ["s2"]),
        n("Tanh", ["p1"], ["t1"]),
        n("Mul", ["s2", "t1"], ["m1"]),
        n("Mul", ["m1", "scale"], ["m2"]),
        n("Add", ["m2", "p1"], ["d"]),
        n("AveragePool", ["d"], ["ap"], kernel_shape=[2, 2], strides=[2, 2]),
        n("GlobalAveragePool", ["d"], ["gap"]),
        n("Flatten", ["ap"], ["apf"], axis=1),
        n("Reshape", ["gap", "shape_n4"], ["gapf"]),
        n("Concat", ["apf", "gapf"], ["cat"], axis=1),
        n("Gemm", ["cat", "gemm_w", "gemm_b"], ["g"], transB=1),
        n("Transpose", ["d"], ["dt"], perm=[0, 2, 3, 1]),
        n("Flatten", ["dt"], ["dtf"], axis=1),
        n("MatMul", ["dtf", "fc_w"], ["mm"]),
        n("Add", ["mm", "fc_b"], ["mmb"]),
        n("Add", ["mmb", "g"], ["logits"]),
        n("Softmax", ["logits"], ["output"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "ops_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    return finish(graph)


def small_models():
    rng = np.random.default_rng(SEED + 1)
    n = helper.make_node
    unsupported = helper.make_graph(
        [n("LeakyRelu", ["input"], ["l"]), n("Erf", ["l"], ["e"]), n("Relu", ["e"], ["output"])],
        "unsupported",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 4])],
    )
    w = numpy_helper.from_array((rng.standard_normal((256, 256)) / 16).astype(np.float32), "w")
    matmul = helper.make_graph(
        [n("MatMul", ["input", "w"], ["output"])],
        "bench_matmul",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 256])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 256])],
        [w],
    )
    cw = numpy_helper.from_array((rng.standard_normal((32, 16, 3, 3)) / 12).astype(np.float32), "w")
    cb = numpy_helper.from_array(rng.standard_normal(32).astype(np.float32), "b")
    conv = helper.make_graph(
        [n("Conv", ["input", "w", "b"], ["output"], pads=[1, 1, 1, 1], kernel_shape=[3, 3])],
        "bench_conv",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 16, 32, 32])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 32, 32, 32])],
        [cw, cb],
    )
    cw1 = numpy_helper.from_array((rng.standard_normal((6, 1, 3, 3)) / 3).astype(np.float32), "w1")
    cw2 = numpy_helper.from_array((rng.standard_normal((6, 2, 3, 3)) / 3).astype(np.float32), "w2")
    cb2 = numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "b2")
    variants = helper.make_graph(
        [
            n("Conv", ["input", "w1"], ["c1"], auto_pad="SAME_UPPER", strides=[2, 2], kernel_shape=[3, 3]),
            n("Conv", ["c1", "w2", "b2"], ["c2"], group=3, dilations=[2, 2], pads=[2, 2, 2, 2]),
            n("MaxPool", ["c2"], ["p1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1]),
            n("AveragePool", ["p1"], ["p2"], kernel_shape=[2, 2], pads=[1, 1, 0, 0], count_include_pad=1),
            n("Flatten", ["p2"], ["output"]),
        ],
        "conv_variants",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 96])],
        [cw1, cw2, cb2],
    )
    return {"conv_variants": variants, "unsupported": unsupported, "bench_matmul": matmul, "bench_conv": conv}


def finish(graph):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="shoal-samples")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def main():
    digits = load_digits()
    x = digits.data.astype(np.float32)
    y = digits.target
    idx = np.arange(len(x))
    x_tr, x_te, y_tr, y_te, _, i_te = train_test_split(x, y, idx, test_size=0.2, random_state=SEED, stratify=y)
    clf = MLPClassifier(hidden_layer_sizes=(64,), activation="relu", max_iter=500, random_state=SEED)
    clf.fit(x_tr / 16.0, y_tr)
    print(f"scikit-learn accuracy on the held-out digits: {clf.score(x_te / 16.0, y_te):.4f}")

    mlp = mlp_model(clf)
    onnx.save(mlp, os.path.join(HERE, "digits_mlp.onnx"))
    ops = ops_model()
    onnx.save(ops, os.path.join(HERE, "ops_cnn.onnx"))
    for name, graph in small_models().items():
        onnx.save(finish(graph), os.path.join(HERE, f"{name}.onnx"))

    data = os.path.join(HERE, "data")
    os.makedirs(data, exist_ok=True)
    for f in os.listdir(data):
        os.remove(os.path.join(data, f))
    names = []
    for k, (img, label) in enumerate(zip(x_te, y_te)):
        name = f"{k:04d}.pgm"
        names.append(name)
        with open(os.path.join(data, name), "wb") as f:
            f.write(b"P5\n8 8\n16\n" + bytes(int(v) for v in img))
    with open(os.path.join(data, "labels.tsv"), "w") as f:
        for name, label in zip(names, y_te):
            f.write(f"{name}\t{label}\n")

    # What the guest feeds the model: the PGM's values / 16, as float32.
    inputs = (x_te / 16.0).astype(np.float32)
    sess = ort.InferenceSession(os.path.join(HERE, "digits_mlp.onnx"), providers=["CPUExecutionProvider"])
    probs = sess.run(None, {"input": inputs})[0]
    agree = np.mean(np.argmax(probs, 1) == clf.predict(x_te / 16.0))
    acc = np.mean(np.argmax(probs, 1) == y_te)
    print(f"onnxruntime {ort.__version__}: accuracy {acc:.4f}, agrees with scikit-learn on {agree:.4f}")
    with open(os.path.join(HERE, "reference.tsv"), "w") as f:
        f.write(f"# onnxruntime {ort.__version__} on digits_mlp.onnx: file, label, probabilities 0..9\n")
        for name, label, p in zip(names, y_te, probs):
            f.write("\t".join([name, str(label)] + [f"{v:.9g}" for v in p]) + "\n")

    sess = ort.InferenceSession(os.path.join(HERE, "ops_cnn.onnx"), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"input": inputs[:32].reshape(32, 1, 8, 8)})[0]
    with open(os.path.join(HERE, "ops_reference.tsv"), "w") as f:
        f.write(f"# onnxruntime {ort.__version__} on ops_cnn.onnx: file, outputs 0..9\n")
        for name, o in zip(names, out):
            f.write("\t".join([name] + [f"{v:.9g}" for v in o]) + "\n")


def conv_reference():
    x = ((np.arange(2 * 64) * 7919) % 17 / 16.0 - 0.5).astype(np.float32).reshape(2, 1, 8, 8)
    sess = ort.InferenceSession(os.path.join(HERE, "conv_variants.onnx"), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"input": x})[0]
    with open(os.path.join(HERE, "conv_reference.tsv"), "w") as f:
        f.write(f"# onnxruntime {ort.__version__} on conv_variants.onnx: shape, then outputs\n")
        f.write("\t".join(str(d) for d in out.shape) + "\n")
        f.write("\t".join(f"{v:.9g}" for v in out.reshape(-1)) + "\n")


if __name__ == "__main__":
    main()
    conv_reference()
