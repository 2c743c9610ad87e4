//! Shared test helpers: building the sample guests once per test binary.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use shoal_runtime::{Config, Executor, Task, TickSource};

pub fn samples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples")
}

/// Builds `samples/` (once per process) and returns the path of
/// `build/<name>.wasm`.
pub fn sample(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let clang = Command::new("clang").arg("--version").output();
        if clang.map(|o| !o.status.success()).unwrap_or(true) {
            return Err("clang not found: install clang lld wasi-libc libclang-rt-14-dev-wasm32 \
                        (scripts/setup.sh --samples)"
                .to_owned());
        }
        let out = Command::new("make")
            .arg("-C")
            .arg(samples_dir())
            .arg("-j2")
            .output()
            .map_err(|e| format!("cannot run make: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "building samples failed (install clang lld wasi-libc libclang-rt-14-dev-wasm32, \
                 scripts/setup.sh --samples):\n{}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    });
    if let Err(e) = built {
        panic!("{e}");
    }
    samples_dir().join("build").join(format!("{name}.wasm"))
}

/// One executor per test binary: creating engines (and their instance
/// pools) per test would be slow.
pub fn executor() -> &'static Executor {
    static EXEC: OnceLock<Executor> = OnceLock::new();
    EXEC.get_or_init(|| {
        let mut cfg = Config::default();
        cfg.tick = TickSource::Thread { interval: Duration::from_millis(5) };
        Executor::new(cfg).expect("executor")
    })
}

pub fn task(name: &str, args: &[&str]) -> Task {
    let mut t = Task::from_path(sample(name));
    t.program_name = format!("{name}.wasm");
    t.args = args.iter().map(|s| s.to_string()).collect();
    t
}

pub fn stdout(o: &shoal_runtime::Outcome) -> String {
    String::from_utf8_lossy(&o.stdout.bytes).into_owned()
}
