//! `shoal run` and `shoal inspect` as a user runs them, on the embedded
//! store with no daemon.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

fn sample(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    BUILT.get_or_init(|| {
        let st = Command::new("make").arg("-C").arg(root.join("samples")).status().expect("make");
        assert!(st.success(), "building samples failed: run scripts/setup.sh --samples");
    });
    root.join("samples/build").join(format!("{name}.wasm"))
}

fn shoal(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shoal")).env("SHOAL_HOME", home).args(args).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn run_prints_output_then_the_result_and_exits_like_the_guest() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/data/texts");
    let wc = sample("wordcount");
    let input = format!("{}:/inputs", data.display());
    let o = shoal(&home, &["run", "--input", &input, wc.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(out.contains("total"), "the guest's stdout comes first: {out}");
    let lines: Vec<&str> = out.lines().collect();
    let result = lines[lines.len() - 3].strip_prefix("result: ").expect(&out);
    assert_eq!(lines[lines.len() - 2], "exit code: 0");
    assert!(lines[lines.len() - 1].starts_with("outputs: "));

    // -q: the result CID is the last line; the same job gives the same CID.
    let q = shoal(&home, &["run", "-q", "--input", &input, wc.to_str().unwrap()]);
    assert_eq!(text(&q.stdout).lines().last().unwrap(), result);

    // The inputs are now pinned by CID: running over the CID gives the same.
    let data_cid = text(&shoal(&home, &["add", "-q", data.to_str().unwrap()]).stdout).trim().to_string();
    let module_cid = text(&shoal(&home, &["add", "-q", wc.to_str().unwrap()]).stdout).trim().to_string();
    let by_cid = shoal(&home, &["run", "-q", "--input", &format!("{data_cid}:/inputs"), &module_cid]);
    // argv[0] differs (it is the module as given), which the guest does not print.
    assert_eq!(text(&by_cid.stdout).lines().last().unwrap(), result, "{}", text(&by_cid.stderr));

    let i = shoal(&home, &["inspect", result]);
    let s = text(&i.stdout);
    assert!(s.contains("exit code: 0") && s.contains("counts.tsv"), "{s}");
    let j = shoal(&home, &["--json", "inspect", result]);
    let v: serde_json::Value = serde_json::from_slice(&j.stdout).unwrap();
    assert_eq!(v["exit_code"], 0, "a number, as `run --json` has it");

    let e = shoal(&home, &["run", sample("exitcode").to_str().unwrap(), "--", "5"]);
    assert_eq!(e.status.code(), Some(5));
    assert!(text(&e.stdout).contains("exit code: 5"));
}

#[test]
fn bad_jobs_fail_clearly() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let not_wasm = t.path().join("x.wasm");
    std::fs::write(&not_wasm, b"hello").unwrap();
    let o = shoal(&home, &["run", not_wasm.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("not a wasm file"), "{}", text(&o.stderr));

    let o = shoal(&home, &["run", "--input", "/no/such/dir:/inputs", sample("hello").to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("/no/such/dir"), "{}", text(&o.stderr));

    let o = shoal(
        &home,
        &[
            "run",
            "--input",
            "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e:/inputs",
            sample("hello").to_str().unwrap(),
        ],
    );
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("not in the store"), "{}", text(&o.stderr));

    let o = shoal(&home, &["run", "--timeout", "200ms", sample("spin").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("timed out"), "{}", text(&o.stderr));

    let o = shoal(&home, &["run", "--frobnicate", sample("hello").to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("--frobnicate"));
}
