//! The job spec: what to run, where it may run, and how results are
//! agreed. Parsed from YAML or JSON ([`Spec::from_yaml_or_json`]), checked
//! by [`Spec::validate`], stored as JSON. `docs/job-spec.md` is the
//! reference for every field and default.
//!
//! Sizes accept a number of bytes or a string with a unit (`512MiB`,
//! `1.5GB`); durations a string (`60s`, `2m`, `1h 30m`) or a number of
//! seconds. Unknown fields are refused, naming the field, so that a typo
//! does not silently fall back to a default.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use shoal_storage::Cid;

use crate::constraint::Constraint;

/// Largest spec text accepted.
pub const MAX_SPEC_BYTES: usize = 1 << 20;
/// Most arguments.
pub const MAX_ARGS: usize = 1024;
/// Most environment variables.
pub const MAX_ENV: usize = 1024;
/// Most inputs.
pub const MAX_INPUTS: usize = 256;
/// Most constraints.
pub const MAX_CONSTRAINTS: usize = 64;
/// Most executions of one job (`redundancy.count`, and separately
/// `redundancy.max_extra`).
pub const MAX_REDUNDANCY: u32 = 16;
/// Most retries.
pub const MAX_RETRIES: u32 = 16;
/// Longest of any timeout.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);
/// Largest `task.limits.memory`: a wasm32 memory addresses 4 GiB, and a
/// larger limit would be cut to this without a word.
pub const MAX_MEMORY: u64 = 4 << 30;

/// Why a spec was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The text is not a spec (syntax, types, unknown or missing fields).
    #[error("invalid job spec: {0}")]
    Parse(String),
    /// The text is larger than [`MAX_SPEC_BYTES`].
    #[error("the job spec is {0} bytes; the most accepted is {MAX_SPEC_BYTES}")]
    TooLarge(usize),
    /// A field has a value out of its range.
    #[error("invalid job spec: {field}: {message}")]
    Invalid {
        /// Dotted path of the field (`redundancy.quorum`).
        field: String,
        /// What is wrong and what is allowed.
        message: String,
    },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> Error {
    Error::Invalid { field: field.into(), message: message.into() }
}

/// A byte count; deserialises from a number or a string with a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Whole units print without decimals ("512 MiB", not "512.0 MiB").
        for (unit, name) in [(1u64 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")] {
            if self.0 >= unit && self.0.is_multiple_of(unit) {
                return write!(f, "{} {name}", self.0 / unit);
            }
        }
        write!(f, "{}", bytesize::ByteSize(self.0).display().iec())
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        let raw = Raw::deserialize(d)
            .map_err(|_| serde::de::Error::custom("expected a size: a number of bytes or a string like \"512MiB\""))?;
        match raw {
            Raw::N(n) => Ok(Bytes(n)),
            Raw::S(s) => s.trim().parse::<bytesize::ByteSize>().map(|b| Bytes(b.0)).map_err(|e| {
                serde::de::Error::custom(format!("invalid size {s:?} ({e}); use bytes or a unit like \"512MiB\""))
            }),
        }
    }
}

/// Durations as humantime strings ("1m 30s") or numbers of seconds.
mod duration {
    use super::*;

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        let raw = Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom("expected a duration: a number of seconds or a string like \"60s\" or \"2m\"")
        })?;
        match raw {
            Raw::N(n) => Ok(Duration::from_secs(n)),
            Raw::S(s) => humantime::parse_duration(s.trim()).map_err(|e| {
                serde::de::Error::custom(format!(
                    "invalid duration {s:?} ({}); use a unit like \"60s\" or \"2m\"",
                    e.to_string().to_lowercase()
                ))
            }),
        }
    }
}

/// A whole job spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// What to run.
    pub task: Task,
    /// Conditions on node labels; all must hold.
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    pub constraints: Vec<Constraint>,
    /// What a node must have free to take the job.
    #[serde(default)]
    pub resources: Resources,
    /// How many nodes run it and how many must agree.
    #[serde(default)]
    pub redundancy: Redundancy,
    /// How long each phase may take.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Executions that fail or are lost which are replaced before the job
    /// fails. Default 2.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// wasi-nn inference settings. Left out when every one is its default,
    /// so that specs from before it existed keep their ids.
    #[serde(default, skip_serializing_if = "Nn::is_default")]
    pub nn: Nn,
}

fn default_retries() -> u32 {
    2
}

/// The task: a Wasm module, how to enter it and what it sees.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Task {
    /// The module's CID.
    #[serde(with = "crate::serde_util::cid")]
    #[schema(value_type = String)]
    pub module: Cid,
    /// The command export to run. Default `_start`.
    #[serde(default = "default_entrypoint")]
    pub entrypoint: String,
    /// A reactor export to call instead (after `_initialize`).
    #[serde(default)]
    pub invoke: Option<String>,
    /// argv[1..].
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment (nothing is inherited).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Read-only inputs.
    #[serde(default)]
    pub inputs: Vec<Input>,
    /// Runtime limits.
    #[serde(default)]
    pub limits: Limits,
    /// Real clocks and randomness instead of deterministic ones.
    #[serde(default)]
    pub nondeterministic: bool,
    /// ONNX models for wasi-nn's `load_by_name`: name → CID of the file.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty", with = "crate::serde_util::cid_map")]
    #[schema(value_type = BTreeMap<String, String>)]
    pub models: BTreeMap<String, Cid>,
}

fn default_entrypoint() -> String {
    "_start".into()
}

/// One input: data by CID (and a path inside it), mounted read-only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// Root CID of the data.
    #[serde(with = "crate::serde_util::cid")]
    #[schema(value_type = String)]
    pub cid: Cid,
    /// A path inside `cid` (`sub/dir`); absent: the root itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Absolute guest path to mount it at.
    pub mount: String,
}

impl Input {
    /// The path inside the CID as segments.
    pub fn segments(&self) -> Vec<String> {
        self.path.iter().flat_map(|p| p.split('/')).filter(|s| !s.is_empty()).map(str::to_string).collect()
    }
}

/// Runtime limits of each execution (the runtime's `Limits`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Linear memory. Default 512 MiB.
    #[serde(default = "default_memory")]
    #[schema(value_type = u64)]
    pub memory: Bytes,
    /// Wall-clock budget. Default 60 s.
    #[serde(default = "default_timeout", with = "duration")]
    #[schema(value_type = String)]
    pub timeout: Duration,
    /// CPU budget in fuel units; null: the runtime's default.
    #[serde(default)]
    pub fuel: Option<u64>,
    /// Total bytes of input content. Default 8 GiB.
    #[serde(default = "default_max_input")]
    #[schema(value_type = u64)]
    pub max_input: Bytes,
    /// Bytes of stdout kept. Default 1 MiB.
    #[serde(default = "default_stream")]
    #[schema(value_type = u64)]
    pub stdout: Bytes,
    /// Bytes of stderr kept. Default 1 MiB.
    #[serde(default = "default_stream")]
    #[schema(value_type = u64)]
    pub stderr: Bytes,
}

fn default_memory() -> Bytes {
    Bytes(512 << 20)
}
fn default_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_max_input() -> Bytes {
    Bytes(8 << 30)
}
fn default_stream() -> Bytes {
    Bytes(1 << 20)
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            memory: default_memory(),
            timeout: default_timeout(),
            fuel: None,
            max_input: default_max_input(),
            stdout: default_stream(),
            stderr: default_stream(),
        }
    }
}

/// What a node must have free to take the job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Memory the node offers to jobs. Default 256 MiB.
    #[serde(default = "default_resource_memory")]
    #[schema(value_type = u64)]
    pub memory: Bytes,
    /// Job slots. Default 1.
    #[serde(default = "default_slots")]
    pub slots: u32,
    /// Needs a GPU (hardware or software). Default false.
    #[serde(default)]
    pub gpu: bool,
}

fn default_resource_memory() -> Bytes {
    Bytes(256 << 20)
}
fn default_slots() -> u32 {
    1
}

impl Default for Resources {
    fn default() -> Resources {
        Resources { memory: default_resource_memory(), slots: default_slots(), gpu: false }
    }
}

/// How many nodes run the job and how many must agree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Redundancy {
    /// Nodes that run it. Default 1.
    #[serde(default = "default_count")]
    pub count: u32,
    /// Matching results needed; null: a majority, count/2 + 1.
    #[serde(default)]
    pub quorum: Option<u32>,
    /// Extra executions allowed to settle a disagreement. Default 0.
    #[serde(default)]
    pub max_extra: u32,
}

fn default_count() -> u32 {
    1
}

impl Default for Redundancy {
    fn default() -> Redundancy {
        Redundancy { count: 1, quorum: None, max_extra: 0 }
    }
}

/// wasi-nn inference settings (`docs/wasi-nn.md`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Nn {
    /// Exact (the default) or fast inference.
    #[serde(default, skip_serializing_if = "NnMode::is_exact")]
    pub mode: NnMode,
    /// Which device the guest's graphs run on. Default `job`.
    #[serde(default, skip_serializing_if = "NnTarget::is_job")]
    pub target: NnTarget,
}

impl Nn {
    /// Every field at its default.
    pub fn is_default(&self) -> bool {
        *self == Nn::default()
    }

    /// Why these settings cannot go with `gpu` (`resources.gpu`), if so:
    /// target auto needs exact mode (only there do the CPU's and a GPU's
    /// results agree) and no GPU requirement (it runs on any node).
    pub fn check(&self, gpu: bool) -> Result<(), &'static str> {
        if self.target == NnTarget::Auto {
            if self.mode != NnMode::Exact {
                return Err("auto needs nn.mode: exact (fast results differ between the cpu and a gpu); drop one");
            }
            if gpu {
                return Err("auto runs on any node, cpu or gpu; it cannot be used with resources.gpu: true (drop one)");
            }
        }
        Ok(())
    }
}

/// How inference computes (the runtime's `nn::Mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NnMode {
    /// Bit-identical results on the CPU and on every GPU that can run it:
    /// redundant executions agree whatever device each node has.
    #[default]
    Exact,
    /// The backends' own arithmetic: faster, reproducible only on the same
    /// backend, device model and driver.
    Fast,
}

impl NnMode {
    /// `exact` or `fast`.
    pub fn as_str(self) -> &'static str {
        match self {
            NnMode::Exact => "exact",
            NnMode::Fast => "fast",
        }
    }

    fn is_exact(&self) -> bool {
        *self == NnMode::Exact
    }
}

impl fmt::Display for NnMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for NnMode {
    type Err = String;
    fn from_str(s: &str) -> Result<NnMode, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "exact" => Ok(NnMode::Exact),
            "fast" => Ok(NnMode::Fast),
            other => Err(format!("unknown wasi-nn mode {other:?}; use exact or fast")),
        }
    }
}

/// Which device the guest's graphs run on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NnTarget {
    /// What the job asks for: the GPU with `resources.gpu`, else the CPU
    /// (the target a guest names must match).
    #[default]
    Job,
    /// The node's GPU if it announces one that runs exact inference, else
    /// its CPU, whatever target the guest names. Exact mode only (only
    /// there do CPU and GPU results agree), without `resources.gpu`: the
    /// job goes to any node, CPU or GPU.
    Auto,
}

impl NnTarget {
    /// `job` or `auto`.
    pub fn as_str(self) -> &'static str {
        match self {
            NnTarget::Job => "job",
            NnTarget::Auto => "auto",
        }
    }

    fn is_job(&self) -> bool {
        *self == NnTarget::Job
    }
}

impl std::str::FromStr for NnTarget {
    type Err = String;
    fn from_str(s: &str) -> Result<NnTarget, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "job" => Ok(NnTarget::Job),
            "auto" => Ok(NnTarget::Auto),
            other => Err(format!("unknown wasi-nn target {other:?}; use job or auto")),
        }
    }
}

/// How long each phase may take.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// Waiting for a first node to take it, from submission. Default 5 min.
    #[serde(default = "default_queue", with = "duration")]
    #[schema(value_type = String)]
    pub queue: Duration,
    /// One execution, from its start on a node. Default 10 min.
    #[serde(default = "default_execution", with = "duration")]
    #[schema(value_type = String)]
    pub execution: Duration,
    /// The whole job, from submission. Default 30 min.
    #[serde(default = "default_total", with = "duration")]
    #[schema(value_type = String)]
    pub total: Duration,
}

fn default_queue() -> Duration {
    Duration::from_secs(5 * 60)
}
fn default_execution() -> Duration {
    Duration::from_secs(10 * 60)
}
fn default_total() -> Duration {
    Duration::from_secs(30 * 60)
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts { queue: default_queue(), execution: default_execution(), total: default_total() }
    }
}

impl Spec {
    /// A spec running `module`'s `_start` with every default.
    pub fn new(module: Cid) -> Spec {
        Spec {
            task: Task {
                module,
                entrypoint: default_entrypoint(),
                invoke: None,
                args: Vec::new(),
                env: BTreeMap::new(),
                inputs: Vec::new(),
                limits: Limits::default(),
                nondeterministic: false,
                models: BTreeMap::new(),
            },
            constraints: Vec::new(),
            resources: Resources::default(),
            redundancy: Redundancy::default(),
            timeouts: Timeouts::default(),
            retries: default_retries(),
            nn: Nn::default(),
        }
    }

    /// Parses a YAML or JSON spec and validates it.
    pub fn from_yaml_or_json(text: &str) -> Result<Spec, Error> {
        if text.len() > MAX_SPEC_BYTES {
            return Err(Error::TooLarge(text.len()));
        }
        let spec: Spec = if text.trim_start().starts_with('{') {
            // JSON: serde_json decides (the common case, and every bid a
            // requester sends, so it is tried first: it is several times
            // faster than the YAML parser). A spec it refuses is read again
            // by the YAML parser for its errors, which name the field's path
            // (`task.limits: unknown field ...`), unless the syntax itself is
            // wrong. Tabs can only be whitespace in valid JSON, so turning
            // them into spaces for YAML 1.1 changes nothing.
            match serde_json::from_str::<Spec>(text) {
                Ok(spec) => spec,
                Err(json) => {
                    serde_json::from_str::<serde_json::Value>(text).map_err(|e| Error::Parse(e.to_string()))?;
                    match serde_norway::from_str::<Spec>(&text.replace('\t', " ")) {
                        Err(yaml) => return Err(Error::Parse(yaml.to_string())),
                        // YAML reads some documents differently (rare
                        // escapes): the JSON reading stands.
                        Ok(_) => return Err(Error::Parse(json.to_string())),
                    }
                }
            }
        } else {
            serde_norway::from_str(text).map_err(|e| Error::Parse(e.to_string()))?
        };
        spec.validate()?;
        Ok(spec)
    }

    /// The spec as JSON (what is stored).
    pub fn to_json(&self) -> String {
        // Serialising plain data with string keys cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Matching results needed for agreement: `redundancy.quorum`, or a
    /// majority of `redundancy.count` (count/2 + 1).
    /// The spec's canonical JSON: what the job CID hashes
    /// ([`crate::receipt::job_cid`]). Fields in declaration order, maps
    /// sorted, every default written out (but `task.models` and `nn`, left
    /// out while empty or default so that older specs keep their ids): two
    /// specs that mean the same job encode the same, and parsing it back
    /// gives it again.
    pub fn canonical_json(&self) -> Vec<u8> {
        // The stored form ([`Spec::to_json`]) is already canonical.
        self.to_json().into_bytes()
    }

    pub fn quorum(&self) -> u32 {
        self.redundancy.quorum.unwrap_or(self.redundancy.count / 2 + 1)
    }

    /// Checks every range and form the parser cannot.
    pub fn validate(&self) -> Result<(), Error> {
        let t = &self.task;
        export_name("task.entrypoint", &t.entrypoint)?;
        if let Some(invoke) = &t.invoke {
            export_name("task.invoke", invoke)?;
            if t.entrypoint != "_start" {
                return Err(invalid(
                    "task.invoke",
                    "cannot be used with task.entrypoint (a reactor export replaces the command); drop one",
                ));
            }
        }
        if t.args.len() > MAX_ARGS {
            return Err(invalid("task.args", format!("at most {MAX_ARGS} arguments, got {}", t.args.len())));
        }
        if t.env.len() > MAX_ENV {
            return Err(invalid("task.env", format!("at most {MAX_ENV} variables, got {}", t.env.len())));
        }
        for k in t.env.keys() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(invalid(format!("task.env.{k}"), "names must be non-empty, without '=' or NUL"));
            }
        }
        if t.models.len() > MAX_INPUTS {
            return Err(invalid("task.models", format!("at most {MAX_INPUTS} models, got {}", t.models.len())));
        }
        for name in t.models.keys() {
            if name.is_empty() || name.len() > 256 || name.contains('\0') {
                return Err(invalid(format!("task.models.{name}"), "names must be 1-256 bytes without NUL"));
            }
        }
        if t.inputs.len() > MAX_INPUTS {
            return Err(invalid("task.inputs", format!("at most {MAX_INPUTS} inputs, got {}", t.inputs.len())));
        }
        let mut mounts = std::collections::BTreeSet::new();
        for (i, input) in t.inputs.iter().enumerate() {
            let field = format!("task.inputs[{i}].mount");
            guest_path(&field, &input.mount)?;
            if !mounts.insert(input.mount.trim_end_matches('/')) {
                return Err(invalid(
                    field,
                    format!("{:?} is mounted twice; give each input its own path", input.mount),
                ));
            }
            if let Some(p) = &input.path {
                if p.split('/').any(|s| s == ".." || s == ".") || p.starts_with('/') || p.contains('\0') {
                    return Err(invalid(
                        format!("task.inputs[{i}].path"),
                        format!("{p:?} must be relative to the cid, like \"sub/dir\", without '.' or '..'"),
                    ));
                }
            }
        }
        if t.limits.memory.0 == 0 {
            return Err(invalid("task.limits.memory", "must be more than 0"));
        }
        if t.limits.memory.0 > MAX_MEMORY {
            return Err(invalid(
                "task.limits.memory",
                format!("{} is more than a wasm32 memory can hold; the most is {}", t.limits.memory, Bytes(MAX_MEMORY)),
            ));
        }
        timeout("task.limits.timeout", t.limits.timeout)?;
        if t.limits.fuel == Some(0) {
            return Err(invalid("task.limits.fuel", "must be more than 0 (or null for the default)"));
        }
        if self.constraints.len() > MAX_CONSTRAINTS {
            return Err(invalid("constraints", format!("at most {MAX_CONSTRAINTS}, got {}", self.constraints.len())));
        }
        if self.resources.slots == 0 {
            return Err(invalid("resources.slots", "must be at least 1"));
        }
        let r = &self.redundancy;
        if r.count == 0 || r.count > MAX_REDUNDANCY {
            return Err(invalid(
                "redundancy.count",
                format!("must be between 1 and {MAX_REDUNDANCY}, got {}", r.count),
            ));
        }
        if let Some(q) = r.quorum {
            if q == 0 || q > r.count {
                return Err(invalid(
                    "redundancy.quorum",
                    format!("must be between 1 and redundancy.count ({}), got {q}", r.count),
                ));
            }
        }
        if r.max_extra > MAX_REDUNDANCY {
            return Err(invalid(
                "redundancy.max_extra",
                format!("must be at most {MAX_REDUNDANCY}, got {}", r.max_extra),
            ));
        }
        timeout("timeouts.queue", self.timeouts.queue)?;
        timeout("timeouts.execution", self.timeouts.execution)?;
        timeout("timeouts.total", self.timeouts.total)?;
        self.nn.check(self.resources.gpu).map_err(|e| invalid("nn.target", e))?;
        if self.retries > MAX_RETRIES {
            return Err(invalid("retries", format!("must be at most {MAX_RETRIES}, got {}", self.retries)));
        }
        Ok(())
    }
}

fn export_name(field: &str, name: &str) -> Result<(), Error> {
    if name.is_empty() || name.len() > 256 || name.contains('\0') {
        return Err(invalid(field, "must be an export name of 1 to 256 characters"));
    }
    Ok(())
}

fn guest_path(field: &str, p: &str) -> Result<(), Error> {
    if !p.starts_with('/') || p.split('/').any(|s| s == ".." || s == ".") || p.contains('\0') || p.len() > 4096 {
        return Err(invalid(
            field,
            format!("{p:?} must be an absolute guest path without '.' or '..', like \"/inputs\""),
        ));
    }
    if p.trim_end_matches('/').is_empty() {
        return Err(invalid(field, "cannot mount over the guest's root \"/\"; use a directory like \"/inputs\""));
    }
    Ok(())
}

fn timeout(field: &str, d: Duration) -> Result<(), Error> {
    if d.is_zero() || d > MAX_TIMEOUT {
        return Err(invalid(
            field,
            format!("must be more than 0 and at most {}", humantime::format_duration(MAX_TIMEOUT)),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODULE: &str = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku";

    fn yaml(body: &str) -> Result<Spec, Error> {
        Spec::from_yaml_or_json(&format!("task:\n  module: {MODULE}\n{body}"))
    }

    #[test]
    fn minimal_spec_takes_every_default() {
        let s = yaml("").unwrap();
        assert_eq!(s.task.entrypoint, "_start");
        assert_eq!(s.task.limits, Limits::default());
        assert_eq!(s.resources, Resources::default());
        assert_eq!(s.redundancy, Redundancy::default());
        assert_eq!(s.timeouts, Timeouts::default());
        assert_eq!(s.retries, 2);
        assert_eq!(s.quorum(), 1);
        assert_eq!(s, Spec::new(s.task.module));
    }

    #[test]
    fn full_spec_parses() {
        let s = yaml(
            r#"  entrypoint: main
  args: [a, "b c"]
  env: {K: V}
  inputs:
    - {cid: QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn, path: sub/dir, mount: /inputs}
  limits: {memory: 1GiB, timeout: 2m, fuel: 1000, max_input: 100, stdout: 4KiB, stderr: "1 MiB"}
  nondeterministic: true
constraints: ["zone=eu", "arch!=arm", "tier in (a,b)", "gpu-vendor", "!spot"]
resources: {memory: 256MiB, slots: 2, gpu: true}
redundancy: {count: 3, quorum: 3, max_extra: 2}
timeouts: {queue: 1m, execution: 90, total: 1h}
retries: 0
"#,
        )
        .unwrap();
        assert_eq!(s.task.limits.memory, Bytes(1 << 30));
        assert_eq!(s.task.limits.timeout, Duration::from_secs(120));
        assert_eq!(s.task.limits.stdout, Bytes(4096));
        assert_eq!(s.task.limits.stderr, Bytes(1 << 20));
        assert_eq!(s.task.limits.max_input, Bytes(100));
        assert_eq!(s.task.inputs[0].segments(), ["sub", "dir"]);
        assert_eq!(s.timeouts.execution, Duration::from_secs(90));
        assert_eq!(s.constraints.len(), 5);
        assert_eq!(s.quorum(), 3);
        assert_eq!(s.resources.slots, 2);
        // Stored JSON parses back to the same spec.
        assert_eq!(Spec::from_yaml_or_json(&s.to_json()).unwrap(), s);
    }

    #[test]
    fn nn_settings_parse_and_default_ones_are_left_out() {
        let plain = yaml("").unwrap();
        assert_eq!(plain.nn, Nn::default());
        assert!(!plain.to_json().contains("\"nn\""), "{}", plain.to_json());

        let fast = yaml("nn: {mode: fast}\nresources: {gpu: true}\n").unwrap();
        assert_eq!(fast.nn.mode, NnMode::Fast);
        assert!(fast.to_json().contains(r#""nn":{"mode":"fast"}"#), "{}", fast.to_json());
        assert_eq!(Spec::from_yaml_or_json(&fast.to_json()).unwrap(), fast);
        // Exact written out is the default: the same job, the same JSON.
        assert_eq!(yaml("nn: {mode: exact}\n").unwrap().to_json(), plain.to_json());

        let auto = yaml("nn: {target: auto}\n").unwrap();
        assert_eq!(auto.nn.target, NnTarget::Auto);
        assert_eq!(Spec::from_yaml_or_json(&auto.to_json()).unwrap(), auto);

        let e = yaml("nn: {mode: quick}\n").unwrap_err().to_string();
        assert!(e.contains("quick") && e.contains("exact"), "{e}");
        let e = yaml("nn: {target: auto, mode: fast}\n").unwrap_err().to_string();
        assert!(e.contains("nn.target") && e.contains("nn.mode: exact"), "{e}");
        let e = yaml("nn: {target: auto}\nresources: {gpu: true}\n").unwrap_err().to_string();
        assert!(e.contains("nn.target") && e.contains("resources.gpu"), "{e}");
        assert_eq!("FAST".parse::<NnMode>(), Ok(NnMode::Fast));
        assert!("gpu".parse::<NnMode>().unwrap_err().contains("use exact or fast"));
    }

    #[test]
    fn json_is_accepted_even_with_tabs() {
        let s = Spec::from_yaml_or_json(&format!(
            "{{\n\t\"task\": {{\"module\": \"{MODULE}\", \"args\": [\"x\"]}},\n\t\"redundancy\": {{\"count\": 3}}\n}}"
        ))
        .unwrap();
        assert_eq!(s.task.args, ["x"]);
        assert_eq!(s.quorum(), 2);
    }

    fn err(body: &str) -> String {
        yaml(body).unwrap_err().to_string()
    }

    #[test]
    fn unknown_fields_are_named() {
        let e = err("  limits: {memroy: 1}\n");
        assert!(e.contains("unknown field `memroy`"), "{e}");
        let e = err("redundancy: {cuont: 1}\n");
        assert!(e.contains("unknown field `cuont`"), "{e}");
        let e = err("retry: 1\n");
        assert!(e.contains("unknown field `retry`"), "{e}");
        let e = Spec::from_yaml_or_json(&format!("{{\"task\": {{\"module\": \"{MODULE}\", \"argz\": []}}}}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("task: unknown field `argz`"), "{e}");
        let e = Spec::from_yaml_or_json("{\"task\": {\"module\": 1,}}").unwrap_err().to_string();
        assert!(e.contains("trailing comma at line 1"), "{e}");
        let e = Spec::from_yaml_or_json(&format!("{{\"task\": {{\"module\": \"{MODULE}\"}}, \"retries\": \"x\"}}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("retries: invalid type"), "{e}");
    }

    #[test]
    fn bad_values_are_explained() {
        for (body, needle) in [
            ("redundancy: {count: 0}\n", "redundancy.count: must be between 1 and 16, got 0"),
            ("redundancy: {count: 17}\n", "redundancy.count"),
            ("redundancy: {count: 3, quorum: 4}\n", "redundancy.quorum: must be between 1 and redundancy.count (3)"),
            ("redundancy: {count: 3, quorum: 0}\n", "redundancy.quorum"),
            ("redundancy: {max_extra: 17}\n", "redundancy.max_extra"),
            ("resources: {slots: 0}\n", "resources.slots: must be at least 1"),
            ("retries: 17\n", "retries: must be at most 16"),
            ("constraints: [\"zone==\", \"a b\"]\n", "invalid constraint \"a b\""),
            (
                "  inputs: [{cid: QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn, mount: inputs}]\n",
                "task.inputs[0].mount",
            ),
            (
                "  inputs: [{cid: QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn, mount: /a/../b}]\n",
                "task.inputs[0].mount",
            ),
            (
                "  inputs: [{cid: QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn, path: ../x, mount: /a}]\n",
                "task.inputs[0].path",
            ),
            ("  inputs: [{cid: nope, mount: /a}]\n", "invalid cid \"nope\""),
            ("  limits: {memory: lots}\n", "invalid size \"lots\""),
            ("  limits: {memory: 1TiB}\n", "task.limits.memory: 1 TiB is more than a wasm32 memory can hold"),
            ("  limits: {timeout: soon}\n", "invalid duration \"soon\""),
            ("timeouts: {total: 0s}\n", "timeouts.total: must be more than 0"),
            ("  invoke: run\n  entrypoint: main\n", "task.invoke: cannot be used with task.entrypoint"),
        ] {
            let e = err(body);
            assert!(e.contains(needle), "{body:?}: {e}");
        }
        let e = Spec::from_yaml_or_json("task: {}").unwrap_err().to_string();
        assert!(e.contains("missing field `module`"), "{e}");
    }

    #[test]
    fn sizes_display_in_whole_units_when_they_can() {
        assert_eq!(Bytes(512 << 20).to_string(), "512 MiB");
        assert_eq!(Bytes(3 << 30).to_string(), "3 GiB");
        assert_eq!(Bytes(100).to_string(), "100 B");
        assert_eq!(Bytes(1536).to_string(), "1.5 KiB");
    }

    #[test]
    fn the_reference_examples_parse() {
        let doc = include_str!("../../docs/job-spec.md");
        let mut specs = Vec::new();
        for lang in ["```yaml\n", "```json\n"] {
            for block in doc.split(lang).skip(1) {
                let text = block.split("```").next().unwrap_or_default();
                specs.push(Spec::from_yaml_or_json(text).unwrap_or_else(|e| panic!("{e}\n{text}")));
            }
        }
        assert_eq!(specs.len(), 3);
        assert_eq!(specs[0], specs[2], "the YAML and JSON examples are the same job");
        assert_eq!(specs[0].quorum(), 2);
    }

    #[test]
    fn oversized_specs_are_refused() {
        let big = "#".repeat(MAX_SPEC_BYTES + 1);
        assert_eq!(Spec::from_yaml_or_json(&big), Err(Error::TooLarge(MAX_SPEC_BYTES + 1)));
    }
}
