//! The GPU backend: Vulkan compute through vulkano.
//!
//! - `device.rs`: finding and opening a device (discrete, then integrated,
//!   then software only when allowed).
//! - `exec.rs`: the kernels, the arena buffer and running a plan (made by
//!   `nn/graph/`).
//! - `kernels.wgsl`: the shaders, compiled to SPIR-V by `build.rs` twice,
//!   after the `fast.wgsl` prelude and after the `exact.wgsl` one.
//!
//! A plan keeps every tensor (weights, inputs, intermediates, outputs) in
//! one device buffer, the arena, bounded by the job's GPU memory limit and
//! the device's `maxStorageBufferRange`. Execution contexts are
//! `nn/context.rs`'s: one plan per set of input shapes, kept while the
//! shapes stay the same (a batch loop uploads weights once).

mod device;
mod exec;

pub(crate) use device::{probe, Gpu, Lazy};

use std::sync::Arc;

use wasmtime_wasi_nn::backend::BackendError;
use wasmtime_wasi_nn::Graph;

use super::context::{self, Runner};
use super::graph::{self, OnnxGraph, Plan};
use super::{to_backend, GpuReservation, Mode, NnError, Scope};

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
    Ok(context::graph(Device { gpu, exact: mode == Mode::Exact }, graph))
}

struct Device {
    gpu: Arc<Gpu>,
    exact: bool,
}

/// A plan on the device, and the job's GPU memory it holds.
struct Loaded {
    loaded: exec::Loaded,
    _reservation: GpuReservation,
}

impl Runner for Device {
    type Loaded = Loaded;

    fn load(&self, graph: &OnnxGraph, shapes: &[Vec<usize>], scope: &Scope) -> Result<Loaded, NnError> {
        let max_bytes = scope.limits.gpu_memory.min(self.gpu.max_buffer);
        let plan = graph.plan(shapes, &scope.limits, max_bytes, self.exact, false)?;
        let reservation = scope.reserve_gpu(plan.arena as u64 * 4)?;
        let loaded = exec::load(&self.gpu, &self.gpu.kernels, plan, scope.time_left())?;
        Ok(Loaded { loaded, _reservation: reservation })
    }

    fn plan(loaded: &Loaded) -> &Plan {
        &loaded.loaded.plan
    }

    fn run(&self, loaded: &mut Loaded, inputs: &[&[f32]], scope: &Scope) -> Result<Vec<Vec<f32>>, NnError> {
        exec::run(&self.gpu, &self.gpu.kernels, &loaded.loaded, inputs, scope.time_left())
    }
}
