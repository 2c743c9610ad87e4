//! The exact CPU backend: Shoal's own kernels on the CPU, giving the same
//! bits as the exact GPU kernels on any conformant Vulkan device (see
//! `docs/wasi-nn.md`, "Determinism across devices").
//!
//! - `math.rs`: the exact arithmetic (flushing, division, exp, tanh), the
//!   twin of `vulkan/exact.wgsl`.
//! - `gemm.rs`: the matrix product, vectorised and on every core, in the
//!   GPU kernels' order of operations.
//! - `cpu.rs`: a plan (`nn/graph.rs`, the same plans the GPU runs) run
//!   step by step.
//!
//! An execution context keeps one plan and its arena per set of input
//! shapes, like the GPU backend's.

mod cpu;
pub(crate) mod gemm;
pub(crate) mod math;

use std::sync::Arc;

use wasmtime_wasi_nn::backend::{BackendError, BackendExecutionContext, BackendGraph, Id, NamedTensor};
use wasmtime_wasi_nn::{ExecutionContext, Graph};

use super::{graph, to_backend, NnError};

/// Loads an ONNX graph for the exact CPU backend: refused here, naming the
/// ops, if it uses any op outside the exact set.
pub(crate) fn load(bytes: &[u8]) -> Result<Graph, BackendError> {
    let graph = graph::parse(bytes).map_err(to_backend)?;
    let g: Box<dyn BackendGraph> = Box::new(ExactGraph { graph: Arc::new(graph) });
    Ok(g.into())
}

struct ExactGraph {
    graph: Arc<graph::OnnxGraph>,
}

impl BackendGraph for ExactGraph {
    fn init_execution_context(&self) -> Result<ExecutionContext, BackendError> {
        let ctx: Box<dyn BackendExecutionContext> = Box::new(ExactContext {
            graph: self.graph.clone(),
            inputs: vec![None; self.graph.inputs.len()],
            prepared: None,
            outputs: Vec::new(),
        });
        Ok(ctx.into())
    }
}

struct Prepared {
    shapes: Vec<Vec<usize>>,
    plan: graph::Plan,
    arena: Vec<f32>,
}

struct ExactContext {
    graph: Arc<graph::OnnxGraph>,
    inputs: Vec<Option<(Vec<usize>, Vec<f32>)>>,
    prepared: Option<Prepared>,
    outputs: Vec<(Vec<usize>, Vec<f32>)>,
}

impl ExactContext {
    fn compute_inner(&mut self) -> Result<(), NnError> {
        let scope = super::scope();
        let mut shapes = Vec::with_capacity(self.inputs.len());
        let mut data = Vec::with_capacity(self.inputs.len());
        for (i, t) in self.inputs.iter().enumerate() {
            let (s, d) = t.as_ref().ok_or_else(|| NnError::InvalidArgument(format!("input {i} is not set")))?;
            shapes.push(s.clone());
            data.push(d.as_slice());
        }
        if self.prepared.as_ref().is_none_or(|p| p.shapes != shapes) {
            self.prepared = None;
            // The arena holds every tensor of the plan: bounded by the
            // job's CPU memory limit before anything is allocated.
            let plan = self.graph.plan(&shapes, &scope.limits, scope.limits.cpu_memory, true, true)?;
            let arena = cpu::arena(&plan);
            self.prepared = Some(Prepared { shapes, plan, arena });
        }
        let Some(p) = &mut self.prepared else { return Err(NnError::Runtime("no plan".into())) };
        let outs = cpu::run(&p.plan, &mut p.arena, &data)?;
        self.outputs = p.plan.outputs.iter().map(|(_, s)| s.clone()).zip(outs).collect();
        Ok(())
    }
}

impl BackendExecutionContext for ExactContext {
    fn set_input(&mut self, id: Id, tensor: &wasmtime_wasi_nn::Tensor) -> Result<(), BackendError> {
        let (i, t) = graph::decode_input(&id, self.inputs.len(), tensor).map_err(to_backend)?;
        self.inputs[i] = Some(t);
        Ok(())
    }

    fn compute(&mut self, inputs: Option<Vec<NamedTensor>>) -> Result<Option<Vec<NamedTensor>>, BackendError> {
        if inputs.is_some() {
            return Err(to_backend(NnError::Unsupported("named inputs (wasi-nn over WIT) are not supported".into())));
        }
        self.compute_inner().map_err(to_backend)?;
        Ok(None)
    }

    fn get_output(&mut self, id: Id) -> Result<wasmtime_wasi_nn::Tensor, BackendError> {
        graph::encode_output(&id, self.graph.outputs.len(), &self.outputs).map_err(to_backend)
    }
}
