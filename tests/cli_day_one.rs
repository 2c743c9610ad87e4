//! What a new user meets on day one with the embedded store: a private
//! home, inputs checked before anything is imported, runs that leave no
//! pin when they fail (or with `--no-pin`), the same bounds as the job
//! spec, a partial CAR that fails, and `--json` documents with typed
//! fields.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::Value;

fn sample(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    BUILT.get_or_init(|| {
        let st = Command::new("make").arg("-C").arg(root.join("samples")).status().expect("make");
        assert!(st.success(), "building samples failed: run scripts/setup.sh --samples");
    });
    root.join("samples/build").join(format!("{name}.wasm"))
}

fn texts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/data/texts")
}

fn shoal(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shoal"))
        .env("SHOAL_HOME", home)
        .env_remove("SHOAL_IPFS_API")
        .env_remove("SHOAL_NODE")
        .args(args)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok(home: &Path, args: &[&str]) -> String {
    let o = shoal(home, args);
    assert!(o.status.success(), "shoal {args:?} failed: {}", text(&o.stderr));
    text(&o.stdout)
}

/// Fails with one lowercase `error:` line, which is returned.
fn fails(home: &Path, args: &[&str]) -> String {
    let o = shoal(home, args);
    assert!(!o.status.success(), "shoal {args:?} should fail: {}", text(&o.stdout));
    let err = text(&o.stderr);
    let line = err.lines().find(|l| l.starts_with("error: ")).unwrap_or_else(|| panic!("no error line: {err}"));
    assert!(!line["error: ".len()..].starts_with(char::is_uppercase), "lowercase: {line}");
    line.to_owned()
}

/// One JSON document on stdout.
fn json(home: &Path, args: &[&str]) -> Value {
    let out = ok(home, args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("shoal {args:?} printed no single json document ({e}): {out}"))
}

/// The pins and the block count of a store: what "unchanged" means.
fn store_state(home: &Path) -> (String, Value) {
    let pins = ok(home, &["pin", "ls"]);
    let stat = json(home, &["--json", "repo", "stat"]);
    (pins, stat["blocks"].clone())
}

#[test]
fn a_new_home_and_everything_in_it_is_private() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    // A user's usual umask: group and others may read what they create.
    ok(&home, &["add", texts().to_str().unwrap()]);
    ok(&home, &["run", "--input", &format!("{}:/inputs", texts().display()), sample("wordcount").to_str().unwrap()]);
    let mut seen = 0;
    let mut stack = vec![home.clone()];
    while let Some(p) = stack.pop() {
        let meta = std::fs::symlink_metadata(&p).unwrap();
        let mode = meta.permissions().mode() & 0o777;
        if meta.is_dir() {
            assert_eq!(mode, 0o700, "{} is {mode:o}", p.display());
            stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        } else {
            assert_eq!(mode & 0o077, 0, "{} is {mode:o}", p.display());
        }
        seen += 1;
    }
    assert!(seen > 5, "the home holds the store and the module cache");
}

#[test]
fn an_existing_open_home_is_tightened_with_a_note() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    ok(&home, &["add", texts().to_str().unwrap()]);
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = shoal(&home, &["pin", "ls"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(err.contains("note:") && err.contains(home.to_str().unwrap()), "{err}");
    assert_eq!(std::fs::metadata(&home).unwrap().permissions().mode() & 0o777, 0o700);
    // Said once: the next command finds it private.
    assert!(!text(&shoal(&home, &["pin", "ls"]).stderr).contains("note:"));
}

#[test]
fn inputs_and_modules_are_checked_before_anything_is_imported() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    ok(&home, &["add", texts().to_str().unwrap()]);
    let before = store_state(&home);
    let secret = t.path().join("shadow");
    std::fs::write(&secret, b"root:$6$secret:19000:0:99999:7:::\n").unwrap();
    let hello = sample("hello");
    let hello = hello.to_str().unwrap();
    // A file mounted at the root (as /etc/shadow:/x was).
    let e = fails(&home, &["run", "--input", &format!("{}:/x", secret.display()), hello]);
    assert!(e.contains("below a directory"), "{e}");
    // A directory given as the module.
    let e = fails(&home, &["run", sample("hello").parent().unwrap().to_str().unwrap()]);
    assert!(e.contains("not a file"), "{e}");
    // Inputs over --max-input.
    let e = fails(&home, &["run", "--max-input", "10B", "--input", &format!("{}:/inputs", texts().display()), hello]);
    assert!(e.contains("--max-input"), "{e}");
    // A variable given twice, a guest path under /outputs.
    let e = fails(&home, &["run", "--env", "A=1", "--env", "A=2", hello]);
    assert!(e.contains("twice"), "{e}");
    let e = fails(&home, &["run", "--input", &format!("{}:/outputs/x", texts().display()), hello]);
    assert!(e.contains("/outputs"), "{e}");
    assert_eq!(store_state(&home), before, "nothing was imported or pinned");
}

#[test]
fn a_failed_run_pins_nothing_new_and_no_pin_leaves_no_pin() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    ok(&home, &["pin", "ls"]);
    // A CID nobody has: the module is imported first, the run then fails.
    let other = tempfile::tempdir().unwrap();
    let absent = ok(other.path(), &["add", "-q", texts().to_str().unwrap()]).trim().to_owned();
    let e = fails(&home, &["run", "--input", &format!("{absent}:/inputs"), sample("wordcount").to_str().unwrap()]);
    assert!(e.contains(&absent), "the missing cid is named: {e}");
    assert_eq!(ok(&home, &["pin", "ls"]), "", "the module's pin was taken back");
    // --no-pin: the job runs, and nothing stays pinned.
    let out = ok(
        &home,
        &[
            "run",
            "-q",
            "--no-pin",
            "--input",
            &format!("{}:/inputs", texts().display()),
            sample("wordcount").to_str().unwrap(),
        ],
    );
    let result = out.lines().last().unwrap().to_owned();
    assert!(result.starts_with("baf"), "{out}");
    assert_eq!(ok(&home, &["pin", "ls"]), "");
    // By default the inputs, the module and the result stay pinned.
    let out = ok(
        &home,
        &["run", "-q", "--input", &format!("{}:/inputs", texts().display()), sample("wordcount").to_str().unwrap()],
    );
    assert_eq!(out.lines().last().unwrap(), result, "same job, same result");
    let pins = ok(&home, &["pin", "ls"]);
    assert_eq!(pins.lines().count(), 3, "{pins}");
    assert!(pins.contains(&result), "{pins}");
}

#[test]
fn the_cli_takes_the_specs_units_and_bounds() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let hello = sample("hello");
    let hello = hello.to_str().unwrap();
    // Bare seconds, as in a spec.
    ok(&home, &["run", "--timeout", "10", hello]);
    for (flag, value, says) in [
        ("--timeout", "0", "must be more than 0"),
        ("--fuel", "0", "must be more than 0"),
        ("--memory", "0", "must be more than 0"),
        ("--memory", "1TiB", "the most is 4 GiB"),
        ("--timeout", "30d", "must be at most"),
    ] {
        let o = shoal(&home, &["run", flag, value, hello]);
        assert!(!o.status.success(), "{flag} {value} accepted");
        let err = text(&o.stderr);
        assert!(err.contains(says), "{flag} {value}: {err}");
    }
}

#[test]
fn a_partial_car_import_fails() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    let root = ok(&a, &["add", "-q", texts().to_str().unwrap()]).trim().to_owned();
    let car = t.path().join("x.car");
    let doc = json(&a, &["--json", "car", "export", &root, "-o", car.to_str().unwrap()]);
    assert!(doc["blocks"].as_u64().unwrap() > 1, "{doc}");
    let bytes = std::fs::read(&car).unwrap();
    let whole = ok(&b, &["car", "import", car.to_str().unwrap()]);
    assert!(whole.contains(&root), "{whole}");
    // The last block cut off: the root is incomplete.
    let c = tempfile::tempdir().unwrap();
    let last_block = bytes.len() - 20;
    let cut = t.path().join("cut.car");
    std::fs::write(&cut, truncate_to_blocks(&bytes, last_block)).unwrap();
    let e = fails(c.path(), &["car", "import", cut.to_str().unwrap()]);
    assert!(e.contains("incomplete") && e.contains(&root), "{e}");
    let o = shoal(c.path(), &["--json", "car", "import", cut.to_str().unwrap()]);
    assert!(!o.status.success());
    let doc: Value = serde_json::from_slice(&o.stdout).expect("one json document");
    assert_eq!(doc["incomplete"][0], Value::String(root.clone()), "{doc}");
    assert!(doc["error"].as_str().unwrap().contains("incomplete"), "{doc}");
    assert_eq!(ok(c.path(), &["pin", "ls"]), "");
}

/// The CAR's header and whole blocks, up to byte `before` (a CARv1 is a
/// varint-framed header then varint-framed blocks).
fn truncate_to_blocks(car: &[u8], before: usize) -> Vec<u8> {
    fn varint(b: &[u8]) -> (usize, usize) {
        let (mut v, mut shift, mut i) = (0usize, 0, 0);
        loop {
            v |= ((b[i] & 0x7f) as usize) << shift;
            i += 1;
            if b[i - 1] & 0x80 == 0 {
                return (v, i);
            }
            shift += 7;
        }
    }
    let mut at = 0;
    let mut end = 0;
    while at < car.len() {
        let (len, n) = varint(&car[at..]);
        if at + n + len > before {
            break;
        }
        at += n + len;
        end = at;
    }
    car[..end].to_vec()
}

#[test]
fn json_documents_have_typed_fields() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let code = sample("exitcode");
    let run = shoal(&home, &["--json", "run", code.to_str().unwrap(), "--", "7"]);
    assert_eq!(run.status.code(), Some(7));
    let doc: Value = serde_json::from_slice(&run.stdout).expect("one json document");
    assert_eq!(doc["exit_status"], 7);
    assert_eq!(doc["outcome"]["exit_code"], 7);
    let result = doc["result"].as_str().unwrap().to_owned();
    let inspect = json(&home, &["--json", "inspect", &result]);
    assert_eq!(inspect["exit_code"], 7, "a number, as `run --json` has it: {inspect}");
    assert!(inspect["stdout_bytes"].is_u64(), "{inspect}");
    let add = json(&home, &["--json", "add", texts().to_str().unwrap()]);
    assert!(add["root"].is_string(), "{add}");
    let stat = json(&home, &["--json", "repo", "stat"]);
    assert!(stat["blocks"].is_u64() && stat["pins"].is_u64(), "{stat}");
    let pins = json(&home, &["--json", "pin", "ls"]);
    assert!(pins.as_array().is_some_and(|p| p.len() == 3), "{pins}");
    let verify = json(&home, &["--json", "repo", "verify"]);
    assert!(verify["checked"].is_u64(), "{verify}");
    // An error is one document too.
    let o = shoal(&home, &["--json", "inspect", "not-a-cid"]);
    assert!(!o.status.success());
    let doc: Value = serde_json::from_slice(&o.stdout).expect("one json document");
    assert!(doc["error"].is_string(), "{doc}");
}
