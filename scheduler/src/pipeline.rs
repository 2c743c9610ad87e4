//! Pipelines: a few jobs submitted together, where a job's input may be
//! another job's result.
//!
//! A pipeline is a small directed acyclic graph of named steps. Each step
//! is a normal job spec ([`Spec`]), except that an input may name another
//! step (`from`) instead of a CID: the node runs a step once every step it
//! reads from has an agreed result, and points those inputs at the
//! results. This module is the pure part: parsing and validation
//! ([`Pipeline::parse`]), ordering ([`Pipeline::order`]), a step's spec
//! once its dependencies have results ([`Step::resolve`]), and the
//! pipeline's signed receipt with its offline verification
//! ([`verify_pipeline`]). It does no I/O: the node feeds it and runs what
//! it answers.
//!
//! ## Format
//! YAML or JSON text (JSON when it starts with `{`), a map with one key,
//! `steps`, from step names to job specs:
//!
//! ```yaml
//! steps:
//!   split:                  # 1-64 characters of a-z, 0-9, '_', '-'; starts with a letter or digit
//!     task:
//!       module: bafy...
//!       inputs:
//!         - {cid: bafy..., mount: /data}
//!   count:
//!     task:
//!       module: bafy...
//!       inputs:
//!         - from: split     # instead of `cid`: the result of step `split`
//!           path: parts/a   # optional: a path inside that step's outputs/
//!           mount: /in
//!     redundancy: {count: 3}
//! ```
//!
//! An input has `cid` or `from`, never both. Every other rule and error
//! message is the job spec's own: each step is checked by
//! [`Spec::from_yaml_or_json`], with the step's name in front of the
//! message (`step "count": invalid job spec: ...`).
//!
//! ## Resolution
//! A step's result is a UnixFS directory whose `outputs/` holds what the
//! guest wrote to `/outputs`. A `from` input therefore resolves to the
//! dependency's result CID with the path `outputs` (or `outputs/<path>`).
//! Until then the stored spec holds a placeholder CID (the empty raw
//! block's) in those inputs, and [`Step::from`] records which inputs they
//! are, so the spec can be validated, stored and shown like any other.
//!
//! ## Receipt
//! A [`PipelineReceipt`] lists each step with its job CID, the CID of its
//! job receipt ([`crate::receipt`]), its result and its `from` inputs, and
//! is signed by the requester. [`verify_pipeline`] checks it from its
//! bytes and the step receipts' blocks alone: the requester's signature,
//! every step receipt (quorum, signatures, commitments), that each step's
//! claims match its receipt, the submitter's signature of the pipeline
//! (when it was signed), that the steps are the submitted pipeline's
//! (its stored form is a block the receipt names, `document`), and that
//! every `from` input of every step ran on exactly its dependency's
//! verified result.
//! The result of the last step is thereby tied, step by step, to the
//! data the first ones read.
//!
//! ## Limits
//! At most [`MAX_STEPS`] steps and [`MAX_PIPELINE_BYTES`] of text; each
//! step within the job spec's own limits.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_norway::Value;
use shoal_storage::Cid;

use crate::model::Submitter;
use crate::receipt::{self, raw_cid, Signed, Verified};
use crate::spec::{self, Spec};

/// Most steps in one pipeline: a pipeline is a small graph a person wrote;
/// bigger workflows belong to several pipelines or a workflow engine.
pub const MAX_STEPS: usize = 64;

/// Largest pipeline text accepted (each step is also held to
/// [`spec::MAX_SPEC_BYTES`]).
pub const MAX_PIPELINE_BYTES: usize = 4 << 20;

/// The directory of a step's result that holds what its guest wrote to
/// `/outputs`: what a `from` input reads.
pub const OUTPUTS_DIR: &str = "outputs";

/// The `kind` of every pipeline receipt, which tells it apart from a job
/// receipt (those have no `kind`).
pub const RECEIPT_KIND: &str = "shoal-pipeline-receipt";

/// The pipeline receipt format this code writes and reads.
pub const RECEIPT_VERSION: u32 = 1;

/// Why a pipeline, or a pipeline receipt, was refused: the first failure
/// found, naming the step and field.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The text is larger than [`MAX_PIPELINE_BYTES`].
    #[error("the pipeline is {0} bytes; the most accepted is {MAX_PIPELINE_BYTES}: split it into several pipelines")]
    TooLarge(usize),
    /// The text is not a pipeline (syntax, or not a map with `steps`).
    #[error("invalid pipeline: {0}")]
    Parse(String),
    /// A top-level key other than `steps`.
    #[error("invalid pipeline: unknown field `{0}`; a pipeline has only `steps`")]
    UnknownField(String),
    /// No steps.
    #[error("the pipeline has no steps; list at least one under `steps`")]
    Empty,
    /// More than [`MAX_STEPS`] steps.
    #[error("the pipeline has {0} steps; the most is {MAX_STEPS}: split it into several pipelines")]
    TooManySteps(usize),
    /// A step name out of form.
    #[error(
        "invalid step name {0:?}: use 1 to 64 characters of a-z, 0-9, '_' and '-', starting with a letter or digit"
    )]
    BadName(String),
    /// Two steps with one name.
    #[error("step {0:?} appears twice; give each step its own name")]
    DuplicateStep(String),
    /// A step's job spec was refused.
    #[error("step {step:?}: {source}")]
    Spec { step: String, source: spec::Error },
    /// A field of a step out of form (an input with both or neither of
    /// `cid` and `from`, a bad `path`, ...).
    #[error("step {step:?}: {field}: {message}")]
    Invalid { step: String, field: String, message: String },
    /// A `from` naming no step of the pipeline.
    #[error("step {step:?}: {field}: there is no step {from:?} in the pipeline")]
    MissingStep { step: String, field: String, from: String },
    /// A step reading its own result.
    #[error("step {step:?}: {field}: a step cannot read its own result")]
    SelfReference { step: String, field: String },
    /// The steps' `from`s form a cycle, listed as a path in the direction
    /// results flow, from its first step (by name) back to it.
    #[error(
        "the steps form a cycle: {} (each step reads the result of the one before it); no step can run first",
        .0.join(" -> ")
    )]
    Cycle(Vec<String>),
    /// [`Step::resolve`] without a result of a step it reads.
    #[error("step {0:?} has no result yet: run it before the steps that read it")]
    NoResult(String),
    /// A `from` entry naming an input the spec does not have (a
    /// hand-built [`Step`]).
    #[error("task.inputs[{0}] is named by a `from` but the spec has no such input")]
    NoSuchInput(usize),
    /// A pipeline receipt that is not one (syntax, kind, size).
    #[error("not a pipeline receipt: {0}")]
    Malformed(String),
    /// A pipeline receipt of another format version.
    #[error(
        "pipeline receipt version {0} is not supported (this shoal reads version {RECEIPT_VERSION}); upgrade shoal"
    )]
    Version(u32),
    /// The pipeline receipt itself (its CID, the requester's key or
    /// signature), or signing it, failed.
    #[error(transparent)]
    Receipt(receipt::Error),
    /// A step's job receipt does not verify.
    #[error("step {step:?}: {source}")]
    StepReceipt { step: String, source: receipt::Error },
    /// A step's job receipt is not in the store `verify_pipeline` reads.
    #[error("step {step:?}: receipt {cid} is not in the store: fetch it first (shoal get {cid})")]
    MissingBlock { step: String, cid: String },
    /// The pipeline receipt claims something of a step (`what`: its job
    /// cid or result) that its job receipt does not prove.
    #[error("step {step:?}: the pipeline receipt says its {what} is {claimed}, but its job receipt proves {actual}")]
    Mismatch { step: String, what: &'static str, claimed: String, actual: String },
    /// A step whose job failed: a pipeline receipt lists completed steps.
    #[error("step {step:?}: its job failed ({failure}); a pipeline receipt lists only steps with a result")]
    Failed { step: String, failure: String },
    /// A `from` input that did not run on its dependency's result.
    #[error(
        "step {step:?}: task.inputs[{input}] reads step {from:?}, whose result is {expected}, but the job ran on \
         {found}: the steps do not chain"
    )]
    FromMismatch { step: String, input: usize, from: String, expected: String, found: String },
}

fn invalid(step: &str, field: impl Into<String>, message: impl Into<String>) -> Error {
    Error::Invalid { step: step.to_owned(), field: field.into(), message: message.into() }
}

/// A parsed, validated pipeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    /// The steps by name.
    pub steps: BTreeMap<String, Step>,
}

/// One step: a job spec whose `from` inputs hold a placeholder CID until
/// [`Step::resolve`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// The job spec; its `from` inputs point at a placeholder (the empty
    /// raw block) with the path `outputs[/path]`.
    pub spec: Spec,
    /// Which inputs read another step's result, in input order.
    #[serde(default)]
    pub from: Vec<FromStep>,
}

/// An input that reads another step's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FromStep {
    /// Its index in `spec.task.inputs`.
    pub input: usize,
    /// The step whose result it reads.
    pub step: String,
    /// A path inside that step's `outputs/`, as the user wrote it (leading
    /// and trailing slashes are dropped when it is resolved); absent: the
    /// whole `outputs/` directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// The CID `from` inputs hold until they are resolved: the empty raw
/// block's, which no step result can be (a result is a directory).
fn placeholder() -> Cid {
    raw_cid(b"")
}

/// The path inside a dependency's result that a `from` input with `path`
/// reads.
fn outputs_path(path: Option<&str>) -> String {
    match path.map(|p| p.trim_matches('/')) {
        Some(p) if !p.is_empty() => format!("{OUTPUTS_DIR}/{p}"),
        _ => OUTPUTS_DIR.to_owned(),
    }
}

/// Checks a `from` input's `path`. Only leading and trailing slashes are
/// forgiven: anything else that would have to be normalised (`a//b`,
/// `.`, `..`) is refused, so that the path the user reads is the path
/// that runs.
fn check_from_path(step: &str, field: &str, p: &str) -> Result<(), Error> {
    let t = p.trim_matches('/');
    let why = if t.is_empty() {
        "names no path; leave `path` out to read the step's whole outputs directory"
    } else if t.split('/').any(str::is_empty) {
        "has an empty segment ('//'); write it as \"a/b\""
    } else if t.split('/').any(|s| s == "." || s == "..") {
        "may not contain '.' or '..': it is a path inside the step's outputs, like \"parts/a\""
    } else if t.contains('\0') {
        "may not contain NUL"
    } else {
        return Ok(());
    };
    Err(invalid(step, field, format!("{p:?} {why}")))
}

/// Whether `name` is a step name: 1-64 characters of `[a-z0-9_-]`,
/// starting with a letter or digit (so it is safe in paths, logs and
/// command lines as it is).
fn check_name(name: &str) -> Result<(), Error> {
    let ok = (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(Error::BadName(name.to_owned()))
    }
}

/// A YAML scalar as the text a name is made of (`2024:` is a number to
/// YAML, but a fine step name).
fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Drops a parser's " at line L column C" suffix: a step's spec is parsed
/// from its re-serialised text, whose lines are not the user's.
fn without_location(e: spec::Error) -> spec::Error {
    let spec::Error::Parse(m) = e else { return e };
    if let Some(i) = m.rfind(" at line ") {
        let rest = &m[i + " at line ".len()..];
        let mut parts = rest.split(" column ");
        let digits = |s: Option<&str>| s.is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()));
        if digits(parts.next()) && digits(parts.next()) && parts.next().is_none() {
            return spec::Error::Parse(m[..i].to_owned());
        }
    }
    spec::Error::Parse(m)
}

/// A topological order of a graph given as name → the names it reads,
/// the smallest ready name first; and, if not every name could be
/// ordered, a cycle among the rest (see [`Error::Cycle`]). Names read but
/// absent from the graph are ignored (they are refused elsewhere).
fn topo<'a>(deps: &BTreeMap<&'a str, BTreeSet<&'a str>>) -> (Vec<&'a str>, Option<Vec<String>>) {
    let mut waiting: BTreeMap<&str, usize> = BTreeMap::new();
    let mut readers: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (&name, ds) in deps {
        let ds: Vec<&str> = ds.iter().copied().filter(|d| deps.contains_key(d)).collect();
        waiting.insert(name, ds.len());
        for d in ds {
            readers.entry(d).or_default().push(name);
        }
    }
    let mut ready: BTreeSet<&str> = waiting.iter().filter(|(_, &n)| n == 0).map(|(&s, _)| s).collect();
    let mut order = Vec::with_capacity(deps.len());
    while let Some(name) = ready.pop_first() {
        order.push(name);
        for &r in readers.get(name).into_iter().flatten() {
            if let Some(n) = waiting.get_mut(r) {
                *n -= 1;
                if *n == 0 {
                    ready.insert(r);
                }
            }
        }
    }
    if order.len() == deps.len() {
        return (order, None);
    }
    // Every step left waits on another step left: walking back from one,
    // always to the smallest such dependency, must come round to a step
    // already seen, and the walk from there is a cycle.
    let done: BTreeSet<&str> = order.iter().copied().collect();
    let left = |s: &&str| deps.contains_key(s) && !done.contains(s);
    let mut path: Vec<&str> = Vec::new();
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    let mut cur = deps.keys().copied().find(|s| left(s));
    while let Some(name) = cur {
        if let Some(&at) = seen.get(name) {
            // path[at..] reads backwards (each reads the next); results
            // flow the other way.
            let mut cycle: Vec<String> = path[at..].iter().rev().map(|s| s.to_string()).collect();
            if let Some(first) = cycle.iter().enumerate().min_by(|a, b| a.1.cmp(b.1)).map(|(i, _)| i) {
                cycle.rotate_left(first);
            }
            if let Some(first) = cycle.first().cloned() {
                cycle.push(first);
            }
            return (order, Some(cycle));
        }
        seen.insert(name, path.len());
        path.push(name);
        cur = deps.get(name).and_then(|ds| ds.iter().copied().find(|d| left(d)));
    }
    // Unreachable for a graph whose remaining steps all wait; say what is
    // known rather than nothing.
    (order, Some(deps.keys().copied().filter(|s| left(s)).map(str::to_string).collect()))
}

impl Pipeline {
    /// Parses a YAML or JSON pipeline and validates all of it (see the
    /// module documentation): every step's spec, names, `from`s, cycles
    /// and limits.
    pub fn parse(text: &str) -> Result<Pipeline, Error> {
        if text.len() > MAX_PIPELINE_BYTES {
            return Err(Error::TooLarge(text.len()));
        }
        // JSON is read by serde_json, as Spec::from_yaml_or_json does, and
        // each step is handed back to it as JSON; YAML likewise as YAML,
        // so that each step parses exactly as the same spec on its own
        // would (YAML reads `env: {N: 5}` as a string, JSON does not).
        let json = text.trim_start().starts_with('{');
        let doc: Value = if json {
            serde_json::from_str(text).map_err(|e| Error::Parse(e.to_string()))?
        } else {
            serde_norway::from_str(text).map_err(|e| Error::Parse(e.to_string()))?
        };
        let Value::Mapping(mut top) = doc else {
            return Err(Error::Parse("the top level must be a map with one key, `steps`".into()));
        };
        if let Some(k) = top.keys().find(|k| k.as_str() != Some("steps")) {
            return Err(Error::UnknownField(scalar_text(k).unwrap_or_else(|| format!("{k:?}"))));
        }
        let steps = match top.shift_remove("steps") {
            Some(Value::Mapping(m)) => m,
            Some(Value::Null) => return Err(Error::Empty),
            Some(_) => return Err(Error::Parse("`steps` must be a map from step names to job specs".into())),
            None => return Err(Error::Parse("missing field `steps`: a map from step names to job specs".into())),
        };
        if steps.is_empty() {
            return Err(Error::Empty);
        }
        if steps.len() > MAX_STEPS {
            return Err(Error::TooManySteps(steps.len()));
        }
        let mut out = BTreeMap::new();
        for (key, value) in steps {
            let name = scalar_text(&key).ok_or_else(|| Error::BadName(format!("{key:?}")))?;
            check_name(&name)?;
            if out.contains_key(&name) {
                return Err(Error::DuplicateStep(name));
            }
            let step = parse_step(&name, value, json)?;
            out.insert(name, step);
        }
        let p = Pipeline { steps: out };
        p.check()?;
        Ok(p)
    }

    /// Reads the stored form ([`Pipeline::to_json`]) back, checking it
    /// again: it may come from an older version or another hand.
    pub fn from_json(text: &str) -> Result<Pipeline, Error> {
        if text.len() > MAX_PIPELINE_BYTES {
            return Err(Error::TooLarge(text.len()));
        }
        let p: Pipeline = serde_json::from_str(text).map_err(|e| Error::Parse(e.to_string()))?;
        p.check()?;
        Ok(p)
    }

    /// The pipeline's identity: the CID of its stored form as one raw
    /// block. Its submitter signs it ([`receipt::submit_statement`]), and
    /// its receipt names it, so that a verifier holding the block checks
    /// every step against what was submitted.
    pub fn cid(&self) -> Cid {
        raw_cid(self.to_json().as_bytes())
    }

    /// The stored form: JSON of the steps with their placeholder inputs.
    pub fn to_json(&self) -> String {
        // Plain data with string keys: serialising cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The steps in an order where every step comes after the steps it
    /// reads; among steps ready at once, by name, so every node computes
    /// the same order. A pipeline built by hand with a cycle lists only
    /// the steps that can run.
    pub fn order(&self) -> Vec<&str> {
        topo(&self.graph()).0
    }

    /// The steps `step` reads from (none for an unknown step).
    pub fn deps(&self, step: &str) -> BTreeSet<&str> {
        self.steps.get(step).map(|s| s.from.iter().map(|f| f.step.as_str()).collect()).unwrap_or_default()
    }

    /// The steps that read `step` directly.
    pub fn dependents(&self, step: &str) -> BTreeSet<&str> {
        self.steps.iter().filter(|(_, s)| s.from.iter().any(|f| f.step == step)).map(|(n, _)| n.as_str()).collect()
    }

    fn graph(&self) -> BTreeMap<&str, BTreeSet<&str>> {
        self.steps.keys().map(|n| (n.as_str(), self.deps(n))).collect()
    }

    /// Everything [`Pipeline::parse`] checks that the stored form can
    /// still get wrong.
    fn check(&self) -> Result<(), Error> {
        if self.steps.is_empty() {
            return Err(Error::Empty);
        }
        if self.steps.len() > MAX_STEPS {
            return Err(Error::TooManySteps(self.steps.len()));
        }
        for (name, step) in &self.steps {
            check_name(name)?;
            step.spec.validate().map_err(|source| Error::Spec { step: name.clone(), source })?;
            check_from(name, &step.from, |s| self.steps.contains_key(s))?;
            for f in &step.from {
                let field = format!("task.inputs[{}]", f.input);
                let input = step
                    .spec
                    .task
                    .inputs
                    .get(f.input)
                    .ok_or_else(|| invalid(name, &field, "is named by a `from` but the spec has no such input"))?;
                let expected = outputs_path(f.path.as_deref());
                if input.path.as_deref() != Some(expected.as_str()) {
                    return Err(invalid(
                        name,
                        format!("{field}.path"),
                        format!("reads step {:?}, so it must be {expected:?}, not {:?}", f.step, input.path),
                    ));
                }
            }
        }
        match topo(&self.graph()).1 {
            Some(cycle) => Err(Error::Cycle(cycle)),
            None => Ok(()),
        }
    }
}

/// Checks one step's `from` entries: each names another step that
/// `exists`, a clean path, and a distinct input.
fn check_from(name: &str, from: &[FromStep], exists: impl Fn(&str) -> bool) -> Result<(), Error> {
    let mut inputs = BTreeSet::new();
    for f in from {
        let field = format!("task.inputs[{}]", f.input);
        if !inputs.insert(f.input) {
            return Err(invalid(name, field, "is named by two `from` entries"));
        }
        if f.step == name {
            return Err(Error::SelfReference { step: name.to_owned(), field: format!("{field}.from") });
        }
        if !exists(&f.step) {
            return Err(Error::MissingStep {
                step: name.to_owned(),
                field: format!("{field}.from"),
                from: f.step.clone(),
            });
        }
        if let Some(p) = &f.path {
            check_from_path(name, &format!("{field}.path"), p)?;
        }
    }
    Ok(())
}

/// One step of the text: pulls its `from` inputs out (a placeholder CID
/// and the `outputs` path in their place), then parses what is left as a
/// job spec, in the format it came in.
fn parse_step(name: &str, mut value: Value, json: bool) -> Result<Step, Error> {
    let mut from = Vec::new();
    if let Some(Value::Sequence(inputs)) = value.get_mut("task").and_then(|t| t.get_mut("inputs")) {
        for (i, input) in inputs.iter_mut().enumerate() {
            // Anything but a map is left for the spec parser to refuse.
            let Value::Mapping(m) = input else { continue };
            let field = format!("task.inputs[{i}]");
            match (m.contains_key("cid"), m.shift_remove("from")) {
                (true, None) => {}
                (true, Some(_)) => {
                    return Err(invalid(
                        name,
                        field,
                        "has both `cid` and `from`; give one: `cid` for data by CID, `from` for another step's result",
                    ))
                }
                (false, None) => {
                    return Err(invalid(
                        name,
                        field,
                        "needs `cid` (data by CID) or `from` (the name of a step whose result it reads)",
                    ))
                }
                (false, Some(f)) => {
                    let step = scalar_text(&f)
                        .ok_or_else(|| invalid(name, format!("{field}.from"), "must be the name of a step"))?;
                    let path = match m.get("path") {
                        None | Some(Value::Null) => None,
                        Some(Value::String(p)) => {
                            check_from_path(name, &format!("{field}.path"), p)?;
                            Some(p.clone())
                        }
                        Some(_) => {
                            return Err(invalid(
                                name,
                                format!("{field}.path"),
                                "must be a path inside the step's outputs, like \"parts/a\"",
                            ))
                        }
                    };
                    m.insert("path".into(), Value::String(outputs_path(path.as_deref())));
                    m.insert("cid".into(), Value::String(placeholder().to_string()));
                    from.push(FromStep { input: i, step, path });
                }
            }
        }
    }
    let text = if json {
        serde_json::to_string(&value).map_err(|e| e.to_string())
    } else {
        serde_norway::to_string(&value).map_err(|e| e.to_string())
    };
    let spec = text
        .map_err(spec::Error::Parse)
        .and_then(|t| Spec::from_yaml_or_json(&t))
        .map_err(|e| Error::Spec { step: name.to_owned(), source: without_location(e) })?;
    Ok(Step { spec, from })
}

impl Step {
    /// The spec with every `from` input pointed at its dependency's
    /// result: `results` maps step names to result CIDs. Errs naming the
    /// first step read that has no result there.
    pub fn resolve(&self, results: &BTreeMap<String, Cid>) -> Result<Spec, Error> {
        let mut spec = self.spec.clone();
        for f in &self.from {
            let cid = results.get(&f.step).ok_or_else(|| Error::NoResult(f.step.clone()))?;
            let input = spec.task.inputs.get_mut(f.input).ok_or(Error::NoSuchInput(f.input))?;
            input.cid = *cid;
            input.path = Some(outputs_path(f.path.as_deref()));
        }
        Ok(spec)
    }
}

/// One step as the pipeline receipt records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepReceipt {
    /// The step's name.
    pub name: String,
    /// Its job CID ([`receipt::job_cid`] of the resolved spec).
    pub job_cid: String,
    /// The CID of its job receipt (a raw block).
    pub receipt: String,
    /// Its agreed result.
    pub result: String,
    /// Its inputs that read other steps' results.
    #[serde(default)]
    pub from: Vec<FromStep>,
}

/// A completed pipeline's receipt: its steps' receipts, chained.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineReceipt {
    /// Always [`RECEIPT_KIND`].
    pub kind: String,
    /// [`RECEIPT_VERSION`].
    pub version: u32,
    /// The requester's pipeline id.
    pub pipeline: String,
    /// The pipeline as submitted: the CID of its stored form
    /// ([`Pipeline::cid`]), a raw block kept beside the receipt.
    pub document: String,
    /// Who submitted it: a signature of `document`
    /// ([`receipt::submit_statement`]); absent: anonymous.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitter: Option<Submitter>,
    /// Every step.
    pub steps: Vec<StepReceipt>,
    /// The requester's peer id and public key (protobuf, hex).
    pub requester: String,
    pub requester_key: String,
    pub created_ms: u64,
    pub completed_ms: u64,
    /// The requester's signature over [`Signed::signed_bytes`]
    /// (hex).
    #[serde(default)]
    pub signature: String,
}

impl receipt::Signed for PipelineReceipt {
    fn requester_fields(&mut self) -> [&mut String; 3] {
        [&mut self.requester, &mut self.requester_key, &mut self.signature]
    }
}

/// What a verified pipeline receipt proves: each step's verified job
/// receipt, in the receipt's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedPipeline {
    pub steps: Vec<(String, Verified)>,
    /// The key whose signature of the pipeline's document the receipt
    /// carries (absent: an anonymous pipeline).
    pub submitter: Option<String>,
}

/// Whether `bytes` look like a pipeline receipt (a JSON object whose
/// `kind` is [`RECEIPT_KIND`]), so that one command can verify either
/// kind of receipt.
pub fn is_pipeline_receipt(bytes: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(default)]
        kind: Option<String>,
    }
    serde_json::from_slice::<Probe>(bytes).is_ok_and(|p| p.kind.as_deref() == Some(RECEIPT_KIND))
}

fn step_cid(step: &str, field: &str, s: &str) -> Result<Cid, Error> {
    s.parse().map_err(|e| invalid(step, field, format!("{s} is not a cid: {e}")))
}

/// Checks a pipeline receipt offline, from its bytes and the step
/// receipts' blocks (`get`), returning the first failure, naming the
/// step: `cid`, when given, must be the bytes' CID (as for
/// [`receipt::verify`]); the requester's signature; each step receipt,
/// verified by [`receipt::verify`] with `trusted`, with a result (a
/// failed step has none); that each step's job cid and result are what
/// its receipt proves; that each `from` input of each step's spec is
/// exactly the named step's verified result at `outputs[/path]`; that
/// the steps are the submitted pipeline's (`document`), each run on the
/// spec it resolves to; and the pipeline submitter's signature of that
/// document, if the receipt names one. Step names must be distinct,
/// every `from` must name a step of the receipt, and they may not form a
/// cycle.
///
/// A step's own receipt may be an earlier run's (a step answered from
/// the result cache): its submitter is whoever submitted that run, and
/// only its job CID, result and signatures matter here.
pub fn verify_pipeline(
    bytes: &[u8],
    cid: Option<&Cid>,
    trusted: Option<&BTreeSet<String>>,
    get: &dyn Fn(&Cid) -> Option<Vec<u8>>,
) -> Result<VerifiedPipeline, Error> {
    receipt::check_block(bytes, cid).map_err(Error::Receipt)?;
    let r: PipelineReceipt = serde_json::from_slice(bytes).map_err(|e| Error::Malformed(e.to_string()))?;
    if r.kind != RECEIPT_KIND {
        return Err(Error::Malformed(format!("its kind is {:?}, not {RECEIPT_KIND:?}", r.kind)));
    }
    if r.version != RECEIPT_VERSION {
        return Err(Error::Version(r.version));
    }
    let key = receipt::key_of("the requester", &r.requester, &r.requester_key).map_err(Error::Receipt)?;
    receipt::check("the requester's signature of the pipeline receipt", &key, &r.signed_bytes(), &r.signature)
        .map_err(Error::Receipt)?;
    if r.steps.is_empty() {
        return Err(Error::Malformed("it lists no steps".into()));
    }
    if r.steps.len() > MAX_STEPS {
        return Err(Error::Malformed(format!("{} steps, more than {MAX_STEPS}", r.steps.len())));
    }

    // The shape first, which costs no block: names, repeats, the graph.
    let mut graph: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for s in &r.steps {
        check_name(&s.name)?;
        let deps = s.from.iter().map(|f| f.step.as_str()).collect();
        if graph.insert(&s.name, deps).is_some() {
            return Err(Error::DuplicateStep(s.name.clone()));
        }
    }
    for s in &r.steps {
        check_from(&s.name, &s.from, |d| graph.contains_key(d))?;
    }
    if let Some(cycle) = topo(&graph).1 {
        return Err(Error::Cycle(cycle));
    }

    // Each step's own receipt, and what the pipeline receipt says of it.
    let mut proven: BTreeMap<&str, (Cid, Spec)> = BTreeMap::new();
    let mut steps = Vec::with_capacity(r.steps.len());
    for s in &r.steps {
        let step = || s.name.clone();
        let rcid = step_cid(&s.name, "receipt", &s.receipt)?;
        let block = get(&rcid).ok_or_else(|| Error::MissingBlock { step: step(), cid: rcid.to_string() })?;
        let v = receipt::verify(&block, Some(&rcid), trusted)
            .map_err(|source| Error::StepReceipt { step: step(), source })?;
        // verify read it already; read again for the spec it keeps.
        let job: receipt::Receipt = serde_json::from_slice(&block)
            .map_err(|e| Error::StepReceipt { step: step(), source: receipt::Error::Malformed(e.to_string()) })?;
        let claimed = step_cid(&s.name, "job_cid", &s.job_cid)?;
        if claimed != v.job_cid {
            return Err(Error::Mismatch {
                step: step(),
                what: "job cid",
                claimed: s.job_cid.clone(),
                actual: v.job_cid.to_string(),
            });
        }
        let Some(result) = v.result else {
            return Err(Error::Failed { step: step(), failure: v.failure.clone().unwrap_or_default() });
        };
        let claimed = step_cid(&s.name, "result", &s.result)?;
        if claimed != result {
            return Err(Error::Mismatch {
                step: step(),
                what: "result",
                claimed: s.result.clone(),
                actual: result.to_string(),
            });
        }
        proven.insert(&s.name, (result, job.spec));
        steps.push((s.name.clone(), v));
    }

    // Each `from` input ran on its dependency's proven result.
    for s in &r.steps {
        let Some((_, spec)) = proven.get(s.name.as_str()) else { continue };
        for f in &s.from {
            let Some((result, _)) = proven.get(f.step.as_str()) else { continue };
            let input = spec.task.inputs.get(f.input).ok_or_else(|| {
                invalid(
                    &s.name,
                    format!("task.inputs[{}]", f.input),
                    "is named by a `from` but the spec has no such input",
                )
            })?;
            let path = outputs_path(f.path.as_deref());
            if input.cid != *result || input.path.as_deref() != Some(path.as_str()) {
                return Err(Error::FromMismatch {
                    step: s.name.clone(),
                    input: f.input,
                    from: f.step.clone(),
                    expected: format!("{result} (path {path})"),
                    found: format!("{} (path {})", input.cid, input.path.as_deref().unwrap_or("none")),
                });
            }
        }
    }
    // The steps are the submitted pipeline's, each run on exactly the spec
    // it resolves to with its dependencies' proven results.
    let doc_cid: Cid = r.document.parse().map_err(|e| Error::Malformed(format!("document: {}: {e}", r.document)))?;
    let doc =
        get(&doc_cid).ok_or_else(|| Error::MissingBlock { step: "(the pipeline)".into(), cid: r.document.clone() })?;
    if raw_cid(&doc) != doc_cid {
        return Err(Error::Malformed(format!("the block named {doc_cid} does not hash to it")));
    }
    let doc = Pipeline::from_json(&String::from_utf8_lossy(&doc))?;
    let names: BTreeSet<&str> = r.steps.iter().map(|s| s.name.as_str()).collect();
    if names != doc.steps.keys().map(String::as_str).collect() {
        return Err(Error::Malformed(format!(
            "its steps ({}) are not the pipeline's ({})",
            names.iter().copied().collect::<Vec<_>>().join(", "),
            doc.steps.keys().cloned().collect::<Vec<_>>().join(", ")
        )));
    }
    let results: BTreeMap<String, Cid> = proven.iter().map(|(n, (c, _))| (n.to_string(), *c)).collect();
    for s in &r.steps {
        let (Some(step), Some((_, spec))) = (doc.steps.get(&s.name), proven.get(s.name.as_str())) else { continue };
        if step.from != s.from {
            return Err(invalid(&s.name, "from", "is not the submitted pipeline's"));
        }
        let expected = receipt::job_cid(&step.resolve(&results)?);
        let ran = receipt::job_cid(spec);
        if expected != ran {
            return Err(Error::Mismatch {
                step: s.name.clone(),
                what: "spec (job cid of the submitted step with its inputs' results)",
                claimed: ran.to_string(),
                actual: expected.to_string(),
            });
        }
    }
    if let Some(sub) = &r.submitter {
        if !sub.verify(&doc_cid) {
            return Err(Error::Receipt(receipt::Error::Signature {
                who: format!("the pipeline's submitter {}", sub.key),
                why: format!("it does not sign pipeline {doc_cid} at {}", sub.at_ms),
            }));
        }
    }

    Ok(VerifiedPipeline { steps, submitter: r.submitter.as_ref().map(|s| s.key.clone()) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commit;
    use crate::receipt::{commit_statement, job_cid, reveal_statement, Attestation, Receipt};
    use libp2p::identity::Keypair;
    use proptest::prelude::*;
    use std::collections::HashMap;

    const MODULE: &str = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku";
    const DATA: &str = "QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn";

    fn diamond_yaml() -> String {
        format!(
            r#"steps:
  d:
    task:
      module: {MODULE}
      inputs:
        - {{from: b, mount: /b}}
        - {{from: c, path: x, mount: /c}}
        - {{cid: {DATA}, mount: /data}}
  b:
    task:
      module: {MODULE}
      env: {{N: 5}}
      inputs: [{{from: a, mount: /in}}]
  c:
    task:
      module: {MODULE}
      inputs: [{{from: a, path: parts/c/, mount: /in}}]
    redundancy: {{count: 3}}
  a:
    task:
      module: {MODULE}
      inputs: [{{cid: {DATA}, path: sub, mount: /data}}]
"#
        )
    }

    fn diamond_json() -> String {
        format!(
            r#"{{"steps": {{
  "a": {{"task": {{"module": "{MODULE}", "inputs": [{{"cid": "{DATA}", "path": "sub", "mount": "/data"}}]}}}},
  "b": {{"task": {{"module": "{MODULE}", "env": {{"N": "5"}}, "inputs": [{{"from": "a", "mount": "/in"}}]}}}},
  "c": {{"task": {{"module": "{MODULE}", "inputs": [{{"from": "a", "path": "parts/c/", "mount": "/in"}}]}},
         "redundancy": {{"count": 3}}}},
  "d": {{"task": {{"module": "{MODULE}", "inputs": [
    {{"from": "b", "mount": "/b"}}, {{"from": "c", "path": "x", "mount": "/c"}}, {{"cid": "{DATA}", "mount": "/data"}}
  ]}}}}
}}}}"#
        )
    }

    fn set<'a>(names: &[&'a str]) -> BTreeSet<&'a str> {
        names.iter().copied().collect()
    }

    #[test]
    fn a_diamond_parses_orders_and_resolves() {
        let yaml = Pipeline::parse(&diamond_yaml()).unwrap();
        let json = Pipeline::parse(&diamond_json()).unwrap();
        assert_eq!(yaml, json, "the YAML and JSON forms are the same pipeline");
        let p = yaml;
        assert_eq!(p.order(), ["a", "b", "c", "d"]);
        assert_eq!(p.deps("d"), set(&["b", "c"]));
        assert_eq!(p.deps("a"), set(&[]));
        assert_eq!(p.dependents("a"), set(&["b", "c"]));
        assert_eq!(p.dependents("d"), set(&[]));
        assert_eq!(p.deps("nope"), set(&[]));
        assert_eq!(p.steps["b"].spec.task.env["N"], "5", "YAML numbers read as strings, as in a plain spec");
        assert_eq!(p.steps["c"].spec.redundancy.count, 3);
        assert_eq!(
            p.steps["d"].from,
            [
                FromStep { input: 0, step: "b".into(), path: None },
                FromStep { input: 1, step: "c".into(), path: Some("x".into()) }
            ]
        );
        // Until resolved, `from` inputs hold the placeholder.
        assert_eq!(p.steps["d"].spec.task.inputs[0].cid, placeholder());

        let (rb, rc) = (raw_cid(b"b"), raw_cid(b"c"));
        let results: BTreeMap<String, Cid> = [("b".to_string(), rb), ("c".to_string(), rc)].into();
        let d = p.steps["d"].resolve(&results).unwrap();
        let ins = &d.task.inputs;
        assert_eq!((ins[0].cid, ins[0].path.as_deref(), ins[0].mount.as_str()), (rb, Some("outputs"), "/b"));
        assert_eq!((ins[1].cid, ins[1].path.as_deref(), ins[1].mount.as_str()), (rc, Some("outputs/x"), "/c"));
        assert_eq!(ins[2].cid.to_string(), DATA, "plain inputs are left alone");
        assert_eq!(ins[2].path, None);
        d.validate().unwrap();
        // Trailing slashes are dropped when resolving.
        let c = p.steps["c"].resolve(&[("a".to_string(), rb)].into()).unwrap();
        assert_eq!(c.task.inputs[0].path.as_deref(), Some("outputs/parts/c"));
        // A step without `from`s resolves to its own spec.
        assert_eq!(p.steps["a"].resolve(&BTreeMap::new()).unwrap(), p.steps["a"].spec);

        let e = p.steps["d"].resolve(&[("b".to_string(), rb)].into()).unwrap_err();
        assert_eq!(e, Error::NoResult("c".into()));
        assert!(e.to_string().contains("step \"c\" has no result yet"), "{e}");

        let back = Pipeline::from_json(&p.to_json()).unwrap();
        assert_eq!(back, p);
    }

    fn refused(text: &str) -> Error {
        Pipeline::parse(text).unwrap_err()
    }

    /// A YAML pipeline of `steps` given as (name, inputs in flow style).
    fn yaml(steps: &[(&str, &str)]) -> String {
        let mut s = "steps:\n".to_string();
        for (name, inputs) in steps {
            s += &format!("  {name}:\n    task:\n      module: {MODULE}\n      inputs: [{inputs}]\n");
        }
        s
    }

    #[test]
    fn every_refusal_names_what_is_wrong() {
        let e = refused(&yaml(&[("a", "{from: b, mount: /i}"), ("b", "{from: a, mount: /i}")]));
        assert_eq!(e, Error::Cycle(vec!["a".into(), "b".into(), "a".into()]));
        assert!(e.to_string().contains("the steps form a cycle: a -> b -> a"), "{e}");

        // c reads b, b reads a, a reads c: results flow a -> b -> c -> a;
        // z hangs off the cycle and is not part of it.
        let e = refused(&yaml(&[
            ("a", "{from: c, mount: /i}"),
            ("b", "{from: a, mount: /i}"),
            ("c", "{from: b, mount: /i}"),
            ("z", "{from: c, mount: /i}"),
            ("y", ""),
        ]));
        assert!(e.to_string().contains("cycle: a -> b -> c -> a ("), "{e}");

        let e = refused(&yaml(&[("a", "{from: a, mount: /i}")]));
        assert_eq!(e, Error::SelfReference { step: "a".into(), field: "task.inputs[0].from".into() });
        assert!(e.to_string().contains("cannot read its own result"), "{e}");

        let e = refused(&yaml(&[("a", ""), ("b", &format!("{{cid: {DATA}, mount: /d}}, {{from: nope, mount: /i}}"))]));
        assert_eq!(
            e,
            Error::MissingStep { step: "b".into(), field: "task.inputs[1].from".into(), from: "nope".into() }
        );
        assert!(e.to_string().contains("there is no step \"nope\""), "{e}");

        let e = refused(&yaml(&[("a", ""), ("b", &format!("{{cid: {DATA}, from: a, mount: /i}}"))]));
        assert!(matches!(&e, Error::Invalid { step, field, .. } if step == "b" && field == "task.inputs[0]"), "{e}");
        assert!(e.to_string().contains("has both `cid` and `from`"), "{e}");

        let e = refused(&yaml(&[("a", "{mount: /i}")]));
        assert!(e.to_string().starts_with("step \"a\": task.inputs[0]: needs `cid`"), "{e}");

        for bad in ["A", "-a", "a.b", "", "a b", &"a".repeat(65)] {
            let e = refused(&format!("steps:\n  {bad:?}: {{task: {{module: {MODULE}}}}}\n"));
            assert_eq!(e, Error::BadName(bad.to_string()), "{bad:?}");
        }
        assert!(Pipeline::parse(&format!("steps:\n  2024: {{task: {{module: {MODULE}}}}}\n")).is_ok());
        assert!(Pipeline::parse(&format!("steps:\n  {}: {{task: {{module: {MODULE}}}}}\n", "a".repeat(64))).is_ok());

        let many: Vec<(String, &str)> = (0..=MAX_STEPS).map(|i| (format!("s{i}"), "")).collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(n, i)| (n.as_str(), *i)).collect();
        assert_eq!(refused(&yaml(&many)), Error::TooManySteps(MAX_STEPS + 1));
        assert!(Pipeline::parse(&yaml(&many[..MAX_STEPS])).is_ok());

        let e = refused(&format!("{}stpes: 1\n", yaml(&[("a", "")])));
        assert_eq!(e, Error::UnknownField("stpes".into()));
        assert!(e.to_string().contains("unknown field `stpes`"), "{e}");
        assert_eq!(refused("steps: {}\n"), Error::Empty);
        assert_eq!(refused("steps:\n"), Error::Empty);
        assert_eq!(refused("{\"steps\": {}}"), Error::Empty);
        assert!(matches!(refused("- a\n"), Error::Parse(_)));
        assert!(matches!(refused("{\"steps\": {\"a\": 1,}}"), Error::Parse(_)));

        // A bad spec field: the spec's own message, with the step in front
        // and without line numbers of text the user never wrote.
        let text = yaml(&[("a", ""), ("count", "{from: a, mount: /i}")]).replace(
            "inputs: [{from: a, mount: /i}]",
            "inputs: [{from: a, mount: /i}]\n    redundancy: {count: 3, quorum: 4}",
        );
        let e = refused(&text);
        assert!(matches!(&e, Error::Spec { step, .. } if step == "count"), "{e}");
        assert!(e.to_string().starts_with("step \"count\": invalid job spec: redundancy.quorum"), "{e}");
        let e = refused(&yaml(&[("a", "")]).replace("module:", "modul:"));
        assert!(e.to_string().starts_with("step \"a\": invalid job spec: task: unknown field `modul`"), "{e}");
        assert!(!e.to_string().contains(" at line "), "{e}");
        let e = refused(&format!("{{\"steps\": {{\"j\": {{\"task\": {{\"module\": \"{MODULE}\", \"argz\": []}}}}}}}}"));
        assert!(e.to_string().starts_with("step \"j\": invalid job spec: task: unknown field `argz`"), "{e}");
        assert!(!e.to_string().contains(" at line "), "{e}");
        // Two inputs mounted at one path: refused by the spec's rule.
        let e = refused(&yaml(&[("a", ""), ("b", &format!("{{from: a, mount: /i}}, {{cid: {DATA}, mount: /i}}"))]));
        assert!(e.to_string().contains("step \"b\": invalid job spec: task.inputs[1].mount"), "{e}");

        for (path, why) in
            [("../x", "'..'"), ("a/../b", "'..'"), ("a//b", "empty segment"), ("./a", "'.'"), ("/", "names no path")]
        {
            let e = refused(&yaml(&[("a", ""), ("b", &format!("{{from: a, path: {path:?}, mount: /i}}"))]));
            assert!(matches!(&e, Error::Invalid { step, field, .. } if step == "b" && field == "task.inputs[0].path"));
            assert!(e.to_string().contains(why), "{path}: {e}");
        }
        assert!(Pipeline::parse(&yaml(&[("a", ""), ("b", "{from: a, path: /p/q/, mount: /i}")])).is_ok());

        let e = refused(&yaml(&[("a", "{from: [x], mount: /i}")]));
        assert!(e.to_string().contains("task.inputs[0].from: must be the name of a step"), "{e}");

        let big = format!("{}#{}", yaml(&[("a", "")]), " ".repeat(MAX_PIPELINE_BYTES));
        assert_eq!(refused(&big), Error::TooLarge(big.len()));
    }

    #[test]
    fn the_stored_form_is_checked_when_read_back() {
        let p = Pipeline::parse(&diamond_yaml()).unwrap();
        let mut t = p.clone();
        t.steps.get_mut("a").unwrap().from.push(FromStep { input: 0, step: "d".into(), path: None });
        t.steps.get_mut("a").unwrap().spec.task.inputs[0].path = Some("outputs".into());
        assert!(matches!(Pipeline::from_json(&t.to_json()), Err(Error::Cycle(_))));
        let mut t = p.clone();
        t.steps.get_mut("d").unwrap().from[1].input = 9;
        assert!(Pipeline::from_json(&t.to_json()).unwrap_err().to_string().contains("no such input"));
        let mut t = p.clone();
        t.steps.get_mut("d").unwrap().spec.task.inputs[1].path = Some("outputs/y".into());
        assert!(Pipeline::from_json(&t.to_json()).unwrap_err().to_string().contains("must be \"outputs/x\""));
        let mut t = p;
        t.steps.get_mut("b").unwrap().from[0].step = "zz".into();
        assert!(matches!(Pipeline::from_json(&t.to_json()), Err(Error::MissingStep { .. })));
        assert!(matches!(Pipeline::from_json("{\"steps\": {}}"), Err(Error::Empty)));
    }

    /// A DAG: step j reads step i for each edge (i, j), i < j; the names
    /// are a shuffle so that name order is not index order.
    fn dag_yaml(names: &[String], edges: &[(usize, usize)]) -> String {
        let mut s = "steps:\n".to_string();
        for (j, name) in names.iter().enumerate() {
            s += &format!("  {name}:\n    task:\n      module: {MODULE}\n      inputs:\n");
            let mut any = false;
            for &(i, _) in edges.iter().filter(|e| e.1 == j) {
                any = true;
                let path = if (i + j) % 2 == 0 { format!(", path: p{i}") } else { String::new() };
                s += &format!("        - {{from: {}, mount: /in/{i}{path}}}\n", names[i]);
            }
            if !any {
                s += &format!("        - {{cid: {DATA}, mount: /data}}\n");
            }
        }
        s
    }

    fn dag(max: usize) -> impl Strategy<Value = (Vec<String>, Vec<(usize, usize)>)> {
        (2usize..=max).prop_flat_map(|n| {
            (
                Just((0..n).collect::<Vec<usize>>()).prop_shuffle(),
                prop::collection::vec(prop::collection::vec(any::<bool>(), n), n),
            )
                .prop_map(|(perm, adj)| {
                    let names = perm.iter().map(|k| format!("s{k}")).collect();
                    let edges =
                        (0..adj.len()).flat_map(|j| (0..j).map(move |i| (i, j))).filter(|&(i, j)| adj[j][i]).collect();
                    (names, edges)
                })
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn random_dags_parse_order_and_round_trip((names, edges) in dag(20)) {
            let p = Pipeline::parse(&dag_yaml(&names, &edges)).unwrap();
            let order = p.order();
            prop_assert_eq!(order.len(), names.len());
            let pos: BTreeMap<&str, usize> = order.iter().enumerate().map(|(k, &s)| (s, k)).collect();
            for &(i, j) in &edges {
                prop_assert!(pos[names[i].as_str()] < pos[names[j].as_str()], "{} before {}", names[i], names[j]);
                prop_assert!(p.deps(&names[j]).contains(names[i].as_str()));
                prop_assert!(p.dependents(&names[i]).contains(names[j].as_str()));
            }
            prop_assert_eq!(Pipeline::from_json(&p.to_json()).unwrap(), p);
        }

        #[test]
        fn a_back_edge_over_a_chain_is_a_cycle((names, mut edges) in dag(20)) {
            let n = names.len();
            // A chain through every step, then the last feeds the first.
            for i in 0..n - 1 {
                if !edges.contains(&(i, i + 1)) {
                    edges.push((i, i + 1));
                }
            }
            let mut text = dag_yaml(&names, &edges);
            let first = format!("  {}:\n    task:\n      module: {MODULE}\n      inputs:\n", names[0]);
            text = text.replace(&first, &format!("{first}        - {{from: {}, mount: /back}}\n", names[n - 1]));
            edges.push((n - 1, 0));
            let e = Pipeline::parse(&text).unwrap_err();
            let Error::Cycle(cycle) = &e else { panic!("not a cycle: {e}") };
            prop_assert!(cycle.len() >= 3 && cycle.first() == cycle.last(), "{e}");
            let index = |s: &str| names.iter().position(|x| x == s).unwrap();
            for w in cycle.windows(2) {
                prop_assert!(edges.contains(&(index(&w[0]), index(&w[1]))), "{} -> {} is no edge: {}", w[0], w[1], e);
            }
            let named = format!("cycle: {}", cycle.join(" -> "));
            prop_assert!(e.to_string().contains(&named), "{}", e);
        }
    }

    // Pipeline receipts.

    /// A signed receipt of `spec`'s job with `result`, run on one node.
    fn job_receipt(spec: Spec, result: Cid, requester: &Keypair) -> (Cid, Vec<u8>) {
        let job = job_cid(&spec);
        let node = Keypair::generate_ed25519();
        let nonce = [7u8; 32];
        let c = commit::commitment(&result, &nonce);
        let att = Attestation {
            exec: "e-0".into(),
            node: node.public().to_peer_id().to_string(),
            public_key: hex::encode(node.public().encode_protobuf()),
            commitment: hex::encode(c),
            exit_code: 0,
            commit_signature: hex::encode(node.sign(&commit_statement(&job, "e-0", &c, 0)).unwrap()),
            result: Some(result.to_string()),
            nonce: Some(hex::encode(nonce)),
            reveal_signature: Some(hex::encode(node.sign(&reveal_statement(&job, "e-0", &result, &nonce)).unwrap())),
            verdict: "agreed".into(),
        };
        let r = Receipt {
            version: receipt::VERSION,
            job: "j".into(),
            job_cid: job.to_string(),
            quorum: spec.quorum(),
            count: spec.redundancy.count,
            spec,
            result: Some(result.to_string()),
            failure: None,
            submitter: None,
            executions: vec![att],
            requester: String::new(),
            requester_key: String::new(),
            created_ms: 1,
            completed_ms: 2,
            signature: String::new(),
        };
        let bytes = r.sign(requester).unwrap().1;
        (raw_cid(&bytes), bytes)
    }

    struct Chain {
        pipeline: Pipeline,
        receipt: PipelineReceipt,
        blocks: HashMap<Cid, Vec<u8>>,
        key: Keypair,
    }

    /// A two-step chain, a -> b (b reads `outputs/parts` of a's result),
    /// run and receipted; the pipeline receipt unsigned.
    fn chain() -> Chain {
        let pipeline = Pipeline::parse(&yaml(&[("a", ""), ("b", "{from: a, path: parts, mount: /in}")])).unwrap();
        let key = Keypair::generate_ed25519();
        let (ra, rb) = (raw_cid(b"result of a"), raw_cid(b"result of b"));
        let mut blocks = HashMap::new();
        let mut steps = Vec::new();
        let mut results = BTreeMap::new();
        for (name, result) in [("a", ra), ("b", rb)] {
            let step = &pipeline.steps[name];
            let spec = step.resolve(&results).unwrap();
            let job = job_cid(&spec);
            let (cid, bytes) = job_receipt(spec, result, &key);
            blocks.insert(cid, bytes);
            steps.push(StepReceipt {
                name: name.into(),
                job_cid: job.to_string(),
                receipt: cid.to_string(),
                result: result.to_string(),
                from: step.from.clone(),
            });
            results.insert(name.to_string(), result);
        }
        blocks.insert(pipeline.cid(), pipeline.to_json().into_bytes());
        let receipt = PipelineReceipt {
            kind: RECEIPT_KIND.into(),
            version: RECEIPT_VERSION,
            pipeline: "p-1".into(),
            document: pipeline.cid().to_string(),
            submitter: None,
            steps,
            requester: String::new(),
            requester_key: String::new(),
            created_ms: 1,
            completed_ms: 3,
            signature: String::new(),
        };
        Chain { pipeline, receipt, blocks, key }
    }

    fn check(r: &PipelineReceipt, key: &Keypair, blocks: &HashMap<Cid, Vec<u8>>) -> Result<VerifiedPipeline, Error> {
        let bytes = r.clone().sign(key).unwrap().1;
        verify_pipeline(&bytes, Some(&raw_cid(&bytes)), None, &|c: &Cid| blocks.get(c).cloned())
    }

    #[test]
    fn a_chained_pipeline_receipt_verifies() {
        let c = chain();
        assert_eq!(c.receipt.steps[1].from, c.pipeline.steps["b"].from);
        let v = check(&c.receipt, &c.key, &c.blocks).unwrap();
        let names: Vec<&str> = v.steps.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(v.steps[0].1.result, Some(raw_cid(b"result of a")));
        assert_eq!(v.steps[1].1.result, Some(raw_cid(b"result of b")));
        assert_eq!(v.steps[1].1.quorum, 1);

        // The trusted set reaches the step receipts.
        let (signed, bytes) = c.receipt.clone().sign(&c.key).unwrap();
        let nobody = BTreeSet::new();
        let get = |cid: &Cid| c.blocks.get(cid).cloned();
        let e = verify_pipeline(&bytes, None, Some(&nobody), &get).unwrap_err();
        assert!(matches!(&e, Error::StepReceipt { step, source: receipt::Error::Quorum { .. } } if step == "a"), "{e}");

        assert!(is_pipeline_receipt(&bytes));
        assert!(!is_pipeline_receipt(c.blocks.values().next().unwrap()), "a job receipt is not one");
        assert!(!is_pipeline_receipt(b"not json"));
        assert!(!is_pipeline_receipt(b"{\"kind\": \"other\"}"));
        assert_eq!(serde_json::from_slice::<PipelineReceipt>(&bytes).unwrap(), signed);
    }

    #[test]
    fn every_pipeline_tampering_is_named() {
        let c = chain();
        let a_receipt: Cid = c.receipt.steps[0].receipt.parse().unwrap();
        let b_receipt: Cid = c.receipt.steps[1].receipt.parse().unwrap();

        // A step receipt missing from the store.
        let mut blocks = c.blocks.clone();
        blocks.remove(&a_receipt);
        let e = check(&c.receipt, &c.key, &blocks).unwrap_err();
        assert_eq!(e, Error::MissingBlock { step: "a".into(), cid: a_receipt.to_string() });
        assert!(e.to_string().contains(&format!("fetch it first (shoal get {a_receipt})")), "{e}");

        // A step receipt whose bytes are not its CID's.
        let mut blocks = c.blocks.clone();
        blocks.insert(a_receipt, c.blocks[&b_receipt].clone());
        let e = check(&c.receipt, &c.key, &blocks).unwrap_err();
        assert!(
            matches!(&e, Error::StepReceipt { step, source: receipt::Error::WrongCid { .. } } if step == "a"),
            "{e}"
        );

        // a ran again to another result: its receipt and the pipeline
        // receipt agree, but b read the old one.
        let mut t = c.receipt.clone();
        let other = raw_cid(b"another result of a");
        let spec = c.pipeline.steps["a"].spec.clone();
        let (cid, bytes) = job_receipt(spec, other, &c.key);
        let mut blocks = c.blocks.clone();
        blocks.insert(cid, bytes);
        t.steps[0].receipt = cid.to_string();
        t.steps[0].result = other.to_string();
        let e = check(&t, &c.key, &blocks).unwrap_err();
        assert!(matches!(&e, Error::FromMismatch { step, input: 0, from, .. } if step == "b" && from == "a"), "{e}");
        assert!(e.to_string().contains("the steps do not chain"), "{e}");

        // The pipeline receipt claims a result its step receipt does not prove.
        let mut t = c.receipt.clone();
        t.steps[1].result = other.to_string();
        let e = check(&t, &c.key, &c.blocks).unwrap_err();
        assert!(matches!(&e, Error::Mismatch { step, what: "result", .. } if step == "b"), "{e}");
        let mut t = c.receipt.clone();
        t.steps[1].job_cid = t.steps[0].job_cid.clone();
        let e = check(&t, &c.key, &c.blocks).unwrap_err();
        assert!(matches!(&e, Error::Mismatch { step, what: "job cid", .. } if step == "b"), "{e}");

        // b reading another path of a than its spec did.
        let mut t = c.receipt.clone();
        t.steps[1].from[0].path = Some("other".into());
        let e = check(&t, &c.key, &c.blocks).unwrap_err();
        assert!(matches!(&e, Error::FromMismatch { step, .. } if step == "b"), "{e}");

        // A flipped byte in the requester's signature.
        let (mut signed, _) = c.receipt.clone().sign(&c.key).unwrap();
        let mut sig = hex::decode(&signed.signature).unwrap();
        sig[0] ^= 1;
        signed.signature = hex::encode(sig);
        let bytes = serde_json::to_vec(&signed).unwrap();
        let e = verify_pipeline(&bytes, None, None, &|cid: &Cid| c.blocks.get(cid).cloned()).unwrap_err();
        assert!(matches!(&e, Error::Receipt(receipt::Error::Signature { .. })), "{e}");
        assert!(e.to_string().contains("the requester's signature of the pipeline receipt"), "{e}");

        // The pipeline receipt's own bytes and CID.
        let bytes = c.receipt.clone().sign(&c.key).unwrap().1;
        let e = verify_pipeline(&bytes, Some(&a_receipt), None, &|cid: &Cid| c.blocks.get(cid).cloned()).unwrap_err();
        assert!(matches!(e, Error::Receipt(receipt::Error::WrongCid { .. })), "{e}");

        // A repeated step, and a `from` naming a step the receipt lacks.
        let mut t = c.receipt.clone();
        t.steps.push(t.steps[0].clone());
        assert_eq!(check(&t, &c.key, &c.blocks).unwrap_err(), Error::DuplicateStep("a".into()));
        let mut t = c.receipt.clone();
        t.steps.remove(0);
        let e = check(&t, &c.key, &c.blocks).unwrap_err();
        assert!(matches!(&e, Error::MissingStep { step, from, .. } if step == "b" && from == "a"), "{e}");

        // Not a pipeline receipt at all.
        let job = &c.blocks[&a_receipt];
        let e = verify_pipeline(job, None, None, &|cid: &Cid| c.blocks.get(cid).cloned()).unwrap_err();
        assert!(matches!(e, Error::Malformed(_)), "{e}");
        let mut t = c.receipt.clone();
        t.version = 2;
        assert_eq!(check(&t, &c.key, &c.blocks).unwrap_err(), Error::Version(2));
    }

    #[test]
    fn the_steps_must_be_the_submitted_pipelines() {
        let c = chain();
        // The document is not in the store.
        let mut blocks = c.blocks.clone();
        blocks.remove(&c.pipeline.cid());
        let e = check(&c.receipt, &c.key, &blocks).unwrap_err();
        assert!(matches!(&e, Error::MissingBlock { .. }), "{e}");
        // A receipt naming another pipeline, whose step a runs otherwise.
        let mut other = c.pipeline.clone();
        other.steps.get_mut("a").unwrap().spec.task.args.push("changed".into());
        let mut blocks = c.blocks.clone();
        blocks.insert(other.cid(), other.to_json().into_bytes());
        let mut t = c.receipt.clone();
        t.document = other.cid().to_string();
        let e = check(&t, &c.key, &blocks).unwrap_err();
        assert!(matches!(&e, Error::Mismatch { step, .. } if step == "a"), "{e}");
        // One with a step fewer.
        let mut fewer = c.pipeline.clone();
        fewer.steps.remove("b");
        blocks.insert(fewer.cid(), fewer.to_json().into_bytes());
        let mut t = c.receipt.clone();
        t.document = fewer.cid().to_string();
        let e = check(&t, &c.key, &blocks).unwrap_err();
        assert!(e.to_string().contains("not the pipeline's"), "{e}");
    }

    /// `c` with step `i`'s job receipt changed by `edit` and signed again.
    fn with_step_receipt(
        c: &Chain,
        i: usize,
        edit: impl FnOnce(&mut Receipt),
    ) -> (PipelineReceipt, HashMap<Cid, Vec<u8>>) {
        let (mut t, mut blocks) = (c.receipt.clone(), c.blocks.clone());
        let old: Cid = t.steps[i].receipt.parse().unwrap();
        let mut r: Receipt = serde_json::from_slice(&c.blocks[&old]).unwrap();
        edit(&mut r);
        let bytes = r.sign(&c.key).unwrap().1;
        t.steps[i].receipt = raw_cid(&bytes).to_string();
        blocks.insert(raw_cid(&bytes), bytes);
        (t, blocks)
    }

    #[test]
    fn a_failed_step_has_no_place_in_a_pipeline_receipt() {
        let c = chain();
        let (t, blocks) = with_step_receipt(&c, 0, |r| {
            r.result = None;
            r.failure = Some("timed out".into());
        });
        let e = check(&t, &c.key, &blocks).unwrap_err();
        assert_eq!(e, Error::Failed { step: "a".into(), failure: "timed out".into() });
        assert!(e.to_string().contains("its job failed (timed out)"), "{e}");
    }

    #[test]
    fn the_pipelines_submitter_is_checked_and_reused_steps_keep_their_own() {
        let c = chain();
        let alice = Keypair::generate_ed25519();
        let at = 1_700_000_000_000;
        let claim = |signs: &Cid, pipeline: Option<String>| Submitter {
            key: alice.public().to_peer_id().to_string(),
            at_ms: at,
            signature: hex::encode(alice.sign(&receipt::submit_statement(signs, at)).unwrap()),
            pipeline,
        };
        // The pipeline's own claim signs its document.
        let mut t = c.receipt.clone();
        t.submitter = Some(claim(&c.pipeline.cid(), None));
        let v = check(&t, &c.key, &c.blocks).unwrap();
        assert_eq!(v.submitter, Some(alice.public().to_peer_id().to_string()));
        // A claim over another pipeline is refused.
        t.submitter = Some(claim(&raw_cid(b"another pipeline"), None));
        let e = check(&t, &c.key, &c.blocks).unwrap_err();
        assert!(e.to_string().contains("the pipeline's submitter"), "{e}");

        // A step answered from the cache keeps the receipt of an earlier
        // run, with that run's claim (here a step of another pipeline, by
        // alice): it verifies, and the claim is that run's.
        let other = raw_cid(b"another pipeline");
        let (t, blocks) = with_step_receipt(&c, 0, |r| r.submitter = Some(claim(&other, Some(other.to_string()))));
        let v = check(&t, &c.key, &blocks).unwrap();
        assert_eq!(v.steps[0].1.submitter_pipeline, Some(other));
        // Such a claim is still checked by the step's own receipt: forged,
        // it fails.
        let (t, blocks) =
            with_step_receipt(&c, 0, |r| r.submitter = Some(claim(&other, Some(c.pipeline.cid().to_string()))));
        let e = check(&t, &c.key, &blocks).unwrap_err();
        assert!(
            matches!(&e, Error::StepReceipt { step, source: receipt::Error::Signature { .. } } if step == "a"),
            "{e}"
        );
    }
}
