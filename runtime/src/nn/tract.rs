//! The CPU backend: tract, a pure-Rust ONNX engine (no system library, no
//! network, the same on every node that has the same CPU features).
//!
//! ONNX models usually leave the batch dimension symbolic. tract optimises
//! best for concrete shapes, so a graph keeps the parsed model and makes one
//! optimised plan per distinct set of input shapes, cached in the graph
//! (a batch loop over one shape pays for optimisation once).

use std::sync::{Arc, Mutex};

use tract_onnx::prelude::*;
use wasmtime_wasi_nn::backend::{BackendError, BackendExecutionContext, BackendGraph, Id, NamedTensor};
use wasmtime_wasi_nn::wit::TensorType;
use wasmtime_wasi_nn::{ExecutionContext, Graph};

use super::{to_backend, NnError};

/// Plans kept per graph (one per distinct input shape set). A guest that
/// cycles through more shapes only pays re-optimisation.
const PLANS_PER_GRAPH: usize = 8;

type Plan = Arc<TypedRunnableModel>;

/// Parses and checks an ONNX model for the CPU.
pub(super) fn load(bytes: &[u8]) -> Result<Graph, BackendError> {
    let model = tract_onnx::onnx()
        .model_for_read(&mut &bytes[..])
        .map_err(|e| to_backend(NnError::InvalidArgument(format!("cannot read the ONNX model: {e:#}"))))?;
    // Type-check once now, so that a model tract cannot run is refused at
    // load rather than at the first compute.
    model
        .clone()
        .into_typed()
        .map_err(|e| to_backend(NnError::Unsupported(format!("the CPU backend cannot run this model: {e:#}"))))?;
    let inputs = model.inputs.len();
    let outputs = model.outputs.len();
    let g: Box<dyn BackendGraph> =
        Box::new(TractGraph { inner: Arc::new(Inner { model, plans: Mutex::new(Vec::new()) }), inputs, outputs });
    Ok(g.into())
}

struct Inner {
    model: InferenceModel,
    plans: Mutex<Vec<(Vec<Vec<usize>>, Plan)>>,
}

impl Inner {
    fn plan(&self, shapes: &[Vec<usize>]) -> Result<Plan, NnError> {
        {
            let plans = self.plans.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((_, p)) = plans.iter().find(|(s, _)| s == shapes) {
                return Ok(p.clone());
            }
        }
        let mut model = self.model.clone();
        for (i, shape) in shapes.iter().enumerate() {
            model = model
                .with_input_fact(i, f32::fact(shape).into())
                .map_err(|e| NnError::InvalidArgument(format!("input {i} cannot have shape {shape:?}: {e:#}")))?;
        }
        let cannot = |e: TractError| {
            NnError::InvalidArgument(format!("the model cannot run on inputs of shapes {shapes:?}: {e:#}"))
        };
        let optimized = model.into_optimized().map_err(cannot)?;
        check_memory(&optimized, &super::scope().limits)?;
        let plan = optimized.into_runnable().map_err(cannot)?;
        let mut plans = self.plans.lock().unwrap_or_else(|p| p.into_inner());
        if plans.len() >= PLANS_PER_GRAPH {
            plans.remove(0);
        }
        plans.push((shapes.to_vec(), plan.clone()));
        Ok(plan)
    }
}

/// Refuses a plan whose tensors exceed the job's bounds before tract
/// allocates them: a small input can ask a crafted model for huge
/// intermediates, and host memory is the node's, not the job's.
fn check_memory(model: &TypedModel, limits: &super::NnLimits) -> Result<(), NnError> {
    let mut total: u128 = 0;
    for node in model.nodes() {
        for (i, o) in node.outputs.iter().enumerate() {
            let shape = o.fact.shape.as_concrete().ok_or_else(|| {
                NnError::Unsupported(format!(
                    "node {} output {i} has a symbolic shape after shapes were fixed",
                    node.name
                ))
            })?;
            let bytes = shape.iter().map(|d| *d as u128).product::<u128>() * o.fact.datum_type.size_of() as u128;
            if o.fact.konst.is_none() && bytes > limits.tensor_bytes as u128 {
                return Err(NnError::TooLarge(format!(
                    "node {} would produce a tensor of shape {shape:?} ({bytes} bytes), more than the job's tensor limit of {}",
                    node.name, limits.tensor_bytes
                )));
            }
            total += bytes;
        }
    }
    if total > limits.cpu_memory as u128 {
        return Err(NnError::TooLarge(format!(
            "one inference would use up to {total} bytes of tensors, more than the job's CPU inference memory limit of {}",
            limits.cpu_memory
        )));
    }
    Ok(())
}

struct TractGraph {
    inner: Arc<Inner>,
    inputs: usize,
    outputs: usize,
}

impl BackendGraph for TractGraph {
    fn init_execution_context(&self) -> Result<ExecutionContext, BackendError> {
        let ctx: Box<dyn BackendExecutionContext> = Box::new(TractContext {
            inner: self.inner.clone(),
            inputs: vec![None; self.inputs],
            state: None,
            outputs: Vec::new(),
            n_outputs: self.outputs,
        });
        Ok(ctx.into())
    }
}

struct TractContext {
    inner: Arc<Inner>,
    inputs: Vec<Option<Tensor>>,
    /// The running state for the current input shapes, kept across
    /// computes: a batch loop reuses its buffers instead of re-allocating
    /// them per batch. (A tract state is `Send` but not `Sync`; the mutex
    /// is only ever reached through `&mut self`, so it never blocks.)
    state: Option<(Vec<Vec<usize>>, Mutex<TypedSimpleState>)>,
    outputs: Vec<Tensor>,
    n_outputs: usize,
}

fn index(id: &Id, n: usize, what: &str) -> Result<usize, NnError> {
    match id {
        Id::Index(i) if (*i as usize) < n => Ok(*i as usize),
        Id::Index(i) => Err(NnError::InvalidArgument(format!("{what} index {i} is out of range: the model has {n}"))),
        Id::Name(n) => Err(NnError::InvalidArgument(format!("{what}s are addressed by index, not by name ({n:?})"))),
    }
}

impl BackendExecutionContext for TractContext {
    fn set_input(&mut self, id: Id, tensor: &wasmtime_wasi_nn::Tensor) -> Result<(), BackendError> {
        let i = index(&id, self.inputs.len(), "input").map_err(to_backend)?;
        let t = to_tract(tensor).map_err(to_backend)?;
        self.inputs[i] = Some(t);
        Ok(())
    }

    fn compute(&mut self, inputs: Option<Vec<NamedTensor>>) -> Result<Option<Vec<NamedTensor>>, BackendError> {
        if inputs.is_some() {
            return Err(to_backend(NnError::Unsupported("named inputs (wasi-nn over WIT) are not supported".into())));
        }
        let mut values = TVec::new();
        let mut shapes = Vec::with_capacity(self.inputs.len());
        for (i, t) in self.inputs.iter().enumerate() {
            let t = t.as_ref().ok_or_else(|| to_backend(NnError::InvalidArgument(format!("input {i} is not set"))))?;
            shapes.push(t.shape().to_vec());
            values.push(t.clone().into_tvalue());
        }
        if self.state.as_ref().is_none_or(|(s, _)| *s != shapes) {
            let plan = self.inner.plan(&shapes).map_err(to_backend)?;
            let state =
                plan.spawn().map_err(|e| to_backend(NnError::Runtime(format!("cannot start the CPU plan: {e:#}"))))?;
            self.state = Some((shapes, Mutex::new(state)));
        }
        let Some((_, state)) = self.state.as_mut() else {
            return Err(to_backend(NnError::Runtime("no CPU plan".into())));
        };
        let out = state
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .run(values)
            .map_err(|e| to_backend(NnError::Runtime(format!("inference failed on the CPU: {e:#}"))))?;
        self.outputs = out.into_iter().map(|v| v.into_tensor()).collect();
        Ok(None)
    }

    fn get_output(&mut self, id: Id) -> Result<wasmtime_wasi_nn::Tensor, BackendError> {
        let i = index(&id, self.n_outputs, "output").map_err(to_backend)?;
        let t = self
            .outputs
            .get(i)
            .ok_or_else(|| to_backend(NnError::InvalidArgument("no outputs yet: call compute first".into())))?;
        from_tract(t).map_err(to_backend)
    }
}

/// A wasi-nn tensor (f32, little-endian) as a tract tensor. Sizes were
/// checked by the ABI layer; this only converts.
fn to_tract(t: &wasmtime_wasi_nn::Tensor) -> Result<Tensor, NnError> {
    if t.ty != TensorType::Fp32 {
        return Err(NnError::Unsupported(format!("tensor type {:?}: only f32 tensors are supported", t.ty)));
    }
    let shape: Vec<usize> = t.dimensions.iter().map(|d| *d as usize).collect();
    if shape.iter().try_fold(4usize, |a, d| a.checked_mul(*d)) != Some(t.data.len()) {
        return Err(NnError::InvalidArgument("tensor data does not match its shape".into()));
    }
    let bad = |e: TractError| NnError::InvalidArgument(format!("bad tensor: {e:#}"));
    if cfg!(target_endian = "little") {
        // SAFETY: every bit pattern is a valid f32, the length was checked
        // against the shape just above, and wasi-nn's little-endian bytes
        // are the host's own order here. One copy instead of two.
        unsafe { Tensor::from_raw::<f32>(&shape, &t.data) }.map_err(bad)
    } else {
        let values: Vec<f32> = t.data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        Tensor::from_shape(&shape, &values).map_err(bad)
    }
}

fn from_tract(t: &Tensor) -> Result<wasmtime_wasi_nn::Tensor, NnError> {
    let t = t
        .cast_to::<f32>()
        .map_err(|e| NnError::Unsupported(format!("output tensor of type {:?}: {e:#}", t.datum_type())))?;
    let values = t.to_plain_array_view::<f32>().map_err(|e| NnError::Runtime(format!("{e:#}")))?;
    let mut data = Vec::with_capacity(values.len() * 4);
    for v in values.iter() {
        data.extend_from_slice(&v.to_le_bytes());
    }
    Ok(wasmtime_wasi_nn::Tensor {
        dimensions: t.shape().iter().map(|d| *d as u32).collect(),
        ty: TensorType::Fp32,
        data,
    })
}
