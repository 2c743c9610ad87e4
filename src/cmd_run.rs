//! `shoal run`: run one WASI job locally.
//!
//! This module only parses the command line and maps it onto
//! [`shoal_runtime::Task`]; resolving `SRC` (a local path or, once wired to
//! storage, a CID) is the caller's job, passed in as a closure.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use shoal_runtime::{Entry, Limits, Mode, ModuleSource, Mount, Outcome, Task};

/// Run a WebAssembly (WASI preview1) module in the sandbox.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Mount SRC read-only at GUEST_PATH (absolute, e.g. /inputs); SRC is a
    /// directory or file. Repeatable.
    #[arg(long = "input", value_name = "SRC:GUEST_PATH", value_parser = parse_input)]
    pub inputs: Vec<InputSpec>,
    /// Set an environment variable for the job. Repeatable; nothing is
    /// inherited from this process.
    #[arg(long = "env", value_name = "K=V", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Linear memory limit, e.g. 512MiB.
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<bytesize::ByteSize>,
    /// Wall-clock limit, e.g. 60s or 2m.
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<humantime::Duration>,
    /// CPU limit in fuel units (about one per Wasm instruction).
    #[arg(long, value_name = "N")]
    pub fuel: Option<u64>,
    /// Export to call for a command module.
    #[arg(
        long,
        value_name = "NAME",
        default_value = "_start",
        conflicts_with = "invoke"
    )]
    pub entrypoint: String,
    /// Treat the module as a reactor: call `_initialize`, then EXPORT.
    #[arg(long, value_name = "EXPORT")]
    pub invoke: Option<String>,
    /// Use real clocks and OS randomness (the result is marked as such).
    #[arg(long)]
    pub nondeterministic: bool,
    /// Print only the job's own output.
    #[arg(short, long)]
    pub quiet: bool,
    /// Print the outcome as JSON.
    #[arg(long)]
    pub json: bool,
    /// The module: a .wasm path (or, with storage, a CID).
    #[arg(value_name = "MODULE")]
    pub module: String,
    /// Arguments passed to the job (after `--`).
    #[arg(last = true, value_name = "ARGS")]
    pub args: Vec<String>,
}

/// One `--input SRC:GUEST_PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputSpec {
    /// Where the data comes from: a host path, or a CID once storage is
    /// wired in.
    pub src: String,
    /// Absolute guest path.
    pub guest: String,
}

fn parse_input(s: &str) -> Result<InputSpec, String> {
    // The guest path is absolute, so split at the last ":/": SRC itself may
    // contain colons.
    let at = s
        .rfind(":/")
        .ok_or_else(|| format!("expected SRC:GUEST_PATH with an absolute guest path, got {s:?}"))?;
    let (src, guest) = (&s[..at], &s[at + 1..]);
    if src.is_empty() {
        return Err(format!("empty SRC in {s:?}"));
    }
    Ok(InputSpec {
        src: src.to_owned(),
        guest: guest.to_owned(),
    })
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected K=V, got {s:?}")),
    }
}

impl RunArgs {
    /// The limits: defaults overridden by the flags given.
    pub fn limits(&self) -> Limits {
        let mut l = Limits::default();
        if let Some(m) = self.memory {
            l.memory = m.as_u64();
        }
        if let Some(t) = self.timeout {
            l.timeout = Duration::from(t);
        }
        if let Some(f) = self.fuel {
            l.fuel = f;
        }
        l
    }

    /// How the module is entered.
    pub fn entry(&self) -> Entry {
        match &self.invoke {
            Some(export) => Entry::Reactor {
                export: export.clone(),
            },
            None => Entry::Command {
                export: self.entrypoint.clone(),
            },
        }
    }

    /// Builds the task. `resolve` turns a `MODULE` or input `SRC` into a
    /// host path (identity for local files; fetch-and-materialise for
    /// CIDs). `seed` seeds deterministic randomness: pass the job spec's
    /// hash. `outputs` is the host directory mounted at `/outputs`.
    pub fn to_task(
        &self,
        mut resolve: impl FnMut(&str) -> anyhow::Result<PathBuf>,
        outputs: Option<PathBuf>,
        seed: [u8; 32],
    ) -> anyhow::Result<Task> {
        let module = resolve(&self.module).with_context(|| format!("module {}", self.module))?;
        let mut task = Task::new(ModuleSource::Path(module));
        task.program_name = self
            .module
            .rsplit('/')
            .next()
            .unwrap_or(&self.module)
            .to_owned();
        task.args = self.args.clone();
        task.env = self.env.clone();
        let mut names: Vec<&str> = task.env.iter().map(|(k, _)| k.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            bail!("--env {} given twice", w[0]);
        }
        for input in &self.inputs {
            let host = resolve(&input.src).with_context(|| format!("input {}", input.src))?;
            task.mounts.push(Mount::new(host, input.guest.clone()));
        }
        task.outputs = outputs;
        task.entry = self.entry();
        task.limits = self.limits();
        task.mode = if self.nondeterministic {
            Mode::Nondeterministic
        } else {
            Mode::Deterministic { seed }
        };
        Ok(task)
    }
}

/// The outcome as JSON for `--json`. Captured output is included as UTF-8
/// (lossy).
pub fn outcome_json(o: &Outcome) -> serde_json::Value {
    serde_json::json!({
        "success": o.success(),
        "exit_code": o.exit_code,
        "failure": o.failure.as_ref().map(|f| f.to_string()),
        "stdout": String::from_utf8_lossy(&o.stdout.bytes),
        "stdout_truncated": o.stdout.truncated,
        "stderr": String::from_utf8_lossy(&o.stderr.bytes),
        "stderr_truncated": o.stderr.truncated,
        "fuel_consumed": o.fuel_consumed,
        "wall_time_ms": o.wall_time.as_secs_f64() * 1e3,
        "deterministic": o.deterministic,
        "outputs": {"bytes": o.outputs.bytes, "files": o.outputs.files, "symlinks": o.outputs.symlinks},
        "cached": o.cached,
    })
}

/// Process exit status for an outcome: the job's own code when it exited,
/// 1 for a non-exit failure (limit, trap, bad module), 0 on success.
pub fn exit_status(o: &Outcome) -> i32 {
    match (o.success(), o.exit_code) {
        (true, _) => 0,
        (false, Some(c)) if c != 0 => c,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    #[test]
    fn parses_all_flags() {
        let cli = Cli::try_parse_from([
            "shoal",
            "--input",
            "data/a:b.csv:/inputs/a.csv",
            "--input",
            "dir:/in",
            "--env",
            "B=2",
            "--env",
            "A=x=y",
            "--memory",
            "64MiB",
            "--timeout",
            "1m 30s",
            "--fuel",
            "1000",
            "--nondeterministic",
            "-q",
            "--json",
            "job.wasm",
            "--",
            "-v",
            "x",
        ])
        .unwrap();
        let r = cli.run;
        assert_eq!(
            r.inputs[0],
            InputSpec {
                src: "data/a:b.csv".into(),
                guest: "/inputs/a.csv".into()
            }
        );
        assert_eq!(r.env[1], ("A".into(), "x=y".into()));
        let l = r.limits();
        assert_eq!(l.memory, 64 << 20);
        assert_eq!(l.timeout, Duration::from_secs(90));
        assert_eq!(l.fuel, 1000);
        assert_eq!(r.args, vec!["-v", "x"]);
        let t = r.to_task(|s| Ok(PathBuf::from(s)), None, [3; 32]).unwrap();
        assert_eq!(t.mode, Mode::Nondeterministic);
        assert_eq!(t.mounts.len(), 2);
        assert_eq!(t.program_name, "job.wasm");
    }

    #[test]
    fn reactor_and_bad_values() {
        let r = Cli::try_parse_from(["shoal", "--invoke", "run", "m.wasm"])
            .unwrap()
            .run;
        assert_eq!(
            r.entry(),
            Entry::Reactor {
                export: "run".into()
            }
        );
        assert!(Cli::try_parse_from(["shoal", "--invoke", "a", "--entrypoint", "b", "m"]).is_err());
        assert!(Cli::try_parse_from(["shoal", "--input", "relative", "m"]).is_err());
        assert!(Cli::try_parse_from(["shoal", "--env", "=v", "m"]).is_err());
        assert!(Cli::try_parse_from(["shoal", "--memory", "lots", "m"]).is_err());
    }
}
