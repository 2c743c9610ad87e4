//! The execution context both of Shoal's plan-running backends share (the
//! exact CPU backend and the GPU): inputs are set by index, a plan is made
//! (and kept while the input shapes stay the same, so a batch loop uploads
//! weights once), and outputs are read by index. What differs, preparing
//! and running a plan, is a [`Runner`].

use std::sync::Arc;

use wasmtime_wasi_nn::backend::{BackendError, BackendExecutionContext, BackendGraph, Id, NamedTensor};
use wasmtime_wasi_nn::wit::TensorType;
use wasmtime_wasi_nn::{ExecutionContext, Graph};

use super::graph::{OnnxGraph, Plan};
use super::{to_backend, NnError, Scope, Values};

/// Prepares and runs plans on one device.
pub(crate) trait Runner: Send + Sync + 'static {
    /// A plan ready to run (its memory allocated, its weights in place).
    type Loaded: Send + Sync;
    /// Plans `graph` for inputs of `shapes` within the job's bounds.
    fn load(&self, graph: &OnnxGraph, shapes: &[Vec<usize>], scope: &Scope) -> Result<Self::Loaded, NnError>;
    /// The plan of a loaded one.
    fn plan(loaded: &Self::Loaded) -> &Plan;
    /// Runs a loaded plan on `inputs`, returning every output's values.
    fn run(&self, loaded: &mut Self::Loaded, inputs: &[&[f32]], scope: &Scope) -> Result<Vec<Vec<f32>>, NnError>;
}

/// A parsed graph for `runner`, as a wasi-nn graph.
pub(crate) fn graph<R: Runner>(runner: R, graph: OnnxGraph) -> Graph {
    let g: Box<dyn BackendGraph> = Box::new(PlanGraph { runner: Arc::new(runner), graph: Arc::new(graph) });
    g.into()
}

struct PlanGraph<R> {
    runner: Arc<R>,
    graph: Arc<OnnxGraph>,
}

impl<R: Runner> BackendGraph for PlanGraph<R> {
    fn init_execution_context(&self) -> Result<ExecutionContext, BackendError> {
        let ctx: Box<dyn BackendExecutionContext> = Box::new(PlanContext {
            runner: self.runner.clone(),
            graph: self.graph.clone(),
            inputs: vec![None; self.graph.inputs.len()],
            loaded: None,
            outputs: Vec::new(),
        });
        Ok(ctx.into())
    }
}

struct PlanContext<R: Runner> {
    runner: Arc<R>,
    graph: Arc<OnnxGraph>,
    inputs: Vec<Option<Values>>,
    /// The input shapes the loaded plan is for, and the plan.
    loaded: Option<(Vec<Vec<usize>>, R::Loaded)>,
    outputs: Vec<Values>,
}

impl<R: Runner> PlanContext<R> {
    fn compute_inner(&mut self) -> Result<(), NnError> {
        let scope = super::scope();
        let mut shapes = Vec::with_capacity(self.inputs.len());
        let mut data = Vec::with_capacity(self.inputs.len());
        for (i, t) in self.inputs.iter().enumerate() {
            let (s, d) = t.as_ref().ok_or_else(|| NnError::InvalidArgument(format!("input {i} is not set")))?;
            shapes.push(s.clone());
            data.push(d.as_slice());
        }
        if self.loaded.as_ref().is_none_or(|(s, _)| *s != shapes) {
            // Free the old plan's memory before allocating the new one.
            self.loaded = None;
            let loaded = self.runner.load(&self.graph, &shapes, &scope)?;
            self.loaded = Some((shapes, loaded));
        }
        let Some((_, loaded)) = &mut self.loaded else { return Err(NnError::Runtime("no plan".into())) };
        let outs = self.runner.run(loaded, &data, &scope)?;
        self.outputs = R::plan(loaded).outputs.iter().map(|(_, s)| s.clone()).zip(outs).collect();
        Ok(())
    }
}

impl<R: Runner> BackendExecutionContext for PlanContext<R> {
    fn set_input(&mut self, id: Id, tensor: &wasmtime_wasi_nn::Tensor) -> Result<(), BackendError> {
        let (i, t) = decode_input(&id, self.inputs.len(), tensor).map_err(to_backend)?;
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
        encode_output(&id, self.graph.outputs.len(), &self.outputs).map_err(to_backend)
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
fn decode_input(id: &Id, n: usize, tensor: &wasmtime_wasi_nn::Tensor) -> Result<(usize, Values), NnError> {
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
fn encode_output(id: &Id, n: usize, outputs: &[(Vec<usize>, Vec<f32>)]) -> Result<wasmtime_wasi_nn::Tensor, NnError> {
    let i = index(id, n, "output")?;
    let (shape, values) =
        outputs.get(i).ok_or_else(|| NnError::InvalidArgument("no outputs yet: call compute first".into()))?;
    let mut data = Vec::with_capacity(values.len() * 4);
    for v in values {
        data.extend_from_slice(&v.to_le_bytes());
    }
    Ok(wasmtime_wasi_nn::Tensor { dimensions: shape.iter().map(|d| *d as u32).collect(), ty: TensorType::Fp32, data })
}
