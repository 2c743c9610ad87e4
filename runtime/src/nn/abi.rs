//! The wasi-nn preview 1 ABI (`wasi_ephemeral_nn`), Shoal's own glue.
//!
//! `wasmtime-wasi-nn`'s witx glue cannot be used for untrusted guests: a
//! bad guest pointer reaches `unimplemented!("guest error conversion")` and
//! panics the host, and every error reaches the guest as a bare code. This
//! module implements the same six functions against the same ABI: every
//! pointer, length and handle is checked before use (an error code, never a
//! panic), sizes are bounded by [`NnLimits`](super::NnLimits) before any
//! copy, backend calls run under `catch_unwind` (a panicking backend is an
//! error for this call, not for the node), and each failure's reason is
//! written to the job's stderr as `shoal: wasi-nn <call>: <reason>`.
//!
//! Layouts (wasm32, little-endian): `graph_builder` = {ptr u32, len u32};
//! `tensor` = {dims ptr u32, dims len u32, type u8 (+3 padding), data ptr
//! u32, data len u32}, 20 bytes.

use std::panic::AssertUnwindSafe;

use wasmtime::{Caller, Extern, Linker};
use wasmtime_wasi_nn::backend::Id;
use wasmtime_wasi_nn::wit::TensorType;

use super::{bytes_cid, from_backend, JobNn, NnError, Target};

const MODULE: &str = "wasi_ephemeral_nn";

/// What the glue needs from the store's data.
pub(crate) trait NnHost: Send + 'static {
    fn nn(&mut self) -> &mut JobNn;
    /// When the job's time runs out: device work waits no longer.
    fn deadline(&self) -> Option<std::time::Instant>;
}

/// The guest's linear memory, bounds-checked.
struct Mem<'a>(&'a mut [u8]);

impl Mem<'_> {
    fn range(&self, ptr: u32, len: u64, what: &str) -> Result<std::ops::Range<usize>, NnError> {
        let start = ptr as u64;
        let end = start.checked_add(len).filter(|e| *e <= self.0.len() as u64).ok_or_else(|| {
            NnError::InvalidArgument(format!(
                "{what}: {len} bytes at {ptr:#x} lie outside the guest's memory ({} bytes)",
                self.0.len()
            ))
        })?;
        Ok(start as usize..end as usize)
    }

    fn bytes(&self, ptr: u32, len: u64, what: &str) -> Result<&[u8], NnError> {
        let r = self.range(ptr, len, what)?;
        Ok(&self.0[r])
    }

    fn put_u32(&mut self, ptr: u32, v: u32, what: &str) -> Result<(), NnError> {
        let r = self.range(ptr, 4, what)?;
        self.0[r].copy_from_slice(&v.to_le_bytes());
        Ok(())
    }
}

/// Runs one call: finds the memory, contains panics, turns the outcome
/// into an `nn_errno` and explains failures on the job's stderr.
fn call<T: NnHost>(
    caller: &mut Caller<'_, T>,
    name: &str,
    f: impl FnOnce(&mut Mem<'_>, &mut JobNn) -> Result<(), NnError>,
) -> i32 {
    let result = match caller.get_export("memory") {
        Some(Extern::Memory(m)) => {
            let (data, host) = m.data_and_store_mut(&mut *caller);
            let deadline = host.deadline();
            let nn = host.nn();
            let scope = nn.scope(deadline);
            match std::panic::catch_unwind(AssertUnwindSafe(|| super::with_scope(scope, || f(&mut Mem(data), nn)))) {
                Ok(r) => r,
                Err(panic) => Err(NnError::Runtime(format!(
                    "internal error in the backend (a bug): {}",
                    crate::executor::panic_message(&*panic)
                ))),
            }
        }
        // A shared memory cannot be borrowed as a plain slice safely.
        Some(Extern::SharedMemory(_)) => {
            Err(NnError::InvalidArgument("shared memories are not supported by wasi-nn".into()))
        }
        _ => Err(NnError::InvalidArgument("the module must export its memory as \"memory\"".into())),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            let nn = caller.data_mut().nn();
            if let Some(d) = &nn.diagnostics {
                d.note(format!("shoal: wasi-nn {name}: {e}\n").as_bytes());
            }
            e.errno()
        }
    }
}

fn target_of(t: i32) -> Result<Target, NnError> {
    match t {
        0 => Ok(Target::Cpu),
        1 => Ok(Target::Gpu),
        2 => Err(NnError::Unsupported("the tpu execution target is not supported: use cpu or gpu".into())),
        t => Err(NnError::InvalidArgument(format!("unknown execution target {t}"))),
    }
}

/// Loads through the executor's cache and records the graph in the job.
fn add_graph(nn: &mut JobNn, cid: &shoal_storage::Cid, bytes: &[u8], target: Target) -> Result<u32, NnError> {
    if nn.graphs.len() >= nn.task.limits.graphs {
        return Err(NnError::TooLarge(format!("a job may load at most {} graphs", nn.task.limits.graphs)));
    }
    // Target auto: the node's device, whatever the guest named.
    let target = match nn.task.auto_gpu {
        Some(true) => Target::Gpu,
        Some(false) => Target::Cpu,
        None => target,
    };
    if target == Target::Gpu && !nn.task.gpu && nn.task.auto_gpu.is_none() {
        return Err(NnError::Unsupported(
            "the gpu target needs a job that asks for a GPU (shoal run --gpu): it is only placed on GPU nodes".into(),
        ));
    }
    let graph = nn.shared.graph(cid, bytes, target, nn.task.mode)?;
    let device = nn.device_name(target);
    nn.devices.insert(device);
    nn.graphs.push((graph, target));
    Ok((nn.graphs.len() - 1) as u32)
}

fn check_model_size(nn: &JobNn, len: u64) -> Result<(), NnError> {
    let max = nn.task.limits.model_bytes;
    if len > max {
        return Err(NnError::TooLarge(format!("the model is {len} bytes, more than the job's limit of {max}")));
    }
    Ok(())
}

fn load(
    mem: &mut Mem<'_>,
    nn: &mut JobNn,
    builders: u32,
    count: u32,
    encoding: i32,
    target: i32,
    out: u32,
) -> Result<(), NnError> {
    mem.range(out, 4, "graph handle")?;
    if encoding != 1 {
        return Err(NnError::InvalidEncoding(format!("graph encoding {encoding}: only onnx (1) is supported")));
    }
    let target = target_of(target)?;
    if count != 1 {
        return Err(NnError::InvalidArgument(format!("an ONNX graph is one builder, not {count}")));
    }
    let b = mem.bytes(builders, 8, "graph builder")?;
    let ptr = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let len = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    check_model_size(nn, len as u64)?;
    let bytes = mem.bytes(ptr, len as u64, "model bytes")?;
    let cid = bytes_cid(bytes);
    let id = add_graph(nn, &cid, bytes, target)?;
    mem.put_u32(out, id, "graph handle")
}

fn load_by_name(mem: &mut Mem<'_>, nn: &mut JobNn, name: u32, len: u32, out: u32) -> Result<(), NnError> {
    mem.range(out, 4, "graph handle")?;
    let raw = mem.bytes(name, len as u64, "model name")?;
    let name = std::str::from_utf8(raw).map_err(|_| NnError::InvalidArgument("the model name is not UTF-8".into()))?;
    let Some(model) = nn.task.models.iter().find(|m| m.name == name).cloned() else {
        let known: Vec<&str> = nn.task.models.iter().map(|m| m.name.as_str()).collect();
        return Err(NnError::NotFound(format!(
            "no model named {name:?}: the task maps {} (map one with --model NAME=CID)",
            if known.is_empty() { "none".to_string() } else { known.join(", ") }
        )));
    };
    check_model_size(nn, model.bytes.len() as u64)?;
    let target = if nn.task.gpu { Target::Gpu } else { Target::Cpu };
    let id = add_graph(nn, &model.cid, &model.bytes, target)?;
    mem.put_u32(out, id, "graph handle")
}

fn init_execution_context(mem: &mut Mem<'_>, nn: &mut JobNn, graph: u32, out: u32) -> Result<(), NnError> {
    mem.range(out, 4, "execution context handle")?;
    let (g, _) = nn
        .graphs
        .get(graph as usize)
        .ok_or_else(|| NnError::InvalidArgument(format!("no graph with handle {graph}")))?;
    if nn.contexts.len() >= nn.task.limits.contexts {
        return Err(NnError::TooLarge(format!(
            "a job may create at most {} execution contexts",
            nn.task.limits.contexts
        )));
    }
    let ctx = g.init_execution_context().map_err(from_backend)?;
    nn.contexts.push(Some(ctx));
    mem.put_u32(out, (nn.contexts.len() - 1) as u32, "execution context handle")
}

fn context(nn: &mut JobNn, ctx: u32) -> Result<&mut wasmtime_wasi_nn::ExecutionContext, NnError> {
    nn.contexts
        .get_mut(ctx as usize)
        .and_then(|c| c.as_mut())
        .ok_or_else(|| NnError::InvalidArgument(format!("no execution context with handle {ctx}")))
}

fn set_input(mem: &mut Mem<'_>, nn: &mut JobNn, ctx: u32, index: u32, tensor: u32) -> Result<(), NnError> {
    let t = mem.bytes(tensor, 20, "tensor")?;
    let word = |o: usize| u32::from_le_bytes([t[o], t[o + 1], t[o + 2], t[o + 3]]);
    let (dims_ptr, rank, ty, data_ptr, data_len) = (word(0), word(4), t[8], word(12), word(16));
    let limits = &nn.task.limits;
    if rank as usize > limits.tensor_rank {
        return Err(NnError::TooLarge(format!("a tensor of rank {rank}: at most {} dimensions", limits.tensor_rank)));
    }
    let dims_raw = mem.bytes(dims_ptr, rank as u64 * 4, "tensor dimensions")?;
    let dims: Vec<u32> = dims_raw.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    let ty = match ty {
        1 => TensorType::Fp32,
        0 | 2..=5 => {
            return Err(NnError::Unsupported(format!("tensor type {ty}: only f32 (1) tensors are supported")));
        }
        t => return Err(NnError::InvalidArgument(format!("unknown tensor type {t}"))),
    };
    // The element count is computed in u128 so that huge dimensions
    // cannot wrap around to a small, plausible size.
    let elements: u128 = dims.iter().map(|d| *d as u128).product();
    let needed = elements * 4;
    if needed > limits.tensor_bytes as u128 {
        return Err(NnError::TooLarge(format!(
            "a tensor of shape {dims:?} needs {needed} bytes, more than the job's limit of {}",
            limits.tensor_bytes
        )));
    }
    if needed != data_len as u128 {
        return Err(NnError::InvalidArgument(format!(
            "a tensor of shape {dims:?} (f32) needs {needed} bytes of data, got {data_len}"
        )));
    }
    let data = mem.bytes(data_ptr, data_len as u64, "tensor data")?.to_vec();
    let tensor = wasmtime_wasi_nn::Tensor { dimensions: dims, ty, data };
    context(nn, ctx)?.set_input(Id::Index(index), &tensor).map_err(from_backend)
}

fn compute(nn: &mut JobNn, ctx: u32) -> Result<(), NnError> {
    context(nn, ctx)?.compute().map_err(from_backend)
}

fn get_output(
    mem: &mut Mem<'_>,
    nn: &mut JobNn,
    ctx: u32,
    index: u32,
    buf: u32,
    max: u32,
    out: u32,
) -> Result<(), NnError> {
    mem.range(out, 4, "bytes written")?;
    mem.range(buf, max as u64, "output buffer")?;
    let t = context(nn, ctx)?.get_output(Id::Index(index)).map_err(from_backend)?;
    if t.data.len() > max as usize {
        return Err(NnError::TooLarge(format!(
            "output {index} is {} bytes; the guest's buffer holds {max}",
            t.data.len()
        )));
    }
    let r = mem.range(buf, t.data.len() as u64, "output buffer")?;
    mem.0[r].copy_from_slice(&t.data);
    mem.put_u32(out, t.data.len() as u32, "bytes written")
}

/// Adds the six `wasi_ephemeral_nn` functions to `linker`.
pub(crate) fn add_to_linker<T: NnHost>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    linker.func_wrap(
        MODULE,
        "load",
        |mut c: Caller<'_, T>, builders: i32, count: i32, enc: i32, target: i32, out: i32| -> i32 {
            call(&mut c, "load", |m, nn| load(m, nn, builders as u32, count as u32, enc, target, out as u32))
        },
    )?;
    linker.func_wrap(MODULE, "load_by_name", |mut c: Caller<'_, T>, name: i32, len: i32, out: i32| -> i32 {
        call(&mut c, "load_by_name", |m, nn| load_by_name(m, nn, name as u32, len as u32, out as u32))
    })?;
    linker.func_wrap(MODULE, "init_execution_context", |mut c: Caller<'_, T>, graph: i32, out: i32| -> i32 {
        call(&mut c, "init_execution_context", |m, nn| init_execution_context(m, nn, graph as u32, out as u32))
    })?;
    linker.func_wrap(MODULE, "set_input", |mut c: Caller<'_, T>, ctx: i32, index: i32, tensor: i32| -> i32 {
        call(&mut c, "set_input", |m, nn| set_input(m, nn, ctx as u32, index as u32, tensor as u32))
    })?;
    linker.func_wrap(MODULE, "compute", |mut c: Caller<'_, T>, ctx: i32| -> i32 {
        call(&mut c, "compute", |_, nn| compute(nn, ctx as u32))
    })?;
    linker.func_wrap(
        MODULE,
        "get_output",
        |mut c: Caller<'_, T>, ctx: i32, index: i32, buf: i32, max: i32, out: i32| -> i32 {
            call(&mut c, "get_output", |m, nn| {
                get_output(m, nn, ctx as u32, index as u32, buf as u32, max as u32, out as u32)
            })
        },
    )?;
    Ok(())
}
