//! The exact CPU backend: Shoal's own kernels on the CPU, giving the same
//! bits as the exact GPU kernels on any conformant Vulkan device (see
//! `docs/wasi-nn.md`, "Determinism across devices").
//!
//! - `math.rs`: the exact arithmetic (flushing, division, exp, tanh), the
//!   twin of `vulkan/exact.wgsl`.
//! - `gemm.rs`: the matrix product, vectorised and on every core, in the
//!   GPU kernels' order of operations.
//! - `cpu.rs`: a plan (`nn/graph/`, the same plans the GPU runs) run
//!   step by step.
//!
//! Its execution contexts are `nn/context.rs`'s, like the GPU backend's.

mod cpu;
pub(crate) mod gemm;
pub(crate) mod math;

use wasmtime_wasi_nn::backend::BackendError;
use wasmtime_wasi_nn::Graph;

use super::context::{self, Runner};
use super::graph::{self, OnnxGraph, Plan};
use super::{to_backend, NnError, Scope};

/// Loads an ONNX graph for the exact CPU backend: refused here, naming the
/// ops, if it uses any op outside the exact set.
pub(crate) fn load(bytes: &[u8]) -> Result<Graph, BackendError> {
    Ok(context::graph(Cpu, graph::parse(bytes).map_err(to_backend)?))
}

struct Cpu;

/// A plan with what its runs keep (`cpu::State`).
struct Loaded {
    plan: Plan,
    state: cpu::State,
}

impl Runner for Cpu {
    type Loaded = Loaded;

    fn load(&self, graph: &OnnxGraph, shapes: &[Vec<usize>], scope: &Scope) -> Result<Loaded, NnError> {
        // The arena holds every tensor of the plan: bounded by the job's
        // CPU memory limit before anything is allocated.
        let plan = graph.plan(shapes, &scope.limits, scope.limits.cpu_memory, true, true)?;
        let state = cpu::prepare(&plan);
        Ok(Loaded { plan, state })
    }

    fn plan(loaded: &Loaded) -> &Plan {
        &loaded.plan
    }

    fn run(&self, loaded: &mut Loaded, inputs: &[&[f32]], _: &Scope) -> Result<Vec<Vec<f32>>, NnError> {
        cpu::run(&loaded.plan, &mut loaded.state, inputs)
    }
}
