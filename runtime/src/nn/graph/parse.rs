//! ONNX bytes to an [`OnnxGraph`]: the nodes (each op with its attributes
//! read and checked), the constants, and the graph's inputs and outputs.

use tract_onnx::pb;
use tract_onnx::prelude::Framework;

use super::OP_SET;
use crate::nn::NnError;

#[derive(Debug, Clone)]
pub(super) enum Op {
    Gemm { alpha: f32, beta: f32, trans_a: bool, trans_b: bool },
    MatMul,
    Binary(u32),
    Unary(u32),
    Conv { strides: [usize; 2], pads: Option<[usize; 4]>, auto_pad: String, dilations: [usize; 2], group: usize },
    Pool { max: bool, kernel: [usize; 2], strides: [usize; 2], pads: [usize; 4], count_include_pad: bool },
    GlobalAveragePool,
    Softmax { axis: i64 },
    Reshape { allowzero: bool },
    Flatten { axis: i64 },
    Transpose { perm: Option<Vec<usize>> },
    Concat { axis: i64 },
    BatchNorm { eps: f32 },
    Identity,
}

#[derive(Debug, Clone)]
pub(super) struct Node {
    pub(super) name: String,
    pub(super) op: Op,
    pub(super) inputs: Vec<String>,
    pub(super) outputs: Vec<String>,
}

/// A constant: float weights (in the arena) or int64 shape data (host only).
#[derive(Debug, Clone)]
pub(super) enum Const {
    F32(Vec<usize>, Vec<f32>),
    I64(Vec<i64>),
}

/// A parsed, checked graph.
#[derive(Debug)]
pub(crate) struct OnnxGraph {
    pub(super) nodes: Vec<Node>,
    /// Graph inputs that are not initializers, in order.
    pub(crate) inputs: Vec<String>,
    pub(crate) outputs: Vec<String>,
    pub(super) consts: Vec<(String, Const)>,
    /// Softmax before opset 13 flattens from `axis` on.
    pub(super) legacy_softmax: bool,
}

pub(super) fn unsupported(msg: String) -> NnError {
    NnError::Unsupported(msg)
}

fn attr<'a>(n: &'a pb::NodeProto, name: &str) -> Option<&'a pb::AttributeProto> {
    n.attribute.iter().find(|a| a.name == name)
}
fn attr_i(n: &pb::NodeProto, name: &str, default: i64) -> i64 {
    attr(n, name).map_or(default, |a| a.i)
}
fn attr_f(n: &pb::NodeProto, name: &str, default: f32) -> f32 {
    attr(n, name).map_or(default, |a| a.f)
}
fn attr_ints(n: &pb::NodeProto, name: &str) -> Option<Vec<i64>> {
    attr(n, name).map(|a| a.ints.clone())
}
fn attr_s(n: &pb::NodeProto, name: &str) -> String {
    attr(n, name).map(|a| String::from_utf8_lossy(&a.s).into_owned()).unwrap_or_default()
}

fn pair(v: Option<Vec<i64>>, default: usize, what: &str, node: &str) -> Result<[usize; 2], NnError> {
    match v {
        None => Ok([default; 2]),
        Some(v) if v.len() == 2 && v.iter().all(|x| *x >= 1 && *x <= 1 << 16) => Ok([v[0] as usize, v[1] as usize]),
        Some(v) => Err(unsupported(format!("node {node}: {what} {v:?}: only 2-D values from 1 to 65536"))),
    }
}

fn pads4(v: Option<Vec<i64>>, node: &str) -> Result<Option<[usize; 4]>, NnError> {
    match v {
        None => Ok(None),
        Some(v) if v.len() == 4 && v.iter().all(|x| *x >= 0 && *x <= 1 << 16) => {
            Ok(Some([v[0] as usize, v[1] as usize, v[2] as usize, v[3] as usize]))
        }
        Some(v) => Err(unsupported(format!("node {node}: pads {v:?}: only 2-D pads from 0 to 65536"))),
    }
}

fn tensor_const(t: &pb::TensorProto) -> Result<Const, NnError> {
    if !t.external_data.is_empty() || t.data_location == Some(1) {
        return Err(unsupported(format!("tensor {}: external data is not supported", t.name)));
    }
    let mut dims = Vec::with_capacity(t.dims.len());
    for d in &t.dims {
        dims.push(
            usize::try_from(*d)
                .map_err(|_| NnError::InvalidArgument(format!("tensor {}: negative dimension", t.name)))?,
        );
    }
    let count = dims
        .iter()
        .try_fold(1usize, |a, d| a.checked_mul(*d))
        .ok_or_else(|| NnError::InvalidArgument(format!("tensor {}: its size overflows", t.name)))?;
    let mismatch = || NnError::InvalidArgument(format!("tensor {}: data does not match its shape", t.name));
    match t.data_type {
        1 => {
            let v: Vec<f32> = if !t.raw_data.is_empty() {
                t.raw_data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
            } else {
                t.float_data.clone()
            };
            if v.len() != count {
                return Err(mismatch());
            }
            Ok(Const::F32(dims, v))
        }
        7 => {
            let v: Vec<i64> = if !t.raw_data.is_empty() {
                t.raw_data
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                    .collect()
            } else {
                t.int64_data.clone()
            };
            if v.len() != count {
                return Err(mismatch());
            }
            Ok(Const::I64(v))
        }
        other => Err(unsupported(format!(
            "tensor {}: data type {other}: exact inference and the gpu target take float32 weights and int64 \
             shapes; run this model with nn mode fast on the cpu target",
            t.name
        ))),
    }
}

/// Parses and checks a model; refuses it, naming every unsupported op,
/// if it uses anything outside [`OP_SET`].
pub(crate) fn parse(bytes: &[u8]) -> Result<OnnxGraph, NnError> {
    let model = tract_onnx::onnx()
        .proto_model_for_read(&mut &bytes[..])
        .map_err(|e| NnError::InvalidArgument(format!("cannot read the ONNX model: {e:#}")))?;
    let graph = model.graph.as_ref().ok_or_else(|| NnError::InvalidArgument("the ONNX model has no graph".into()))?;
    let opset =
        model.opset_import.iter().find(|o| o.domain.is_empty() || o.domain == "ai.onnx").map_or(13, |o| o.version);

    let mut missing: Vec<String> = graph
        .node
        .iter()
        .filter(|n| !(n.domain.is_empty() || n.domain == "ai.onnx") || !OP_SET.contains(&n.op_type.as_str()))
        .map(|n| if n.domain.is_empty() { n.op_type.clone() } else { format!("{}:{}", n.domain, n.op_type) })
        .collect();
    missing.sort();
    missing.dedup();
    if !missing.is_empty() {
        return Err(unsupported(format!(
            "exact inference and the gpu target do not support the op(s) {} (they run {}); run this model \
             with nn mode fast on the cpu target",
            missing.join(", "),
            OP_SET.join(", ")
        )));
    }

    let mut consts = Vec::new();
    for t in &graph.initializer {
        consts.push((t.name.clone(), tensor_const(t)?));
    }
    let mut nodes = Vec::new();
    for (i, n) in graph.node.iter().enumerate() {
        let name = if n.name.is_empty() { format!("#{i} ({})", n.op_type) } else { n.name.clone() };
        let op = match n.op_type.as_str() {
            "Constant" => {
                let t = attr(n, "value").and_then(|a| a.t.as_ref()).ok_or_else(|| {
                    unsupported(format!("node {name}: only Constant with a tensor `value` is supported"))
                })?;
                let out = n.output.first().cloned().unwrap_or_default();
                consts.push((out, tensor_const(t)?));
                continue;
            }
            "Gemm" => Op::Gemm {
                alpha: attr_f(n, "alpha", 1.0),
                beta: attr_f(n, "beta", 1.0),
                trans_a: attr_i(n, "transA", 0) != 0,
                trans_b: attr_i(n, "transB", 0) != 0,
            },
            "MatMul" => Op::MatMul,
            "Add" => Op::Binary(0),
            "Mul" => Op::Binary(1),
            "Sub" => Op::Binary(2),
            "Div" => Op::Binary(3),
            "Relu" => Op::Unary(0),
            "Sigmoid" => Op::Unary(1),
            "Tanh" => Op::Unary(2),
            "Conv" => {
                let auto_pad = attr_s(n, "auto_pad");
                if !["", "NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"].contains(&auto_pad.as_str()) {
                    return Err(unsupported(format!("node {name}: auto_pad {auto_pad}")));
                }
                Op::Conv {
                    strides: pair(attr_ints(n, "strides"), 1, "strides", &name)?,
                    pads: pads4(attr_ints(n, "pads"), &name)?,
                    auto_pad,
                    dilations: pair(attr_ints(n, "dilations"), 1, "dilations", &name)?,
                    group: usize::try_from(attr_i(n, "group", 1))
                        .ok()
                        .filter(|g| *g >= 1)
                        .ok_or_else(|| NnError::InvalidArgument(format!("node {name}: bad group")))?,
                }
            }
            "MaxPool" | "AveragePool" => {
                let max = n.op_type == "MaxPool";
                let auto_pad = attr_s(n, "auto_pad");
                if !["", "NOTSET", "VALID"].contains(&auto_pad.as_str()) {
                    return Err(unsupported(format!("node {name}: {} with auto_pad {auto_pad}", n.op_type)));
                }
                if attr_i(n, "ceil_mode", 0) != 0 || attr_i(n, "storage_order", 0) != 0 {
                    return Err(unsupported(format!("node {name}: ceil_mode and storage_order must be 0")));
                }
                if attr_ints(n, "dilations").is_some_and(|d| d.iter().any(|x| *x != 1)) {
                    return Err(unsupported(format!("node {name}: pooling with dilations")));
                }
                if n.output.len() > 1 && n.output.iter().skip(1).any(|o| !o.is_empty()) {
                    return Err(unsupported(format!("node {name}: MaxPool's indices output")));
                }
                let kernel = attr_ints(n, "kernel_shape")
                    .ok_or_else(|| NnError::InvalidArgument(format!("node {name}: kernel_shape is required")))?;
                Op::Pool {
                    max,
                    kernel: pair(Some(kernel), 1, "kernel_shape", &name)?,
                    strides: pair(attr_ints(n, "strides"), 1, "strides", &name)?,
                    pads: pads4(attr_ints(n, "pads"), &name)?.unwrap_or([0; 4]),
                    count_include_pad: attr_i(n, "count_include_pad", 0) != 0,
                }
            }
            "GlobalAveragePool" => Op::GlobalAveragePool,
            "Softmax" => Op::Softmax { axis: attr_i(n, "axis", if opset < 13 { 1 } else { -1 }) },
            "Reshape" => Op::Reshape { allowzero: attr_i(n, "allowzero", 0) != 0 },
            "Flatten" => Op::Flatten { axis: attr_i(n, "axis", 1) },
            "Transpose" => Op::Transpose {
                perm: match attr_ints(n, "perm") {
                    None => None,
                    Some(p) => Some(
                        p.iter()
                            .map(|x| usize::try_from(*x))
                            .collect::<Result<Vec<_>, _>>()
                            .map_err(|_| NnError::InvalidArgument(format!("node {name}: bad perm")))?,
                    ),
                },
            },
            "Concat" => Op::Concat { axis: attr_i(n, "axis", 0) },
            "BatchNormalization" => {
                if attr_i(n, "training_mode", 0) != 0 || n.output.iter().skip(1).any(|o| !o.is_empty()) {
                    return Err(unsupported(format!("node {name}: BatchNormalization in training mode")));
                }
                Op::BatchNorm { eps: attr_f(n, "epsilon", 1e-5) }
            }
            "Identity" => Op::Identity,
            other => return Err(unsupported(format!("node {name}: op {other}"))),
        };
        nodes.push(Node { name, op, inputs: n.input.clone(), outputs: n.output.clone() });
    }
    let is_const = |name: &str| consts.iter().any(|(n, _)| n == name);
    let inputs: Vec<String> = graph.input.iter().map(|v| v.name.clone()).filter(|n| !is_const(n)).collect();
    let outputs: Vec<String> = graph.output.iter().map(|v| v.name.clone()).collect();
    if inputs.is_empty() || outputs.is_empty() {
        return Err(NnError::InvalidArgument("the graph has no inputs or no outputs".into()));
    }
    Ok(OnnxGraph { nodes, inputs, outputs, consts, legacy_softmax: opset < 13 })
}

#[cfg(test)]
mod tests {
    use super::super::testing::{attr_f, attr_i, floats, model, node};
    use super::*;

    #[test]
    fn ops_outside_the_set_are_refused_each_named_once() {
        let m = model(
            vec![
                node("LeakyRelu", &["x"], "a", vec![]),
                node("Erf", &["a"], "b", vec![]),
                node("Erf", &["b"], "y", vec![]),
            ],
            &["x"],
            vec![],
        );
        let e = parse(&m).unwrap_err();
        assert!(matches!(e, NnError::Unsupported(_)), "{e:?}");
        assert!(e.to_string().contains("do not support the op(s) Erf, LeakyRelu ("), "{e}");
    }

    #[test]
    fn attributes_and_constants_are_read() {
        let m = model(
            vec![node("Gemm", &["x", "w"], "y", vec![attr_i("transB", 1), attr_f("alpha", 2.0)])],
            &["x", "w"],
            vec![floats("w", &[4, 3], &[0.5; 12])],
        );
        let g = parse(&m).unwrap();
        // An initializer listed among the graph's inputs is a constant.
        assert_eq!(g.inputs, vec!["x".to_string()]);
        assert_eq!(g.outputs, vec!["y".to_string()]);
        assert!(
            matches!(g.nodes[0].op, Op::Gemm { alpha, beta, trans_a: false, trans_b: true } if alpha == 2.0 && beta == 1.0)
        );
        assert!(matches!(&g.consts[0].1, Const::F32(dims, v) if dims == &[4, 3] && v.len() == 12));
    }

    #[test]
    fn bad_models_get_clear_errors() {
        let e = parse(b"not an onnx model").unwrap_err();
        assert!(e.to_string().starts_with("cannot read the ONNX model"), "{e}");
        let mut t = floats("w", &[2], &[1.0, 2.0]);
        t.data_type = 6; // int32
        let e = parse(&model(vec![node("Add", &["x", "w"], "y", vec![])], &["x"], vec![t])).unwrap_err();
        assert!(e.to_string().contains("tensor w: data type"), "{e}");
        let wrong_len = floats("w", &[3], &[1.0, 2.0]);
        assert!(parse(&model(vec![node("Add", &["x", "w"], "y", vec![])], &["x"], vec![wrong_len])).is_err());
    }
}
