//! The ONNX graph as Shoal's own kernels see it (the GPU backend in both
//! modes, the exact CPU backend): parsing, the op set (checked at load: a
//! graph with any other op is refused, listing them), and the plan for
//! concrete input shapes: where every tensor lives in the arena and which
//! kernel steps compute it. A plan is device-independent: `vulkan/exec.rs`
//! dispatches it, `exact/cpu.rs` runs the same steps on the CPU.

use std::collections::HashMap;

use tract_onnx::pb;
use tract_onnx::prelude::Framework;
use wasmtime_wasi_nn::backend::Id;
use wasmtime_wasi_nn::wit::TensorType;

use crate::nn::{NnError, NnLimits};

/// The ops Shoal's kernels run (docs/wasi-nn.md keeps the same list).
pub(crate) const OP_SET: &[&str] = &[
    "Add",
    "AveragePool",
    "BatchNormalization",
    "Concat",
    "Constant",
    "Conv",
    "Div",
    "Flatten",
    "Gemm",
    "GlobalAveragePool",
    "Identity",
    "MatMul",
    "MaxPool",
    "Mul",
    "Relu",
    "Reshape",
    "Sigmoid",
    "Softmax",
    "Sub",
    "Tanh",
    "Transpose",
];

/// Most dimensions the strided kernels (broadcasting, copies) handle.
pub(crate) const MAX_RANK: usize = 6;

/// The kernels of `kernels.wgsl` (entry point names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kernel {
    MatMul,
    Binary,
    Unary,
    Copy,
    Conv,
    Pool,
    Softmax,
    BatchNorm,
}

impl Kernel {
    pub(crate) const ALL: [Kernel; 8] = [
        Kernel::MatMul,
        Kernel::Binary,
        Kernel::Unary,
        Kernel::Copy,
        Kernel::Conv,
        Kernel::Pool,
        Kernel::Softmax,
        Kernel::BatchNorm,
    ];

    pub(crate) fn entry(self) -> &'static str {
        match self {
            Kernel::MatMul => "matmul",
            Kernel::Binary => "binary",
            Kernel::Unary => "unary",
            Kernel::Copy => "copy",
            Kernel::Conv => "conv",
            Kernel::Pool => "pool",
            Kernel::Softmax => "softmax",
            Kernel::BatchNorm => "batchnorm",
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
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
struct Node {
    name: String,
    op: Op,
    inputs: Vec<String>,
    outputs: Vec<String>,
}

/// A constant: float weights (in the arena) or int64 shape data (host only).
#[derive(Debug, Clone)]
enum Const {
    F32(Vec<usize>, Vec<f32>),
    I64(Vec<i64>),
}

/// A parsed, checked graph.
#[derive(Debug)]
pub(crate) struct OnnxGraph {
    nodes: Vec<Node>,
    /// Graph inputs that are not initializers, in order.
    pub(crate) inputs: Vec<String>,
    pub(crate) outputs: Vec<String>,
    consts: Vec<(String, Const)>,
    /// Softmax before opset 13 flattens from `axis` on.
    legacy_softmax: bool,
}

fn unsupported(msg: String) -> NnError {
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

/// One kernel dispatch: `n` invocations with these push constants.
#[derive(Debug, Clone)]
pub(crate) struct Step {
    pub(crate) kernel: Kernel,
    pub(crate) params: [u32; 32],
    pub(crate) n: u32,
    /// Workgroups to dispatch, for kernels with their own grid (MatMul's
    /// tiles); others get `n` invocations in 64-wide groups.
    pub(crate) grid: Option<[u32; 3]>,
}

/// Everything needed to run the graph on inputs of given shapes.
#[derive(Debug)]
pub(crate) struct Plan {
    /// Arena size, in f32 elements.
    pub(crate) arena: usize,
    /// Constant data and where it goes.
    pub(crate) weights: Vec<(usize, Vec<f32>)>,
    /// Offset and element count of each graph input.
    pub(crate) inputs: Vec<(usize, usize)>,
    /// Offset and shape of each graph output.
    pub(crate) outputs: Vec<(usize, Vec<usize>)>,
    pub(crate) steps: Vec<Step>,
    /// Exact mode: the exact kernels, and every weight canonical
    /// (`exact::math::canonical`); inputs are made canonical on upload.
    pub(crate) exact: bool,
}

#[derive(Debug, Clone)]
enum Val {
    Arena(usize, Vec<usize>),
    Ints(Vec<i64>),
}

struct Planner<'a> {
    limits: &'a NnLimits,
    exact: bool,
    /// The plan is for the exact CPU backend (for error messages).
    on_cpu: bool,
    /// Constant data and where it goes in the arena.
    weights: Vec<(usize, Vec<f32>)>,
    max_elements: usize,
    next: usize,
    vals: HashMap<String, Val>,
    steps: Vec<Step>,
    /// Multiply-adds (or element operations) planned so far.
    work: u128,
}

fn elems(shape: &[usize]) -> usize {
    shape.iter().product()
}

fn contiguous(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

fn axis_of(axis: i64, rank: usize, node: &str) -> Result<usize, NnError> {
    let a = if axis < 0 { axis + rank as i64 } else { axis };
    if a < 0 || a as usize >= rank {
        return Err(NnError::InvalidArgument(format!("node {node}: axis {axis} out of range for rank {rank}")));
    }
    Ok(a as usize)
}

impl Planner<'_> {
    fn alloc(&mut self, shape: &[usize], node: &str) -> Result<usize, NnError> {
        let n = shape.iter().try_fold(1usize, |a, d| a.checked_mul(*d));
        let n = n.filter(|n| (*n as u64).saturating_mul(4) <= self.limits.tensor_bytes).ok_or_else(|| {
            NnError::TooLarge(format!(
                "node {node}: a tensor of shape {shape:?} is larger than the job's tensor limit of {} bytes",
                self.limits.tensor_bytes
            ))
        })?;
        let off = self.next;
        let end = off.checked_add(n).filter(|e| *e <= self.max_elements).ok_or_else(|| {
            NnError::TooLarge(if self.on_cpu {
                format!(
                    "node {node}: the graph needs more than {} bytes, more than the job's CPU inference memory \
                     limit of {}",
                    self.max_elements * 4,
                    self.limits.cpu_memory
                )
            } else {
                format!(
                    "node {node}: the graph needs more than {} bytes of GPU memory (the job's GPU memory limit, \
                     or the device's largest storage buffer)",
                    self.max_elements * 4
                )
            })
        })?;
        // Keep every tensor 16-byte aligned.
        self.next = end.div_ceil(4) * 4;
        Ok(off)
    }

    /// Places constant data at `off`, canonical in exact mode.
    fn weight(&mut self, off: usize, mut data: Vec<f32>) {
        if self.exact {
            for v in &mut data {
                *v = crate::nn::exact::math::canonical(*v);
            }
        }
        self.weights.push((off, data));
    }

    fn arena(&self, name: &str, node: &str) -> Result<(usize, Vec<usize>), NnError> {
        match self.vals.get(name) {
            Some(Val::Arena(o, s)) => Ok((*o, s.clone())),
            Some(Val::Ints(_)) => Err(unsupported(format!("node {node}: {name} is an int64 tensor used as data"))),
            None => Err(NnError::InvalidArgument(format!("node {node}: input {name} is not computed before use"))),
        }
    }

    /// Counts `ops` against the job's GPU work limit. A dispatch cannot be
    /// stopped once submitted (and waiting for the device outlives the job's
    /// deadline), so the work a guest can ask for is bounded up front.
    fn charge(&mut self, ops: u128, node: &str) -> Result<(), NnError> {
        self.work = self.work.saturating_add(ops);
        if self.work > self.limits.gpu_work as u128 {
            let at = if node.is_empty() { String::new() } else { format!("node {node}: ") };
            return Err(NnError::TooLarge(format!(
                "{at}one inference would take more than {} operations (the job's work limit for Shoal's kernels, \
                 nn gpu_work)",
                self.limits.gpu_work
            )));
        }
        Ok(())
    }

    fn step(&mut self, kernel: Kernel, params: &[u32], n: usize) -> Result<(), NnError> {
        self.charge(n as u128, "")?;
        let mut p = [0u32; 32];
        p[..params.len()].copy_from_slice(params);
        let n = u32::try_from(n).map_err(|_| NnError::TooLarge("a step with more than 2^32 outputs".into()))?;
        if n > 0 {
            self.steps.push(Step { kernel, params: p, n, grid: None });
        }
        Ok(())
    }

    /// A MatMul step: one workgroup per 64x64 output tile.
    fn matmul(&mut self, params: &[u32], m: usize, n: usize, batch: usize, node: &str) -> Result<(), NnError> {
        self.charge(batch as u128 * m as u128 * n as u128 * params[6] as u128, node)?;
        let tiles = |d: usize| u32::try_from(d.div_ceil(64)).ok().filter(|t| *t <= 65535);
        let (Some(x), Some(y), Some(z)) = (tiles(n), tiles(m), u32::try_from(batch).ok().filter(|b| *b <= 65535))
        else {
            return Err(unsupported(format!(
                "node {node}: a MatMul of {batch} x [{m}, {n}] exceeds the dispatch grid"
            )));
        };
        let mut p = [0u32; 32];
        p[..params.len()].copy_from_slice(params);
        if m * n * batch > 0 {
            self.steps.push(Step { kernel: Kernel::MatMul, params: p, n: 1, grid: Some([x, y, z]) });
        }
        Ok(())
    }

    fn out(&mut self, node: &Node, shape: Vec<usize>) -> Result<usize, NnError> {
        let off = self.alloc(&shape, &node.name)?;
        let name = node.outputs.first().cloned().unwrap_or_default();
        self.vals.insert(name, Val::Arena(off, shape));
        Ok(off)
    }

    fn u(&self, v: usize, node: &str) -> Result<u32, NnError> {
        u32::try_from(v).map_err(|_| NnError::TooLarge(format!("node {node}: a size beyond 2^32")))
    }
}

/// Inference BatchNormalization as a per-channel scale and shift:
/// scale' = scale / sqrt(var + eps), shift' = bias - mean * scale', each
/// operation rounded once (f32, IEEE) and made canonical.
fn fold_batchnorm(scale: &[f32], bias: &[f32], mean: &[f32], var: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>) {
    use crate::nn::exact::math::canonical as c;
    let mut a = Vec::with_capacity(scale.len());
    let mut b = Vec::with_capacity(scale.len());
    for i in 0..scale.len() {
        let k = c(c(scale[i]) / c(c(c(var[i]) + c(eps)).sqrt()));
        a.push(k);
        b.push(c(c(bias[i]) - c(c(mean[i]) * k)));
    }
    (a, b)
}

/// Broadcast strides of `shape` against `out` (right-aligned, 0 where
/// broadcast), padded to MAX_RANK.
fn broadcast_strides(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let s = contiguous(shape);
    let pad = out.len() - shape.len();
    (0..out.len()).map(|i| if i < pad || shape[i - pad] == 1 { 0 } else { s[i - pad] }).collect()
}

impl OnnxGraph {
    /// Plans for inputs of `shapes`, within `limits` and an arena of at
    /// most `max_bytes`.
    pub(crate) fn plan(
        &self,
        shapes: &[Vec<usize>],
        limits: &NnLimits,
        max_bytes: u64,
        exact: bool,
        on_cpu: bool,
    ) -> Result<Plan, NnError> {
        if shapes.len() != self.inputs.len() {
            return Err(NnError::InvalidArgument(format!(
                "the graph has {} inputs, {} were set",
                self.inputs.len(),
                shapes.len()
            )));
        }
        let max_elements = usize::try_from((max_bytes / 4).min(u32::MAX as u64 - 64)).unwrap_or(usize::MAX);
        let mut pl = Planner {
            limits,
            exact,
            on_cpu,
            weights: Vec::new(),
            max_elements,
            next: 0,
            vals: HashMap::new(),
            steps: Vec::new(),
            work: 0,
        };
        for (name, c) in &self.consts {
            match c {
                Const::F32(shape, data) => {
                    let off = pl.alloc(shape, name)?;
                    pl.weight(off, data.clone());
                    pl.vals.insert(name.clone(), Val::Arena(off, shape.clone()));
                }
                Const::I64(data) => {
                    pl.vals.insert(name.clone(), Val::Ints(data.clone()));
                }
            }
        }
        let mut inputs = Vec::new();
        for (name, shape) in self.inputs.iter().zip(shapes) {
            let off = pl.alloc(shape, name)?;
            inputs.push((off, elems(shape)));
            pl.vals.insert(name.clone(), Val::Arena(off, shape.clone()));
        }
        for node in &self.nodes {
            self.plan_node(&mut pl, node)?;
        }
        let mut outputs = Vec::new();
        for name in &self.outputs {
            let (off, shape) = pl.arena(name, "graph output")?;
            outputs.push((off, shape));
        }
        Ok(Plan { arena: pl.next.max(4), weights: pl.weights, inputs, outputs, steps: pl.steps, exact })
    }

    fn plan_node(&self, pl: &mut Planner<'_>, node: &Node) -> Result<(), NnError> {
        let nm = node.name.as_str();
        let input = |i: usize| -> Result<&str, NnError> {
            node.inputs
                .get(i)
                .map(|s| s.as_str())
                .filter(|s| !s.is_empty())
                .ok_or_else(|| NnError::InvalidArgument(format!("node {nm}: missing input {i}")))
        };
        let bad = |msg: String| NnError::InvalidArgument(format!("node {nm}: {msg}"));
        match &node.op {
            Op::Gemm { alpha, beta, trans_a, trans_b } => {
                let (a, sa) = pl.arena(input(0)?, nm)?;
                let (b, sb) = pl.arena(input(1)?, nm)?;
                if sa.len() != 2 || sb.len() != 2 {
                    return Err(bad(format!("Gemm takes 2-D A and B, got {sa:?} and {sb:?}")));
                }
                let (m, k) = if *trans_a { (sa[1], sa[0]) } else { (sa[0], sa[1]) };
                let (k2, n) = if *trans_b { (sb[1], sb[0]) } else { (sb[0], sb[1]) };
                if k != k2 {
                    return Err(bad(format!("Gemm shapes {sa:?} and {sb:?} do not agree")));
                }
                let (bias, brs, bcs) = match node.inputs.get(2).filter(|s| !s.is_empty()) {
                    None => (u32::MAX, 0, 0),
                    Some(c) => {
                        let (off, sc) = pl.arena(c, nm)?;
                        let s2: Vec<usize> = match sc.len() {
                            0 => vec![1, 1],
                            1 => vec![1, sc[0]],
                            2 => sc.clone(),
                            _ => return Err(bad(format!("Gemm bias of shape {sc:?}"))),
                        };
                        if !(s2[0] == 1 || s2[0] == m) || !(s2[1] == 1 || s2[1] == n) {
                            return Err(bad(format!("Gemm bias {sc:?} does not broadcast to [{m}, {n}]")));
                        }
                        let rs = if s2[0] == 1 { 0 } else { s2[1] };
                        let cs = if s2[1] == 1 { 0 } else { 1 };
                        (pl.u(off, nm)?, rs, cs)
                    }
                };
                let (ars, aks) = if *trans_a { (1, m) } else { (k, 1) };
                let (bks, bcs_) = if *trans_b { (1, k) } else { (n, 1) };
                let c = pl.out(node, vec![m, n])?;
                let u = |v: usize| pl.u(v, nm);
                let params = [
                    u(a)?,
                    u(b)?,
                    u(c)?,
                    bias,
                    u(m)?,
                    u(n)?,
                    u(k)?,
                    1,
                    0,
                    0,
                    u(ars)?,
                    u(aks)?,
                    u(bks)?,
                    u(bcs_)?,
                    u(brs)?,
                    u(bcs)?,
                    alpha.to_bits(),
                    beta.to_bits(),
                ];
                pl.matmul(&params, m, n, 1, nm)
            }
            Op::MatMul => {
                let (a, sa) = pl.arena(input(0)?, nm)?;
                let (b, sb) = pl.arena(input(1)?, nm)?;
                if sa.len() < 2 || sb.len() < 2 {
                    return Err(unsupported(format!("node {nm}: MatMul of 1-D operands ({sa:?}, {sb:?})")));
                }
                let (m, k) = (sa[sa.len() - 2], sa[sa.len() - 1]);
                let (k2, n) = (sb[sb.len() - 2], sb[sb.len() - 1]);
                if k != k2 {
                    return Err(bad(format!("MatMul shapes {sa:?} and {sb:?} do not agree")));
                }
                let ba = &sa[..sa.len() - 2];
                let bb = &sb[..sb.len() - 2];
                let (batch_dims, stride_a, stride_b) = if bb.is_empty() || elems(bb) == 1 && bb.len() <= ba.len() {
                    (ba.to_vec(), m * k, 0)
                } else if ba.is_empty() || elems(ba) == 1 && ba.len() <= bb.len() {
                    (bb.to_vec(), 0, k * n)
                } else if ba == bb {
                    (ba.to_vec(), m * k, k * n)
                } else {
                    return Err(unsupported(format!("node {nm}: MatMul broadcasting {sa:?} with {sb:?}")));
                };
                let batch = elems(&batch_dims);
                let mut shape = batch_dims;
                shape.extend([m, n]);
                let c = pl.out(node, shape)?;
                let u = |v: usize| pl.u(v, nm);
                let params = [
                    u(a)?,
                    u(b)?,
                    u(c)?,
                    u32::MAX,
                    u(m)?,
                    u(n)?,
                    u(k)?,
                    u(batch)?,
                    u(stride_a)?,
                    u(stride_b)?,
                    u(k)?,
                    1,
                    u(n)?,
                    1,
                    0,
                    0,
                    1f32.to_bits(),
                    0,
                ];
                pl.matmul(&params, m, n, batch, nm)
            }
            Op::Binary(op) => {
                let (a, sa) = pl.arena(input(0)?, nm)?;
                let (b, sb) = pl.arena(input(1)?, nm)?;
                let rank = sa.len().max(sb.len());
                if rank > MAX_RANK {
                    return Err(unsupported(format!("node {nm}: tensors of rank {rank} (at most {MAX_RANK})")));
                }
                let mut out = vec![0; rank];
                for (i, o) in out.iter_mut().enumerate() {
                    let da = if i + sa.len() >= rank { sa[i + sa.len() - rank] } else { 1 };
                    let db = if i + sb.len() >= rank { sb[i + sb.len() - rank] } else { 1 };
                    *o = if da == db || db == 1 {
                        da
                    } else if da == 1 {
                        db
                    } else {
                        return Err(bad(format!("shapes {sa:?} and {sb:?} do not broadcast")));
                    };
                }
                let stra = broadcast_strides(&sa, &out);
                let strb = broadcast_strides(&sb, &out);
                let n = elems(&out);
                let c = pl.out(node, out.clone())?;
                let mut p = vec![*op, pl.u(a, nm)?, pl.u(b, nm)?, pl.u(c, nm)?, pl.u(n, nm)?, rank as u32];
                for list in [&out, &stra, &strb] {
                    let mut v: Vec<u32> = list.iter().map(|x| *x as u32).collect();
                    v.resize(MAX_RANK, 0);
                    p.extend(v);
                }
                pl.step(Kernel::Binary, &p, n)
            }
            Op::Unary(op) => {
                let (x, s) = pl.arena(input(0)?, nm)?;
                let n = elems(&s);
                let y = pl.out(node, s)?;
                let p = [*op, pl.u(x, nm)?, pl.u(y, nm)?, pl.u(n, nm)?];
                pl.step(Kernel::Unary, &p, n)
            }
            Op::Conv { strides, pads, auto_pad, dilations, group } => {
                let (x, sx) = pl.arena(input(0)?, nm)?;
                let (w, sw) = pl.arena(input(1)?, nm)?;
                if sx.len() != 4 || sw.len() != 4 {
                    return Err(unsupported(format!("node {nm}: only 2-D Conv (NCHW), got {sx:?} and {sw:?}")));
                }
                let (n, c, h, wd) = (sx[0], sx[1], sx[2], sx[3]);
                let (m, cpg, kh, kw) = (sw[0], sw[1], sw[2], sw[3]);
                if !c.is_multiple_of(*group) || !m.is_multiple_of(*group) || cpg != c / group || kh == 0 || kw == 0 {
                    return Err(bad(format!("Conv input {sx:?}, weights {sw:?} and group {group} do not agree")));
                }
                let bias = match node.inputs.get(2).filter(|s| !s.is_empty()) {
                    None => u32::MAX,
                    Some(b) => {
                        let (off, sb) = pl.arena(b, nm)?;
                        if sb != [m] {
                            return Err(bad(format!("Conv bias of shape {sb:?}, expected [{m}]")));
                        }
                        pl.u(off, nm)?
                    }
                };
                let ek = [(kh - 1) * dilations[0] + 1, (kw - 1) * dilations[1] + 1];
                let pads = match auto_pad.as_str() {
                    "SAME_UPPER" | "SAME_LOWER" => {
                        let mut p = [0; 4];
                        for (i, size) in [h, wd].into_iter().enumerate() {
                            let out = size.div_ceil(strides[i]);
                            let total = ((out - 1) * strides[i] + ek[i]).saturating_sub(size);
                            let small = total / 2;
                            let (begin, end) = if auto_pad.as_str() == "SAME_UPPER" {
                                (small, total - small)
                            } else {
                                (total - small, small)
                            };
                            p[i] = begin;
                            p[i + 2] = end;
                        }
                        p
                    }
                    "VALID" => [0; 4],
                    _ => pads.unwrap_or([0; 4]),
                };
                let (hp, wp) = (h + pads[0] + pads[2], wd + pads[1] + pads[3]);
                if hp < ek[0] || wp < ek[1] {
                    return Err(bad(format!("Conv kernel {:?} larger than the padded input {hp}x{wp}", ek)));
                }
                let oh = (hp - ek[0]) / strides[0] + 1;
                let ow = (wp - ek[1]) / strides[1] + 1;
                let y = pl.out(node, vec![n, m, oh, ow])?;
                // Four output channels per invocation when they fall in
                // one group (so they share their input values).
                let cb = if (m / group).is_multiple_of(4) { 4 } else { 1 };
                let u = |v: usize| pl.u(v, nm);
                let p = [
                    u(x)?,
                    u(w)?,
                    bias,
                    u(y)?,
                    u(n)?,
                    u(c)?,
                    u(h)?,
                    u(wd)?,
                    u(m)?,
                    u(oh)?,
                    u(ow)?,
                    u(kh)?,
                    u(kw)?,
                    u(strides[0])?,
                    u(strides[1])?,
                    u(pads[0])?,
                    u(pads[1])?,
                    u(dilations[0])?,
                    u(dilations[1])?,
                    u(*group)?,
                    cb as u32,
                ];
                pl.charge((n * m * oh * ow) as u128 * (cpg * kh * kw) as u128, nm)?;
                pl.step(Kernel::Conv, &p, n * (m / cb) * oh * ow)
            }
            Op::Pool { max, kernel, strides, pads, count_include_pad } => {
                let (x, sx) = pl.arena(input(0)?, nm)?;
                self.pool(pl, node, x, &sx, *max, *kernel, *strides, *pads, *count_include_pad)
            }
            Op::GlobalAveragePool => {
                let (x, sx) = pl.arena(input(0)?, nm)?;
                if sx.len() != 4 {
                    return Err(unsupported(format!("node {nm}: only 2-D GlobalAveragePool, got {sx:?}")));
                }
                self.pool(pl, node, x, &sx, false, [sx[2], sx[3]], [1, 1], [0; 4], false)
            }
            Op::Softmax { axis } => {
                let (x, s) = pl.arena(input(0)?, nm)?;
                let a = axis_of(*axis, s.len(), nm)?;
                let outer = elems(&s[..a]);
                let (len, inner) = if self.legacy_softmax { (elems(&s[a..]), 1) } else { (s[a], elems(&s[a + 1..])) };
                let y = pl.out(node, s)?;
                let p = [pl.u(x, nm)?, pl.u(y, nm)?, pl.u(outer, nm)?, pl.u(len, nm)?, pl.u(inner, nm)?];
                pl.charge((outer * inner) as u128 * len as u128 * 3, nm)?;
                pl.step(Kernel::Softmax, &p, outer * inner)
            }
            Op::Reshape { allowzero } => {
                let (x, s) = pl.arena(input(0)?, nm)?;
                let Some(Val::Ints(spec)) = pl.vals.get(input(1)?).cloned() else {
                    return Err(unsupported(format!("node {nm}: Reshape to a computed shape (it must be a constant)")));
                };
                let mut out = Vec::with_capacity(spec.len());
                let mut infer = None;
                for (i, d) in spec.iter().enumerate() {
                    match *d {
                        0 if !allowzero => {
                            out.push(*s.get(i).ok_or_else(|| bad("Reshape copies a missing dimension".into()))?)
                        }
                        -1 if infer.is_none() => {
                            infer = Some(i);
                            out.push(1);
                        }
                        d if d >= 0 => out.push(d as usize),
                        d => return Err(bad(format!("Reshape dimension {d}"))),
                    }
                }
                if let Some(i) = infer {
                    let known = elems(&out);
                    if known == 0 || !elems(&s).is_multiple_of(known) {
                        return Err(bad(format!("cannot reshape {s:?} to {spec:?}")));
                    }
                    out[i] = elems(&s) / known;
                }
                if elems(&out) != elems(&s) {
                    return Err(bad(format!("cannot reshape {s:?} to {spec:?}")));
                }
                self.alias(pl, node, x, out)
            }
            Op::Flatten { axis } => {
                let (x, s) = pl.arena(input(0)?, nm)?;
                let a = if *axis < 0 { *axis + s.len() as i64 } else { *axis };
                if a < 0 || a as usize > s.len() {
                    return Err(bad(format!("Flatten axis {axis} for rank {}", s.len())));
                }
                let out = vec![elems(&s[..a as usize]), elems(&s[a as usize..])];
                self.alias(pl, node, x, out)
            }
            Op::Identity => {
                let (x, s) = pl.arena(input(0)?, nm)?;
                self.alias(pl, node, x, s)
            }
            Op::Transpose { perm } => {
                let (x, s) = pl.arena(input(0)?, nm)?;
                let rank = s.len();
                if rank > MAX_RANK {
                    return Err(unsupported(format!("node {nm}: Transpose of rank {rank} (at most {MAX_RANK})")));
                }
                let perm: Vec<usize> = perm.clone().unwrap_or_else(|| (0..rank).rev().collect());
                let mut sorted = perm.clone();
                sorted.sort_unstable();
                if sorted != (0..rank).collect::<Vec<_>>() {
                    return Err(bad(format!("bad perm {perm:?} for rank {rank}")));
                }
                let out: Vec<usize> = perm.iter().map(|p| s[*p]).collect();
                let src_strides = contiguous(&s);
                let src: Vec<usize> = perm.iter().map(|p| src_strides[*p]).collect();
                let dst = contiguous(&out);
                let n = elems(&out);
                let y = pl.out(node, out.clone())?;
                self.copy(pl, nm, x, y, &out, &src, &dst, n)
            }
            Op::Concat { axis } => {
                let mut parts = Vec::new();
                for name in node.inputs.iter().filter(|s| !s.is_empty()) {
                    parts.push(pl.arena(name, nm)?);
                }
                let first = parts.first().map(|p| p.1.clone()).ok_or_else(|| bad("Concat of nothing".into()))?;
                let rank = first.len();
                if rank > MAX_RANK {
                    return Err(unsupported(format!("node {nm}: Concat of rank {rank} (at most {MAX_RANK})")));
                }
                let a = axis_of(*axis, rank, nm)?;
                let mut out = first.clone();
                out[a] = 0;
                for (_, s) in &parts {
                    if s.len() != rank || (0..rank).any(|i| i != a && s[i] != first[i]) {
                        return Err(bad(format!("Concat of {first:?} and {s:?} along axis {a}")));
                    }
                    out[a] += s[a];
                }
                let y = pl.out(node, out.clone())?;
                let dst = contiguous(&out);
                let mut at = 0;
                for (off, s) in parts {
                    let src = contiguous(&s);
                    self.copy(pl, nm, off, y + at * dst[a], &s, &src, &dst, elems(&s))?;
                    at += s[a];
                }
                Ok(())
            }
            Op::BatchNorm { eps } => {
                let (x, s) = pl.arena(input(0)?, nm)?;
                if s.len() < 2 {
                    return Err(bad(format!("BatchNormalization of shape {s:?}")));
                }
                let c = s[1];
                // Folded on the host into y = x * scale' + shift', with
                // IEEE division and square root: correctly rounded on every
                // host, so exact mode needs no sqrt on the device.
                let mut params = Vec::new();
                for i in 1..5 {
                    let name = input(i)?;
                    let Some(Const::F32(sp, v)) = self.consts.iter().find(|(n, _)| n == name).map(|(_, c)| c) else {
                        return Err(unsupported(format!(
                            "node {nm}: BatchNormalization with a computed {name} (scale, bias, mean and var \
                             must be constants of the model)"
                        )));
                    };
                    if *sp != [c] {
                        return Err(bad(format!("BatchNormalization parameter of shape {sp:?}, expected [{c}]")));
                    }
                    params.push(v.clone());
                }
                let (scale, shift) = fold_batchnorm(&params[0], &params[1], &params[2], &params[3], *eps);
                let a = pl.alloc(&[c], nm)?;
                pl.weight(a, scale);
                let b = pl.alloc(&[c], nm)?;
                pl.weight(b, shift);
                let n = elems(&s);
                let spatial = elems(&s[2..]);
                let y = pl.out(node, s)?;
                let p = [
                    pl.u(x, nm)?,
                    pl.u(y, nm)?,
                    pl.u(a, nm)?,
                    pl.u(b, nm)?,
                    pl.u(n, nm)?,
                    pl.u(c, nm)?,
                    pl.u(spatial, nm)?,
                ];
                pl.step(Kernel::BatchNorm, &p, n)
            }
        }
    }

    fn alias(&self, pl: &mut Planner<'_>, node: &Node, off: usize, shape: Vec<usize>) -> Result<(), NnError> {
        let name = node.outputs.first().cloned().unwrap_or_default();
        pl.vals.insert(name, Val::Arena(off, shape));
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn copy(
        &self,
        pl: &mut Planner<'_>,
        nm: &str,
        src_off: usize,
        dst_off: usize,
        dims: &[usize],
        src: &[usize],
        dst: &[usize],
        n: usize,
    ) -> Result<(), NnError> {
        let mut p = vec![pl.u(src_off, nm)?, pl.u(dst_off, nm)?, pl.u(n, nm)?, dims.len() as u32];
        for list in [dims, src, dst] {
            let mut v: Vec<u32> = list.iter().map(|x| *x as u32).collect();
            v.resize(MAX_RANK, 0);
            p.extend(v);
        }
        pl.step(Kernel::Copy, &p, n)
    }

    #[allow(clippy::too_many_arguments)]
    fn pool(
        &self,
        pl: &mut Planner<'_>,
        node: &Node,
        x: usize,
        sx: &[usize],
        max: bool,
        kernel: [usize; 2],
        strides: [usize; 2],
        pads: [usize; 4],
        count_include_pad: bool,
    ) -> Result<(), NnError> {
        let nm = node.name.as_str();
        if sx.len() != 4 {
            return Err(unsupported(format!("node {nm}: only 2-D pooling (NCHW), got {sx:?}")));
        }
        let (hp, wp) = (sx[2] + pads[0] + pads[2], sx[3] + pads[1] + pads[3]);
        if hp < kernel[0] || wp < kernel[1] {
            return Err(NnError::InvalidArgument(format!("node {nm}: pooling window larger than the input")));
        }
        let oh = (hp - kernel[0]) / strides[0] + 1;
        let ow = (wp - kernel[1]) / strides[1] + 1;
        let nc = sx[0] * sx[1];
        let y = pl.out(node, vec![sx[0], sx[1], oh, ow])?;
        let u = |v: usize| pl.u(v, nm);
        let p = [
            u(x)?,
            u(y)?,
            u(nc)?,
            u(sx[2])?,
            u(sx[3])?,
            u(oh)?,
            u(ow)?,
            u(kernel[0])?,
            u(kernel[1])?,
            u(strides[0])?,
            u(strides[1])?,
            u(pads[0])?,
            u(pads[1])?,
            if max { 0 } else { 1 },
            count_include_pad as u32,
        ];
        pl.charge((nc * oh * ow) as u128 * (kernel[0] * kernel[1]) as u128, nm)?;
        pl.step(Kernel::Pool, &p, nc * oh * ow)
    }
}

/// The input slot `id` names, among `n`.
fn index(id: &Id, n: usize, what: &str) -> Result<usize, NnError> {
    match id {
        Id::Index(i) if (*i as usize) < n => Ok(*i as usize),
        Id::Index(i) => Err(NnError::InvalidArgument(format!("{what} index {i} is out of range: the model has {n}"))),
        Id::Name(n) => Err(NnError::InvalidArgument(format!("{what}s are addressed by index, not by name ({n:?})"))),
    }
}

/// A backend's `set_input`: which of `n` inputs, its shape and values.
pub(crate) fn decode_input(
    id: &Id,
    n: usize,
    tensor: &wasmtime_wasi_nn::Tensor,
) -> Result<(usize, crate::nn::Values), NnError> {
    let i = index(id, n, "input")?;
    if tensor.ty != TensorType::Fp32 {
        return Err(NnError::Unsupported(format!("tensor type {:?}: only f32 tensors are supported", tensor.ty)));
    }
    let shape: Vec<usize> = tensor.dimensions.iter().map(|d| *d as usize).collect();
    // The ABI layer checks this for guests; native callers (Session)
    // reach here directly.
    let bytes = shape.iter().try_fold(4usize, |a, d| a.checked_mul(*d));
    if bytes != Some(tensor.data.len()) {
        return Err(NnError::InvalidArgument(format!(
            "a tensor of shape {shape:?} (f32) needs {bytes:?} bytes of data, got {}",
            tensor.data.len()
        )));
    }
    let values = tensor.data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    Ok((i, (shape, values)))
}

/// A backend's `get_output`: output `id` of the last compute.
pub(crate) fn encode_output(
    id: &Id,
    n: usize,
    outputs: &[(Vec<usize>, Vec<f32>)],
) -> Result<wasmtime_wasi_nn::Tensor, NnError> {
    let i = index(id, n, "output")?;
    let (shape, values) =
        outputs.get(i).ok_or_else(|| NnError::InvalidArgument("no outputs yet: call compute first".into()))?;
    let mut data = Vec::with_capacity(values.len() * 4);
    for v in values {
        data.extend_from_slice(&v.to_le_bytes());
    }
    Ok(wasmtime_wasi_nn::Tensor { dimensions: shape.iter().map(|d| *d as u32).collect(), ty: TensorType::Fp32, data })
}
