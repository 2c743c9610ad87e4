//! The ONNX graph as Shoal's own kernels see it (the GPU backend in both
//! modes, the exact CPU backend), in three stages:
//!
//! - `parse.rs`: ONNX bytes to an [`OnnxGraph`], checked against the op
//!   set at load (a graph with any other op is refused, listing them);
//! - `shape.rs`: shape arithmetic (broadcasting, strides, convolution and
//!   pooling windows), pure functions;
//! - `lower.rs`: for concrete input shapes, the [`Plan`]: where every
//!   tensor lives in the arena and which kernel steps compute it, with
//!   their typed parameters (`nn/params.rs`).
//!
//! A plan is device-independent: `vulkan/exec.rs` dispatches it,
//! `exact/cpu.rs` runs the same steps on the CPU.

mod lower;
mod parse;
mod shape;

pub(crate) use parse::{parse, OnnxGraph};

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

use super::params;
pub(crate) use super::params::MAX_RANK;

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

    /// The kernel whose entry point is `entry`.
    pub(super) fn of(entry: &str) -> Option<Kernel> {
        Kernel::ALL.into_iter().find(|k| k.entry() == entry)
    }

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

/// One kernel dispatch: `n` invocations with these push constants.
#[derive(Debug, Clone)]
pub(crate) struct Step {
    pub(crate) kernel: Kernel,
    /// The kernel's parameters (`nn/params.rs`) as push-constant words.
    pub(crate) params: [u32; params::WORDS],
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

/// ONNX models built in unit tests.
#[cfg(test)]
pub(super) mod testing {
    use prost::Message;
    use tract_onnx::pb;

    pub(crate) fn attr_i(name: &str, i: i64) -> pb::AttributeProto {
        pb::AttributeProto { name: name.into(), r#type: 2, i, ..Default::default() }
    }

    pub(crate) fn attr_f(name: &str, f: f32) -> pb::AttributeProto {
        pb::AttributeProto { name: name.into(), r#type: 1, f, ..Default::default() }
    }

    pub(crate) fn node(op: &str, inputs: &[&str], output: &str, attribute: Vec<pb::AttributeProto>) -> pb::NodeProto {
        pb::NodeProto {
            op_type: op.into(),
            name: format!("{op}_{output}"),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            attribute,
            ..Default::default()
        }
    }

    pub(crate) fn floats(name: &str, dims: &[usize], data: &[f32]) -> pb::TensorProto {
        pb::TensorProto {
            name: name.into(),
            dims: dims.iter().map(|d| *d as i64).collect(),
            data_type: 1,
            float_data: data.to_vec(),
            ..Default::default()
        }
    }

    /// A model of `nodes` with graph `inputs`, output `y` and `weights`.
    pub(crate) fn model(nodes: Vec<pb::NodeProto>, inputs: &[&str], weights: Vec<pb::TensorProto>) -> Vec<u8> {
        let value = |n: &str| pb::ValueInfoProto { name: n.into(), ..Default::default() };
        let graph = pb::GraphProto {
            node: nodes,
            name: "g".into(),
            input: inputs.iter().map(|n| value(n)).collect(),
            output: vec![value("y")],
            initializer: weights,
            ..Default::default()
        };
        pb::ModelProto {
            ir_version: 8,
            opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 13 }],
            graph: Some(graph),
            ..Default::default()
        }
        .encode_to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::params::{self, KernelParams};
    use super::*;

    #[test]
    fn every_parameter_layout_names_a_kernel_and_fits_the_push_constants() {
        assert_eq!(params::LAYOUTS.len(), Kernel::ALL.len());
        for (entry, fields) in params::LAYOUTS {
            assert!(Kernel::of(entry).is_some(), "no kernel {entry}");
            let words: usize = fields.iter().map(|(_, w, _)| w).sum();
            assert!(words <= params::WORDS, "{entry}: {words} words");
        }
    }

    #[test]
    fn parameters_round_trip_through_words() {
        let p = params::MatMul {
            off_a: 7,
            m: 3,
            alpha: -0.5,
            beta: f32::MIN_POSITIVE,
            off_bias: params::NONE,
            ..Default::default()
        };
        let w = p.words();
        assert_eq!((w[0], w[3], w[4], w[16]), (7, u32::MAX, 3, (-0.5f32).to_bits()));
        assert_eq!(params::MatMul::from_words(&w), p);
        let b = params::Binary {
            op: 3,
            rank: 2,
            dims: [2, 3, 0, 0, 0, 0],
            stride_b: [0, 1, 0, 0, 0, 0],
            ..Default::default()
        };
        let w = b.words();
        // Arrays follow the scalars, in declaration order (BINARY_DIMS_AT
        // is 6 in the WGSL accessors build.rs writes).
        assert_eq!((w[6], w[7], w[19]), (2, 3, 1));
        assert_eq!(params::Binary::from_words(&w), b);
    }
}
