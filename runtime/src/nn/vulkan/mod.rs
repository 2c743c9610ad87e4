//! The GPU backend: Vulkan compute through vulkano.
//!
//! - `device.rs`: finding and opening a device (discrete, then integrated,
//!   then software only when allowed).
//! - `graph.rs`: the ONNX graph as this backend sees it: the op set, the
//!   check at load, shape inference and the plan of dispatches.
//! - `exec.rs`: the kernels, the arena buffer and running a plan.
//! - `kernels.wgsl`: the shaders, compiled to SPIR-V by `build.rs`.
//!
//! A plan keeps every tensor (weights, inputs, intermediates, outputs) in
//! one device buffer, the arena, bounded by the job's GPU memory limit and
//! the device's `maxStorageBufferRange`. An execution context makes one
//! plan per set of input shapes and keeps it while the shapes stay the same
//! (a batch loop uploads weights once).

mod device;
mod exec;
pub(crate) mod graph;

pub(crate) use device::{probe, Gpu, Lazy};

use std::sync::Arc;

use wasmtime_wasi_nn::backend::{BackendError, BackendExecutionContext, BackendGraph, Id, NamedTensor};
use wasmtime_wasi_nn::wit::TensorType;
use wasmtime_wasi_nn::{ExecutionContext, Graph};

use super::{to_backend, GpuReservation, NnError};

/// Loads an ONNX graph for the GPU: refused here, naming the ops, if it
/// uses any op outside the op set.
pub(crate) fn load(gpu: Arc<Gpu>, bytes: &[u8]) -> Result<Graph, BackendError> {
    let graph = graph::parse(bytes).map_err(to_backend)?;
    let g: Box<dyn BackendGraph> = Box::new(VulkanGraph { gpu, graph: Arc::new(graph) });
    Ok(g.into())
}

struct VulkanGraph {
    gpu: Arc<Gpu>,
    graph: Arc<graph::OnnxGraph>,
}

impl BackendGraph for VulkanGraph {
    fn init_execution_context(&self) -> Result<ExecutionContext, BackendError> {
        let ctx: Box<dyn BackendExecutionContext> = Box::new(VulkanContext {
            gpu: self.gpu.clone(),
            graph: self.graph.clone(),
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
    inputs: Vec<Option<(Vec<usize>, Vec<f32>)>>,
    loaded: Option<Prepared>,
    outputs: Vec<(Vec<usize>, Vec<f32>)>,
}

fn index(id: &Id, n: usize, what: &str) -> Result<usize, NnError> {
    match id {
        Id::Index(i) if (*i as usize) < n => Ok(*i as usize),
        Id::Index(i) => Err(NnError::InvalidArgument(format!("{what} index {i} is out of range: the model has {n}"))),
        Id::Name(n) => Err(NnError::InvalidArgument(format!("{what}s are addressed by index, not by name ({n:?})"))),
    }
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
            let plan = self.graph.plan(&shapes, &scope.limits, max_bytes)?;
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
        let i = index(&id, self.inputs.len(), "input").map_err(to_backend)?;
        if tensor.ty != TensorType::Fp32 {
            return Err(to_backend(NnError::Unsupported(format!(
                "tensor type {:?}: only f32 tensors are supported",
                tensor.ty
            ))));
        }
        let shape: Vec<usize> = tensor.dimensions.iter().map(|d| *d as usize).collect();
        // The ABI layer checks this for guests; native callers (Session)
        // reach here directly.
        let bytes = shape.iter().try_fold(4usize, |a, d| a.checked_mul(*d));
        if bytes != Some(tensor.data.len()) {
            return Err(to_backend(NnError::InvalidArgument(format!(
                "a tensor of shape {shape:?} (f32) needs {bytes:?} bytes of data, got {}",
                tensor.data.len()
            ))));
        }
        let values = tensor.data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        self.inputs[i] = Some((shape, values));
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
        let i = index(&id, self.graph.outputs.len(), "output").map_err(to_backend)?;
        let (shape, values) = self
            .outputs
            .get(i)
            .ok_or_else(|| to_backend(NnError::InvalidArgument("no outputs yet: call compute first".into())))?;
        let mut data = Vec::with_capacity(values.len() * 4);
        for v in values {
            data.extend_from_slice(&v.to_le_bytes());
        }
        Ok(wasmtime_wasi_nn::Tensor {
            dimensions: shape.iter().map(|d| *d as u32).collect(),
            ty: TensorType::Fp32,
            data,
        })
    }
}
