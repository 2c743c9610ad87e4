//! wasi-nn: neural-network inference for jobs (see `docs/wasi-nn.md`).
//!
//! Guests call the wasi-nn preview 1 ABI (`wasi_ephemeral_nn`) with ONNX
//! graphs and the `cpu` or `gpu` execution target, in the job's mode (exact
//! or fast). The backends implement `wasmtime-wasi-nn`'s `BackendGraph` and
//! `BackendExecutionContext`; the witx glue that turns guest calls into
//! backend calls is Shoal's own ([`abi`]), because the crate's glue panics
//! the host on a bad guest pointer and drops every error's reason (see
//! `docs/wasi-nn.md`).
//!
//! - `abi.rs`: the six host functions, with every guest pointer and size
//!   checked before use and backend panics contained.
//! - `tract.rs`: the CPU backend of fast mode (tract, pure Rust).
//! - `graph/`: the ONNX graph as Shoal's own kernels see it, in stages:
//!   parse (and the op set), shapes, and lowering to a device-independent
//!   plan.
//! - `params.rs`: the kernels' parameters, declared once for the planner,
//!   the CPU kernels and (through `build.rs`) the WGSL ones.
//! - `context.rs`: the execution context of the backends that run plans.
//! - `exact/`: the CPU backend of exact mode (Shoal's own kernels).
//! - `vulkan/`: the GPU backend (vulkano compute, WGSL shaders compiled by
//!   `build.rs`, in an exact and a fast variant).
//!
//! Prepared graphs are cached per executor by model CID, target and mode, so a
//! warm node neither re-parses nor re-optimises a model it has run.

pub(crate) mod abi;
mod context;
pub(crate) mod exact;
pub(crate) mod graph;
pub(crate) mod params;
mod tract;

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_storage::{Cid, CidVersion};
use wasmtime_wasi_nn::backend::BackendError;
use wasmtime_wasi_nn::Graph;

/// Where a graph runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Target {
    /// The tract CPU backend.
    Cpu,
    /// The Vulkan GPU backend.
    Gpu,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Target::Cpu => "cpu",
            Target::Gpu => "gpu",
        })
    }
}

/// How inference computes (docs/wasi-nn.md, "Determinism across devices").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[non_exhaustive]
pub enum Mode {
    /// The default: Shoal's own kernels, one fixed sequence of correctly
    /// rounded operations per output, so the CPU and any conformant GPU
    /// give the same bits and redundant executions agree wherever they run.
    /// Models may use only the exact op set.
    #[default]
    Exact,
    /// tract on the CPU and the device's own arithmetic on the GPU: faster,
    /// any op tract runs on the CPU, but bits are reproducible only on the
    /// same backend, device and driver.
    Fast,
}

impl Mode {
    /// `exact` or `fast`, as specs and the command line spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Exact => "exact",
            Mode::Fast => "fast",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Per-job bounds on inference. Inference runs on the host, outside the
/// guest's fuel and memory limits, so it needs bounds of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NnLimits {
    /// Largest model (ONNX bytes) a job may load. Default: 64 MiB.
    pub model_bytes: u64,
    /// Largest tensor (input or output, in bytes) a job may pass or get,
    /// and the largest intermediate tensor a graph may produce on the GPU.
    /// Default: 64 MiB.
    pub tensor_bytes: u64,
    /// Most dimensions a tensor may have. Default: 8.
    pub tensor_rank: usize,
    /// Graphs a job may load (each load counts). Default: 16.
    pub graphs: usize,
    /// Execution contexts a job may create. Default: 64.
    pub contexts: usize,
    /// GPU memory one job's execution context may allocate (weights plus
    /// every intermediate tensor). Default: 512 MiB.
    pub gpu_memory: u64,
    /// Operations (multiply-adds for MatMul/Gemm/Conv, window elements for
    /// pooling, elements elsewhere) one GPU inference may plan. Work already
    /// submitted to a device cannot be stopped, so this bounds how long a
    /// compute can hold the device past the job's deadline. Default: 2^34
    /// (about 17 G: tens of seconds on lavapipe, well under a second on a
    /// GPU).
    pub gpu_work: u64,
    /// Bytes of tensors (weights and every intermediate, an upper bound on
    /// what tract holds at once) one CPU inference may plan; each
    /// intermediate is also bounded by `tensor_bytes`. Default: 1 GiB.
    pub cpu_memory: u64,
}

impl Default for NnLimits {
    fn default() -> Self {
        NnLimits {
            model_bytes: 64 << 20,
            tensor_bytes: 64 << 20,
            tensor_rank: 8,
            graphs: 16,
            contexts: 64,
            gpu_memory: 512 << 20,
            gpu_work: 1 << 34,
            cpu_memory: 1 << 30,
        }
    }
}

/// A model the task maps by name (`--model NAME=CID`), for `load_by_name`.
#[derive(Debug, Clone)]
pub struct NamedModel {
    /// The name the guest passes to `load_by_name`.
    pub name: String,
    /// The model's CID: the cache key.
    pub cid: Cid,
    /// The ONNX bytes.
    pub bytes: Arc<[u8]>,
}

/// What a job may do with wasi-nn.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct NnTask {
    /// Models for `load_by_name`.
    pub models: Vec<NamedModel>,
    /// The job asks for a GPU: it fails to start on a node without one, and
    /// its named models are prepared for the `gpu` target. Jobs without it
    /// may not use the `gpu` target (placement only sends `gpu` jobs to GPU
    /// nodes, so a guest must not depend on one it did not ask for).
    pub gpu: bool,
    /// Bounds.
    pub limits: NnLimits,
    /// Exact (the default) or fast inference.
    pub mode: Mode,
    /// Target `auto` (an exact job without `gpu`): `Some(true)` runs every
    /// graph on the GPU, `Some(false)` on the CPU, whatever target the
    /// guest names. `None`: the guest's target, as `gpu` allows.
    pub auto_gpu: Option<bool>,
}

/// A GPU a node can run jobs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuInfo {
    /// The device's name as the driver reports it.
    pub name: String,
    /// Device-local memory, in bytes (the largest device-local heap).
    pub memory_bytes: u64,
    /// A software rasteriser (lavapipe, SwiftShader): correct, not fast.
    pub software: bool,
    /// The driver and its version (`llvmpipe: Mesa 22.3.6 (LLVM 15.0.6)`):
    /// with the name, what `fast` GPU results are reproducible on.
    pub driver: String,
    /// Why the device cannot run exact inference (a missing property), or
    /// `None` when it can.
    pub exact_refused: Option<String>,
}

/// The GPU this node would use: a discrete GPU first, then an integrated
/// one, then (only with `allow_software`) a software device. `None` when
/// there is no Vulkan loader, no driver or no suitable device.
pub fn probe_gpu(allow_software: bool) -> Option<GpuInfo> {
    vulkan::probe(allow_software).ok()
}

/// Why a wasi-nn call failed. Each maps to a wasi-nn error code; the text
/// goes to the job's stderr so that the guest's author sees the reason.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NnError {
    /// A bad handle, pointer, size or argument.
    #[error("{0}")]
    InvalidArgument(String),
    /// Not an ONNX graph.
    #[error("{0}")]
    InvalidEncoding(String),
    /// A limit was crossed.
    #[error("{0}")]
    TooLarge(String),
    /// `load_by_name` of a name the task does not map.
    #[error("{0}")]
    NotFound(String),
    /// An operator, tensor type or target this node cannot run.
    #[error("{0}")]
    Unsupported(String),
    /// The backend failed.
    #[error("{0}")]
    Runtime(String),
}

impl NnError {
    /// The wasi-nn `nn_errno`.
    pub(crate) fn errno(&self) -> i32 {
        match self {
            NnError::InvalidArgument(_) => 1,
            NnError::InvalidEncoding(_) => 2,
            NnError::Runtime(_) => 5,
            NnError::Unsupported(_) => 6,
            NnError::TooLarge(_) => 7,
            NnError::NotFound(_) => 8,
        }
    }
}

/// Backend errors carry an `anyhow`-style chain: keep all of it.
pub(crate) fn from_backend(e: BackendError) -> NnError {
    match e {
        BackendError::BackendAccess(e) => {
            let msg = format!("{e:#}");
            // Our backends mark refusals (limits, unsupported ops) with a
            // typed error inside the chain.
            match e.downcast::<NnError>() {
                Ok(nn) => nn,
                Err(_) => NnError::Runtime(msg),
            }
        }
        other => NnError::Runtime(other.to_string()),
    }
}

/// Wraps an [`NnError`] for a backend trait's result.
pub(crate) fn to_backend(e: NnError) -> BackendError {
    BackendError::BackendAccess(wasmtime::Error::new(e))
}

/// Executor-wide wasi-nn state: the GPU and the prepared-graph cache.
pub(crate) struct Shared {
    gpu: vulkan::Lazy,
    cache: Mutex<Vec<(GraphKey, Graph)>>,
    cache_entries: usize,
}

/// A prepared graph is specific to its model, target and mode.
type GraphKey = (Cid, Target, Mode);

impl Shared {
    pub(crate) fn new(allow_software_gpu: bool, cache_entries: usize) -> Self {
        Shared {
            gpu: vulkan::Lazy::new(allow_software_gpu),
            cache: Mutex::new(Vec::new()),
            cache_entries: cache_entries.max(1),
        }
    }

    /// The GPU this executor uses, starting it on first use.
    pub(crate) fn gpu(&self) -> Result<GpuInfo, String> {
        self.gpu.get().map(|g| g.info().clone())
    }

    /// The prepared graph for `bytes` (named `cid`) on `target` in `mode`,
    /// from the cache or freshly loaded.
    fn graph(&self, cid: &Cid, bytes: &[u8], target: Target, mode: Mode) -> Result<Graph, NnError> {
        let key = (*cid, target, mode);
        {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(i) = cache.iter().position(|(k, _)| *k == key) {
                // Most recently used last.
                let entry = cache.remove(i);
                let g = entry.1.clone();
                cache.push(entry);
                return Ok(g);
            }
        }
        let graph = self.load(bytes, target, mode).map_err(from_backend)?;
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= self.cache_entries {
            cache.remove(0);
        }
        cache.push((key, graph.clone()));
        Ok(graph)
    }

    /// Shoal's ONNX backends, chosen by target and mode: exact, Shoal's own
    /// kernels on the CPU or the GPU; fast, tract on the CPU and the GPU
    /// kernels with the device's own arithmetic.
    fn load(&self, bytes: &[u8], target: Target, mode: Mode) -> Result<Graph, BackendError> {
        match (target, mode) {
            (Target::Cpu, Mode::Exact) => exact::load(bytes),
            (Target::Cpu, Mode::Fast) => tract::load(bytes),
            (Target::Gpu, mode) => {
                let gpu = self.gpu.get().map_err(|e| to_backend(NnError::Unsupported(e)))?;
                vulkan::load(gpu, bytes, mode)
            }
        }
    }
}

/// The content address of model bytes a guest passed to `load`: a CIDv1
/// (raw, sha2-256), so it keys the same cache as named models.
pub(crate) fn bytes_cid(bytes: &[u8]) -> Cid {
    *shoal_storage::Block::new(CidVersion::V1, shoal_storage::block::RAW, bytes.to_vec()).cid()
}

/// The job a backend call is made for. Graphs are cached across jobs, so
/// per-job bounds (tensor sizes, GPU memory, time) cannot live in them: the
/// ABI layer sets this around each call, on the job's own thread.
#[derive(Debug, Clone)]
pub(crate) struct Scope {
    pub(crate) limits: NnLimits,
    /// GPU memory this job holds now, in bytes.
    pub(crate) gpu_used: Arc<AtomicU64>,
    pub(crate) deadline: Option<Instant>,
}

thread_local! {
    static SCOPE: RefCell<Option<Scope>> = const { RefCell::new(None) };
}

/// Runs `f` with `scope` as the current job.
pub(crate) fn with_scope<R>(scope: Scope, f: impl FnOnce() -> R) -> R {
    struct Reset(Option<Scope>);
    impl Drop for Reset {
        fn drop(&mut self) {
            let prev = self.0.take();
            SCOPE.with(|s| *s.borrow_mut() = prev);
        }
    }
    let prev = SCOPE.with(|s| s.borrow_mut().replace(scope));
    let _reset = Reset(prev);
    f()
}

/// The current job's scope; outside a job (native use, benchmarks), the
/// default limits and no deadline.
pub(crate) fn scope() -> Scope {
    SCOPE.with(|s| s.borrow().clone()).unwrap_or_else(|| Scope {
        limits: NnLimits::default(),
        gpu_used: Arc::new(AtomicU64::new(0)),
        deadline: None,
    })
}

impl Scope {
    /// Time left for this call's device work (at least 1 ms, so that an
    /// expired job still gets a clean error rather than a zero wait).
    pub(crate) fn time_left(&self) -> Duration {
        self.deadline
            .map_or(Duration::from_secs(3600), |d| d.saturating_duration_since(Instant::now()))
            .max(Duration::from_millis(1))
    }

    /// Reserves `bytes` of the job's GPU memory budget.
    pub(crate) fn reserve_gpu(&self, bytes: u64) -> Result<GpuReservation, NnError> {
        let before = self.gpu_used.fetch_add(bytes, Ordering::SeqCst);
        if before.saturating_add(bytes) > self.limits.gpu_memory {
            self.gpu_used.fetch_sub(bytes, Ordering::SeqCst);
            return Err(NnError::TooLarge(format!(
                "the job would hold {} bytes of GPU memory, more than its limit of {}",
                before.saturating_add(bytes),
                self.limits.gpu_memory
            )));
        }
        Ok(GpuReservation { used: self.gpu_used.clone(), bytes })
    }
}

/// GPU memory held by a job; given back when dropped.
#[derive(Debug)]
pub(crate) struct GpuReservation {
    used: Arc<AtomicU64>,
    bytes: u64,
}

impl Drop for GpuReservation {
    fn drop(&mut self) {
        self.used.fetch_sub(self.bytes, Ordering::SeqCst);
    }
}

/// Per-job wasi-nn state (in the job's store).
pub(crate) struct JobNn {
    pub(crate) shared: Arc<Shared>,
    pub(crate) task: Arc<NnTask>,
    pub(crate) graphs: Vec<(Graph, Target)>,
    pub(crate) contexts: Vec<Option<wasmtime_wasi_nn::ExecutionContext>>,
    /// Devices that ran this job's graphs, for the execution metadata.
    pub(crate) devices: BTreeSet<String>,
    /// Where call failures are explained (the job's stderr).
    pub(crate) diagnostics: Option<crate::capture::CappedPipe>,
    pub(crate) gpu_used: Arc<AtomicU64>,
}

impl JobNn {
    pub(crate) fn new(shared: Arc<Shared>, task: Arc<NnTask>, diagnostics: Option<crate::capture::CappedPipe>) -> Self {
        JobNn {
            shared,
            task,
            graphs: Vec::new(),
            contexts: Vec::new(),
            devices: BTreeSet::new(),
            diagnostics,
            gpu_used: Arc::new(AtomicU64::new(0)),
        }
    }

    pub(crate) fn scope(&self, deadline: Option<Instant>) -> Scope {
        Scope { limits: self.task.limits.clone(), gpu_used: self.gpu_used.clone(), deadline }
    }

    fn device_name(&self, target: Target) -> String {
        let mode = self.task.mode;
        match (target, mode) {
            (Target::Cpu, Mode::Exact) => "cpu: exact".to_string(),
            (Target::Cpu, _) => "cpu: tract 0.23.9 (fast)".to_string(),
            (Target::Gpu, mode) => match self.shared.gpu() {
                Ok(g) => {
                    format!("gpu: {}{} [{}] ({mode})", g.name, if g.software { " (software)" } else { "" }, g.driver)
                }
                Err(_) => format!("gpu ({mode})"),
            },
        }
    }
}

pub(crate) mod vulkan;

/// Runs ONNX models outside any job, through the same backends, cache and
/// default limits as jobs: for tests, benchmarks and tools.
pub struct Session {
    shared: Shared,
}

impl Session {
    /// A session; `allow_software_gpu` as [`Config::allow_software_gpu`](crate::Config).
    pub fn new(allow_software_gpu: bool) -> Session {
        Session { shared: Shared::new(allow_software_gpu, 16) }
    }

    /// The GPU the `gpu` target uses, or why there is none.
    pub fn gpu(&self) -> Result<GpuInfo, String> {
        self.shared.gpu()
    }

    /// Loads (or finds in the cache) `bytes` for `target`, in exact mode
    /// (the default for jobs).
    pub fn load(&self, bytes: &[u8], target: Target) -> Result<Model, NnError> {
        self.load_mode(bytes, target, Mode::Exact)
    }

    /// Loads (or finds in the cache) `bytes` for `target` in `mode`.
    pub fn load_mode(&self, bytes: &[u8], target: Target, mode: Mode) -> Result<Model, NnError> {
        let graph = self.shared.graph(&bytes_cid(bytes), bytes, target, mode)?;
        let ctx = graph.init_execution_context().map_err(from_backend)?;
        Ok(Model { ctx })
    }
}

/// A tensor as [`Model::run`] returns it: shape and f32 values.
pub type Values = (Vec<usize>, Vec<f32>);

/// A loaded model with its execution context.
pub struct Model {
    ctx: wasmtime_wasi_nn::ExecutionContext,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Model(..)")
    }
}

impl Model {
    /// Runs the model on f32 inputs (shape, values), returning every output
    /// as (shape, values).
    pub fn run(&mut self, inputs: &[(&[usize], &[f32])]) -> Result<Vec<Values>, NnError> {
        use wasmtime_wasi_nn::backend::Id;
        use wasmtime_wasi_nn::wit::TensorType;
        for (i, (shape, values)) in inputs.iter().enumerate() {
            let mut data = Vec::with_capacity(values.len() * 4);
            for v in *values {
                data.extend_from_slice(&v.to_le_bytes());
            }
            let dimensions = shape
                .iter()
                .map(|d| u32::try_from(*d))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| NnError::TooLarge(format!("input {i}: a dimension beyond 2^32")))?;
            let t = wasmtime_wasi_nn::Tensor { dimensions, ty: TensorType::Fp32, data };
            self.ctx.set_input(Id::Index(i as u32), &t).map_err(from_backend)?;
        }
        self.ctx.compute().map_err(from_backend)?;
        let mut outs = Vec::new();
        for i in 0.. {
            match self.ctx.get_output(Id::Index(i)) {
                Ok(t) => outs.push((
                    t.dimensions.iter().map(|d| *d as usize).collect(),
                    t.data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
                )),
                Err(_) if i > 0 => break,
                Err(e) => return Err(from_backend(e)),
            }
        }
        Ok(outs)
    }
}
