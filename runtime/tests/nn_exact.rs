//! Exact inference (docs/wasi-nn.md, "Determinism across devices"): the
//! exact CPU backend and the exact GPU kernels (lavapipe here, any
//! conformant Vulkan device elsewhere) give the same bytes, for every op of
//! the exact set on random shapes and values (zeros of both signs,
//! denormals, infinities, NaNs, huge magnitudes) and for whole models,
//! which stay within 1e-5 of onnxruntime.

use std::path::PathBuf;
use std::sync::OnceLock;

use proptest::prelude::*;
use prost::Message;
use shoal_runtime::nn::{Mode, Session, Target};
use tract_onnx::pb;

fn session() -> &'static Session {
    static S: OnceLock<Session> = OnceLock::new();
    S.get_or_init(|| {
        let s = Session::new(true);
        if let Err(e) = s.gpu() {
            panic!("no Vulkan device: {e} (scripts/setup.sh --vulkan installs lavapipe)");
        }
        s
    })
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Runs `model` in exact mode on the CPU and on the GPU; asserts equal
/// bytes and returns the outputs.
fn exact_both(model: &[u8], inputs: &[(Vec<usize>, Vec<f32>)]) -> Vec<(Vec<usize>, Vec<f32>)> {
    let args: Vec<(&[usize], &[f32])> = inputs.iter().map(|(s, v)| (s.as_slice(), v.as_slice())).collect();
    let cpu = session().load_mode(model, Target::Cpu, Mode::Exact).unwrap().run(&args).unwrap();
    let gpu = session().load_mode(model, Target::Gpu, Mode::Exact).unwrap().run(&args).unwrap();
    assert_eq!(cpu.len(), gpu.len());
    for (i, (c, g)) in cpu.iter().zip(&gpu).enumerate() {
        assert_eq!(c.0, g.0, "output {i}: shape");
        let (cb, gb) = (bits(&c.1), bits(&g.1));
        if let Some(at) = cb.iter().zip(&gb).position(|(a, b)| a != b) {
            panic!(
                "output {i} differs at element {at}: cpu {:#010x} ({:e}), gpu {:#010x} ({:e})",
                cb[at], c.1[at], gb[at], g.1[at]
            );
        }
    }
    cpu
}

// --- ONNX models built here ---

fn attr_i(name: &str, i: i64) -> pb::AttributeProto {
    pb::AttributeProto { name: name.into(), r#type: 2, i, ..Default::default() }
}
fn attr_f(name: &str, f: f32) -> pb::AttributeProto {
    pb::AttributeProto { name: name.into(), r#type: 1, f, ..Default::default() }
}
fn attr_ints(name: &str, ints: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto { name: name.into(), r#type: 7, ints: ints.to_vec(), ..Default::default() }
}

fn tensor(name: &str, dims: &[usize], data: &[f32]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: dims.iter().map(|d| *d as i64).collect(),
        data_type: 1,
        float_data: data.to_vec(),
        ..Default::default()
    }
}

fn ints_tensor(name: &str, data: &[i64]) -> pb::TensorProto {
    // (2 elements: the [-1, c] target shape of the Reshape test.)
    pb::TensorProto {
        name: name.into(),
        dims: vec![data.len() as i64],
        data_type: 7,
        int64_data: data.to_vec(),
        ..Default::default()
    }
}

fn value(name: &str) -> pb::ValueInfoProto {
    pb::ValueInfoProto { name: name.into(), ..Default::default() }
}

/// A model of one node computing `y` from graph `inputs` then `weights`
/// (initializers), in that order.
fn one_node(op: &str, inputs: &[&str], weights: Vec<pb::TensorProto>, attrs: Vec<pb::AttributeProto>) -> Vec<u8> {
    let mut node_inputs: Vec<String> = inputs.iter().map(|s| s.to_string()).collect();
    node_inputs.extend(weights.iter().map(|w| w.name.clone()));
    let node = pb::NodeProto {
        op_type: op.into(),
        name: "n".into(),
        input: node_inputs,
        output: vec!["y".into()],
        attribute: attrs,
        ..Default::default()
    };
    let graph = pb::GraphProto {
        node: vec![node],
        name: "g".into(),
        input: inputs.iter().map(|n| value(n)).collect(),
        output: vec![value("y")],
        initializer: weights,
        ..Default::default()
    };
    let model = pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 13 }],
        graph: Some(graph),
        ..Default::default()
    };
    model.encode_to_vec()
}

// --- values ---

/// Any f32 a model may meet: mostly ordinary values, with zeros of both
/// signs, denormals, tiny and huge normals, infinities and NaNs (with
/// payloads) mixed in.
fn any_value() -> impl Strategy<Value = f32> {
    prop_oneof![
        12 => -4.0f32..4.0,
        1 => Just(0.0f32),
        1 => Just(-0.0f32),
        1 => (1u32..0x0080_0000, any::<bool>()).prop_map(|(m, s)| f32::from_bits(m | ((s as u32) << 31))),
        1 => -1.0e-19f32..1.0e-19,
        1 => -3.0e38f32..3.0e38,
        1 => Just(f32::INFINITY),
        1 => Just(f32::NEG_INFINITY),
        1 => (1u32..0x0040_0000, any::<bool>()).prop_map(|(m, s)| f32::from_bits(0x7fc0_0000 | m | ((s as u32) << 31))),
    ]
}

/// Ordinary values only (the vectorised fast path of matrix products).
fn plain_value() -> impl Strategy<Value = f32> {
    -4.0f32..4.0
}

/// Products and sums near the smallest normal, where a device that
/// flushes denormals and one that keeps them part ways.
fn tiny_value() -> impl Strategy<Value = f32> {
    prop_oneof![-1.0e-18f32..-1.0e-21, 1.0e-21f32..1.0e-18, Just(0.0f32)]
}

/// `spice`: 0 ordinary values, 1 anything, 2 tiny values.
fn values(n: usize, spice: u8) -> BoxedStrategy<Vec<f32>> {
    match spice {
        0 => prop::collection::vec(plain_value(), n).boxed(),
        1 => prop::collection::vec(any_value(), n).boxed(),
        _ => prop::collection::vec(tiny_value(), n).boxed(),
    }
}

fn config() -> ProptestConfig {
    // PROPTEST_CASES raises it (scripts/gpu-check.sh runs 200 on a real GPU).
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(24);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn elementwise_binary_ops_are_byte_equal(
        op in prop::sample::select(vec!["Add", "Sub", "Mul", "Div"]),
        (shape, bshape) in (1usize..4, 1usize..5, 1usize..9).prop_flat_map(|(a, b, c)| {
            let full = vec![a, b, c];
            (Just(full.clone()), prop::sample::select(vec![full, vec![c], vec![b, 1], vec![1, 1, 1], vec![1]]))
        }),
        spicy in 0u8..3,
        seed in any::<u64>(),
    ) {
        let (na, nb) = (shape.iter().product::<usize>(), bshape.iter().product::<usize>());
        let mut runner = proptest::test_runner::TestRunner::new_with_rng(
            config(), proptest::test_runner::TestRng::from_seed(proptest::test_runner::RngAlgorithm::ChaCha, &seed_bytes(seed)));
        let a = values(na, spicy).new_tree(&mut runner).unwrap().current();
        let b = values(nb, spicy).new_tree(&mut runner).unwrap().current();
        // B as a weight: weights are made canonical at load, inputs on upload.
        let model = one_node(op, &["a"], vec![tensor("b", &bshape, &b)], vec![]);
        exact_both(&model, &[(shape, a)]);
    }

    #[test]
    fn unary_ops_are_byte_equal(
        op in prop::sample::select(vec!["Relu", "Sigmoid", "Tanh"]),
        x in prop::collection::vec(any_value(), 1..300),
        wide in prop::collection::vec(-100.0f32..100.0, 1..300),
    ) {
        let model = one_node(op, &["x"], vec![], vec![]);
        exact_both(&model, &[(vec![x.len()], x)]);
        exact_both(&model, &[(vec![wide.len()], wide)]);
    }

    #[test]
    fn gemm_and_matmul_are_byte_equal(
        (m, k, n) in (1usize..40, 1usize..70, 1usize..40),
        trans_a in any::<bool>(),
        trans_b in any::<bool>(),
        alpha in prop_oneof![Just(1.0f32), -2.0f32..2.0],
        beta in prop_oneof![Just(1.0f32), -2.0f32..2.0],
        spicy in 0u8..3,
        batch in 1usize..4,
        seed in any::<u64>(),
    ) {
        let mut runner = proptest::test_runner::TestRunner::new_with_rng(
            config(), proptest::test_runner::TestRng::from_seed(proptest::test_runner::RngAlgorithm::ChaCha, &seed_bytes(seed)));
        let a = values(m * k, spicy).new_tree(&mut runner).unwrap().current();
        let b = values(k * n, spicy).new_tree(&mut runner).unwrap().current();
        let c = values(n, spicy).new_tree(&mut runner).unwrap().current();
        let ashape = if trans_a { vec![k, m] } else { vec![m, k] };
        let bshape = if trans_b { vec![n, k] } else { vec![k, n] };
        let gemm = one_node(
            "Gemm",
            &["a"],
            vec![tensor("b", &bshape, &b), tensor("c", &[n], &c)],
            vec![attr_f("alpha", alpha), attr_f("beta", beta), attr_i("transA", trans_a as i64), attr_i("transB", trans_b as i64)],
        );
        exact_both(&gemm, &[(ashape, a.clone())]);
        // MatMul, batched: A [batch, m, k] x B [k, n].
        let ab: Vec<f32> = (0..batch).flat_map(|_| a.iter().copied()).collect();
        let matmul = one_node("MatMul", &["a"], vec![tensor("b", &[k, n], &b)], vec![]);
        exact_both(&matmul, &[(vec![batch, m, k], ab)]);
    }

    #[test]
    fn conv_is_byte_equal(
        (c_per_group, group, m_per_group) in (1usize..4, 1usize..3, 1usize..5),
        (h, w) in (3usize..10, 3usize..10),
        (kh, kw) in (1usize..4, 1usize..4),
        stride in 1usize..3,
        dilation in 1usize..3,
        pad in 0usize..2,
        bias in any::<bool>(),
        spicy in 0u8..3,
        seed in any::<u64>(),
    ) {
        prop_assume!(h + 2 * pad > (kh - 1) * dilation && w + 2 * pad > (kw - 1) * dilation);
        let (c, m) = (c_per_group * group, m_per_group * group);
        let mut runner = proptest::test_runner::TestRunner::new_with_rng(
            config(), proptest::test_runner::TestRng::from_seed(proptest::test_runner::RngAlgorithm::ChaCha, &seed_bytes(seed)));
        let x = values(2 * c * h * w, spicy).new_tree(&mut runner).unwrap().current();
        let wt = values(m * c_per_group * kh * kw, spicy).new_tree(&mut runner).unwrap().current();
        let bv = values(m, spicy).new_tree(&mut runner).unwrap().current();
        let mut weights = vec![tensor("w", &[m, c_per_group, kh, kw], &wt)];
        if bias {
            weights.push(tensor("bias", &[m], &bv));
        }
        let p = pad as i64;
        let model = one_node("Conv", &["x"], weights, vec![
            attr_ints("kernel_shape", &[kh as i64, kw as i64]),
            attr_ints("strides", &[stride as i64, stride as i64]),
            attr_ints("dilations", &[dilation as i64, dilation as i64]),
            attr_ints("pads", &[p, p, p, p]),
            attr_i("group", group as i64),
        ]);
        exact_both(&model, &[(vec![2, c, h, w], x)]);
    }

    #[test]
    fn pooling_softmax_and_batchnorm_are_byte_equal(
        (c, h, w) in (1usize..4, 2usize..9, 2usize..9),
        k in 1usize..3,
        include_pad in any::<bool>(),
        axis in 0i64..4,
        x in prop::collection::vec(any_value(), 2 * 3 * 8 * 8),
        stats in prop::collection::vec(any_value(), 12),
    ) {
        let x: Vec<f32> = x[..2 * c * h * w].to_vec();
        let input = [(vec![2, c, h, w], x)];
        let window = vec![attr_ints("kernel_shape", &[k as i64 + 1, k as i64]), attr_ints("pads", &[1, 0, 1, 0])];
        exact_both(&one_node("MaxPool", &["x"], vec![], window.clone()), &input);
        let mut avg = window;
        avg.push(attr_i("count_include_pad", include_pad as i64));
        exact_both(&one_node("AveragePool", &["x"], vec![], avg), &input);
        exact_both(&one_node("GlobalAveragePool", &["x"], vec![], vec![]), &input);
        exact_both(&one_node("Softmax", &["x"], vec![], vec![attr_i("axis", axis)]), &input);
        let var: Vec<f32> = stats[9..9 + c.min(3)].iter().map(|v| v.abs()).collect();
        let bn = one_node("BatchNormalization", &["x"], vec![
            tensor("scale", &[c], &stats[..c]),
            tensor("bias", &[c], &stats[3..3 + c]),
            tensor("mean", &[c], &stats[6..6 + c]),
            tensor("var", &[c], &var[..c]),
        ], vec![attr_f("epsilon", 1e-5)]);
        exact_both(&bn, &input);
    }

    #[test]
    fn data_movement_is_byte_equal(
        (a, b, c) in (1usize..4, 1usize..5, 1usize..6),
        perm in prop::sample::select(vec![vec![0i64, 1, 2], vec![2, 0, 1], vec![1, 2, 0], vec![2, 1, 0]]),
        x in prop::collection::vec(any_value(), 4 * 5 * 6),
    ) {
        let x: Vec<f32> = x[..a * b * c].to_vec();
        let input = [(vec![a, b, c], x.clone())];
        exact_both(&one_node("Transpose", &["x"], vec![], vec![attr_ints("perm", &perm)]), &input);
        exact_both(&one_node("Flatten", &["x"], vec![], vec![attr_i("axis", 1)]), &input);
        exact_both(&one_node("Identity", &["x"], vec![], vec![]), &input);
        // Reshape takes its shape as an int64 initializer.
        let reshape = one_node("Reshape", &["x"], vec![ints_tensor("s", &[-1, c as i64])], vec![]);
        exact_both(&reshape, &input);
        let concat = one_node("Concat", &["x", "x2"], vec![], vec![attr_i("axis", 1)]);
        exact_both(&concat, &[(vec![a, b, c], x.clone()), (vec![a, b, c], x)]);
    }
}

fn seed_bytes(seed: u64) -> [u8; 32] {
    let mut s = [0u8; 32];
    for (i, chunk) in s.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&(seed.wrapping_add((i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))).to_le_bytes());
    }
    s
}

// --- whole models, against onnxruntime's committed reference outputs ---

fn digits() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../samples/digits")
}

fn model(name: &str) -> Vec<u8> {
    std::fs::read(digits().join(name)).unwrap()
}

/// onnxruntime's outputs: the last columns of each line of a TSV.
fn reference(file: &str, skip: usize) -> Vec<f32> {
    let text = std::fs::read_to_string(digits().join(file)).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .flat_map(|l| l.split('\t').skip(1 + skip).map(|v| v.parse::<f32>().unwrap()).collect::<Vec<_>>())
        .collect()
}

/// The held-out digits as [N, 64] pixels scaled to 0..1.
fn images() -> Vec<f32> {
    let dir = digits().join("data");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".pgm"))
        .collect();
    names.sort();
    let mut out = Vec::new();
    for n in names {
        let bytes = std::fs::read(dir.join(n)).unwrap();
        // "P5\n8 8\n16\n" then 64 bytes.
        out.extend(bytes[bytes.len() - 64..].iter().map(|b| *b as f32 / 16.0));
    }
    out
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn the_digits_model_is_byte_equal_on_cpu_and_gpu_and_close_to_onnxruntime() {
    let imgs = images();
    let n = imgs.len() / 64;
    let out = exact_both(&model("digits_mlp.onnx"), &[(vec![n, 64], imgs)]);
    let d = max_diff(&out[0].1, &reference("reference.tsv", 1));
    eprintln!("digits_mlp: exact (CPU = GPU) vs onnxruntime {d:e}");
    assert!(d < 1e-5, "largest difference from onnxruntime: {d}");
}

#[test]
fn the_op_coverage_and_conv_variant_models_are_byte_equal_and_close_to_onnxruntime() {
    let imgs = images();
    let out = exact_both(&model("ops_cnn.onnx"), &[(vec![32, 1, 8, 8], imgs[..32 * 64].to_vec())]);
    let d = max_diff(&out[0].1, &reference("ops_reference.tsv", 0));
    eprintln!("ops_cnn: exact (CPU = GPU) vs onnxruntime {d:e}");
    assert!(d < 1e-5, "ops_cnn: largest difference from onnxruntime: {d}");
    let x: Vec<f32> = (0..128).map(|i| ((i * 7919) % 17) as f32 / 16.0 - 0.5).collect();
    let out = exact_both(&model("conv_variants.onnx"), &[(vec![2, 1, 8, 8], x)]);
    // conv_reference.tsv: a comment, the output's shape, its values.
    let text = std::fs::read_to_string(digits().join("conv_reference.tsv")).unwrap();
    let mut lines = text.lines().filter(|l| !l.starts_with('#'));
    let shape: Vec<usize> = lines.next().unwrap().split('\t').map(|v| v.parse().unwrap()).collect();
    let expected: Vec<f32> = lines.next().unwrap().split('\t').map(|v| v.parse().unwrap()).collect();
    assert_eq!(out[0].0, shape);
    let d = max_diff(&out[0].1, &expected);
    eprintln!("conv_variants: exact (CPU = GPU) vs onnxruntime {d:e}");
    assert!(d < 1e-5, "conv_variants: largest difference from onnxruntime: {d}");
}

#[test]
fn the_bench_models_are_byte_equal() {
    // Larger shapes: the vectorised, multi-threaded CPU paths.
    let x: Vec<f32> = (0..16 * 256).map(|i| ((i * 7919) % 101) as f32 / 50.0 - 1.0).collect();
    exact_both(&model("bench_matmul.onnx"), &[(vec![16, 256], x)]);
    let x: Vec<f32> = (0..2 * 16 * 32 * 32).map(|i| ((i * 7919) % 103) as f32 / 51.0 - 1.0).collect();
    exact_both(&model("bench_conv.onnx"), &[(vec![2, 16, 32, 32], x)]);
}

#[test]
fn a_context_reused_across_batches_gives_the_bits_of_a_fresh_one() {
    // The CPU backend keeps a MatMul's constant weights packed, and the
    // masks of small weights for the last threshold, across computes: a
    // batch with tiny activations (a new threshold) after an ordinary one
    // must give what it gives on a fresh context, and on the GPU.
    let bytes = model("digits_mlp.onnx");
    let imgs = images();
    let first = imgs[..32 * 64].to_vec();
    let tiny: Vec<f32> =
        imgs[32 * 64..64 * 64].iter().enumerate().map(|(i, v)| if i % 7 == 0 { v * 1e-36 } else { *v }).collect();
    let mut reused = session().load_mode(&bytes, Target::Cpu, Mode::Exact).unwrap();
    reused.run(&[(&[32, 64], &first)]).unwrap();
    let again = reused.run(&[(&[32, 64], &tiny)]).unwrap();
    let fresh = exact_both(&bytes, &[(vec![32, 64], tiny)]);
    assert_eq!(bits(&again[0].1), bits(&fresh[0].1));
}
