//! The GPU backend: Vulkan compute through vulkano.
//!
//! - `device.rs`: finding and opening a device (discrete, then integrated,
//!   then software only when allowed).
//! - `exec.rs`: the kernels, the arena buffer and running a plan (made by
//!   `nn/graph.rs`).
//! - `kernels.wgsl`: the shaders, compiled to SPIR-V by `build.rs` twice,
//!   after the `fast.wgsl` prelude and after the `exact.wgsl` one.
//!
//! A plan keeps every tensor (weights, inputs, intermediates, outputs) in
//! one device buffer, the arena, bounded by the job's GPU memory limit and
//! the device's `maxStorageBufferRange`. An execution context makes one
//! plan per set of input shapes and keeps it while the shapes stay the same
//! (a batch loop uploads weights once).

mod device;
mod exec;

pub(crate) use device::{probe, Gpu, Lazy};

use std::sync::Arc;

use wasmtime_wasi_nn::backend::{BackendError, BackendExecutionContext, BackendGraph, Id, NamedTensor};
use wasmtime_wasi_nn::{ExecutionContext, Graph};

use super::{graph, to_backend, GpuReservation, Mode, NnError};

/// Loads an ONNX graph for the GPU: refused here, naming the ops, if it
/// uses any op outside the op set, or in exact mode if the device cannot
/// run the exact kernels.
pub(crate) fn load(gpu: Arc<Gpu>, bytes: &[u8], mode: Mode) -> Result<Graph, BackendError> {
    if mode == Mode::Exact {
        if let Some(why) = gpu.kernels.exact_refused() {
            return Err(to_backend(NnError::Unsupported(format!(
                "the GPU {} cannot run exact inference: {why}; run this job with nn mode fast, or on the cpu target",
                gpu.info.name
            ))));
        }
    }
    let graph = graph::parse(bytes).map_err(to_backend)?;
    let g: Box<dyn BackendGraph> = Box::new(VulkanGraph { gpu, graph: Arc::new(graph), exact: mode == Mode::Exact });
    Ok(g.into())
}

struct VulkanGraph {
    gpu: Arc<Gpu>,
    graph: Arc<graph::OnnxGraph>,
    exact: bool,
}

impl BackendGraph for VulkanGraph {
    fn init_execution_context(&self) -> Result<ExecutionContext, BackendError> {
        let ctx: Box<dyn BackendExecutionContext> = Box::new(VulkanContext {
            gpu: self.gpu.clone(),
            graph: self.graph.clone(),
            exact: self.exact,
            inputs: vec![None; self.graph.inputs.len()],
            loaded: None,
            outputs: Vec::new(),
        });
        Ok(ctx.into())
    }
}

struct Prepared {
    shapes: Vec<Vec<usize>>,
    loaded: exec::Loaded,
    _reservation: GpuReservation,
}

struct VulkanContext {
    gpu: Arc<Gpu>,
    graph: Arc<graph::OnnxGraph>,
    exact: bool,
    inputs: Vec<Option<(Vec<usize>, Vec<f32>)>>,
    loaded: Option<Prepared>,
    outputs: Vec<(Vec<usize>, Vec<f32>)>,
}

impl VulkanContext {
    fn compute_inner(&mut self) -> Result<(), NnError> {
        let scope = super::scope();
        let mut shapes = Vec::with_capacity(self.inputs.len());
        let mut data = Vec::with_capacity(self.inputs.len());
        for (i, t) in self.inputs.iter().enumerate() {
            let (s, d) = t.as_ref().ok_or_else(|| NnError::InvalidArgument(format!("input {i} is not set")))?;
            shapes.push(s.clone());
            data.push(d.as_slice());
        }
        if self.loaded.as_ref().is_none_or(|p| p.shapes != shapes) {
            // Free the old arena before allocating the new one.
            self.loaded = None;
            let max_bytes = scope.limits.gpu_memory.min(self.gpu.max_buffer);
            let plan = self.graph.plan(&shapes, &scope.limits, max_bytes, self.exact, false)?;
            let reservation = scope.reserve_gpu(plan.arena as u64 * 4)?;
            let loaded = exec::load(&self.gpu, &self.gpu.kernels, plan, scope.time_left())?;
            self.loaded = Some(Prepared { shapes, loaded, _reservation: reservation });
        }
        let Some(p) = &self.loaded else { return Err(NnError::Runtime("no plan".into())) };
        let outs = exec::run(&self.gpu, &self.gpu.kernels, &p.loaded, &data, scope.time_left())?;
        self.outputs = p.loaded.plan.outputs.iter().map(|(_, s)| s.clone()).zip(outs).collect();
        Ok(())
    }
}

impl BackendExecutionContext for VulkanContext {
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
