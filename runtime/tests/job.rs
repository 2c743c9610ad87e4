//! Jobs over content-addressed data: inputs by CID, results stored as one
//! CID, the same CID from independent runs, failures recorded in results.

mod common;

use shoal_runtime::job::{self, Input, JobError, Spec};
use shoal_runtime::{Config, Executor, TickSource};
use shoal_storage::importer::{Importer, Options};
use shoal_storage::{exporter, BlockStore, Cid, MemStore};

fn add(store: &dyn BlockStore, path: &std::path::Path) -> Cid {
    Importer::new(store, Options::default()).add_path(path).unwrap().root
}

fn cat(store: &dyn BlockStore, root: &Cid, path: &str) -> Vec<u8> {
    let segs: Vec<String> = path.split('/').filter(|s| !s.is_empty()).map(String::from).collect();
    let cid = exporter::resolve(store, root, &segs).unwrap();
    let mut out = Vec::new();
    exporter::cat(store, &cid, &mut out).unwrap();
    out
}

fn dataset() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("a.txt"), "one two three\nfour\n").unwrap();
    std::fs::write(d.path().join("b.txt"), "five six\n").unwrap();
    d
}

fn fresh_executor() -> Executor {
    let mut cfg = Config::default();
    cfg.tick = TickSource::Thread { interval: std::time::Duration::from_millis(5) };
    cfg.max_concurrent_jobs = 2;
    Executor::new(cfg).unwrap()
}

#[test]
fn wordcount_over_a_dataset_by_cid() {
    let store = MemStore::new();
    let data = dataset();
    let mut spec = Spec::new(add(&store, &common::sample("wordcount")));
    spec.inputs.push(Input { cid: add(&store, data.path()), path: vec![], guest: "/inputs".into() });
    let scratch = tempfile::tempdir().unwrap();
    let f = job::run(common::executor(), &store, &spec, scratch.path()).unwrap();
    assert_eq!(f.exit_status, 0, "{:?}", f.outcome.failure);
    assert_eq!(cat(&store, &f.result, "exitCode"), b"0");
    let stdout = String::from_utf8(cat(&store, &f.result, "stdout")).unwrap();
    assert!(stdout.contains("6") && stdout.contains("a.txt"), "{stdout}");
    let counts = String::from_utf8(cat(&store, &f.outputs, "counts.tsv")).unwrap();
    assert!(counts.contains("a.txt") && counts.contains("b.txt"), "{counts}");
    assert!(store.pin_ls().unwrap().iter().any(|(c, _)| *c == f.result), "the result is pinned");
    // Scratch space is cleaned up.
    assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0);
}

#[test]
fn a_result_left_unpinned_is_the_same_result_readable_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = shoal_storage::FsStore::open(dir.path()).unwrap();
    let data = dataset();
    let mut spec = Spec::new(add(&store, &common::sample("wordcount")));
    spec.inputs.push(Input { cid: add(&store, data.path()), path: vec![], guest: "/inputs".into() });
    spec.pin_result = false;
    let scratch = tempfile::tempdir().unwrap();
    let f = job::run(common::executor(), &store, &spec, scratch.path()).unwrap();
    assert!(store.pin_ls().unwrap().is_empty(), "left to the caller to pin");
    assert_eq!(cat(&store, &f.result, "exitCode"), b"0");
    // The flag is not part of the job: a pinned run gives the same CIDs.
    spec.pin_result = true;
    let pinned = job::run(common::executor(), &store, &spec, scratch.path()).unwrap();
    assert_eq!((pinned.spec, pinned.result), (f.spec, f.result));
    assert!(store.pin_ls().unwrap().iter().any(|(c, _)| *c == f.result));
}

#[test]
fn independent_runs_agree_on_the_result_cid() {
    let run_once = |deterministic: bool| {
        let store = MemStore::new();
        let mut spec = Spec::new(add(&store, &common::sample("entropy")));
        spec.deterministic = deterministic;
        let exec = fresh_executor();
        let scratch = tempfile::tempdir().unwrap();
        let f = job::run(&exec, &store, &spec, scratch.path()).unwrap();
        assert_eq!(f.exit_status, 0, "{:?}", f.outcome.failure);
        (f.result, cat(&store, &f.result, "stdout"))
    };
    let (a, out_a) = run_once(true);
    let (b, out_b) = run_once(true);
    assert_eq!(a, b, "deterministic runs must give one result cid");
    assert_eq!(out_a, out_b);
    let (c, out_c) = run_once(false);
    assert_ne!(out_a, out_c, "real clocks and randomness differ");
    assert_ne!(a, c);
}

#[test]
fn different_specs_see_different_randomness() {
    let store = MemStore::new();
    let module = add(&store, &common::sample("entropy"));
    let scratch = tempfile::tempdir().unwrap();
    let mut one = Spec::new(module);
    one.args = vec!["x".into()];
    let two = Spec::new(module);
    assert_ne!(one.id(), two.id());
    let a = job::run(common::executor(), &store, &one, scratch.path()).unwrap();
    let b = job::run(common::executor(), &store, &two, scratch.path()).unwrap();
    assert_ne!(cat(&store, &a.result, "stdout"), cat(&store, &b.result, "stdout"));
}

#[test]
fn a_trap_is_a_failed_result_with_its_backtrace() {
    let store = MemStore::new();
    let spec = Spec::new(add(&store, &common::sample("trap")));
    let scratch = tempfile::tempdir().unwrap();
    let f = job::run(common::executor(), &store, &spec, scratch.path()).unwrap();
    assert_eq!(f.exit_status, 1);
    assert_eq!(cat(&store, &f.result, "exitCode"), b"1");
    let failure = String::from_utf8(cat(&store, &f.result, "failure")).unwrap();
    assert!(failure.contains("trap"), "{failure}");
    let stderr = String::from_utf8(cat(&store, &f.result, "stderr")).unwrap();
    assert!(stderr.contains("wasm backtrace"), "{stderr}");
    // What a compute node reports is what the result holds.
    assert_eq!(f.stderr, stderr.as_bytes());
    assert_eq!(f.failure.as_deref(), Some(failure.trim_end()));
}

#[test]
fn exit_codes_are_recorded() {
    let store = MemStore::new();
    let mut spec = Spec::new(add(&store, &common::sample("exitcode")));
    spec.args = vec!["42".into()];
    let scratch = tempfile::tempdir().unwrap();
    let f = job::run(common::executor(), &store, &spec, scratch.path()).unwrap();
    assert_eq!(f.exit_status, 42);
    assert_eq!(cat(&store, &f.result, "exitCode"), b"42");
}

#[test]
fn a_missing_input_is_a_clear_error_not_a_result() {
    let store = MemStore::new();
    let mut spec = Spec::new(add(&store, &common::sample("hello")));
    let absent = Importer::new(&MemStore::new(), Options::default()).add_bytes(b"elsewhere").unwrap().root;
    spec.inputs.push(Input { cid: absent, path: vec![], guest: "/inputs".into() });
    let scratch = tempfile::tempdir().unwrap();
    let err = job::run(common::executor(), &store, &spec, scratch.path()).unwrap_err();
    assert!(matches!(err, JobError::Storage { .. }));
    let msg = err.to_string();
    assert!(msg.contains(&absent.to_string()) && msg.contains("/inputs") && msg.contains("not in the store"), "{msg}");
    assert!(store.pin_ls().unwrap().is_empty(), "no result for a job that did not run");
}

#[test]
fn inputs_over_the_limit_are_refused_before_anything_runs() {
    let store = MemStore::new();
    let data = dataset(); // 28 bytes of text
    let mut spec = Spec::new(add(&store, &common::sample("hello")));
    spec.inputs.push(Input { cid: add(&store, data.path()), path: vec![], guest: "/inputs".into() });
    spec.limits.inputs_bytes = 20;
    let scratch = tempfile::tempdir().unwrap();
    let err = job::run(common::executor(), &store, &spec, scratch.path()).unwrap_err();
    assert!(matches!(err, JobError::InputsTooLarge { limit: 20, .. }), "{err}");
    assert!(err.to_string().contains("--max-input"), "{err}");
    spec.limits.inputs_bytes = 28;
    let f = job::run(common::executor(), &store, &spec, scratch.path()).unwrap();
    assert_eq!(f.exit_status, 0);
}

#[test]
fn a_nondeterministic_result_says_so() {
    let store = MemStore::new();
    let mut spec = Spec::new(add(&store, &common::sample("hello")));
    let scratch = tempfile::tempdir().unwrap();
    let det = job::run(common::executor(), &store, &spec, scratch.path()).unwrap();
    assert!(exporter::resolve(&store, &det.result, &["nondeterministic".into()]).is_err());
    spec.deterministic = false;
    let f = job::run(common::executor(), &store, &spec, scratch.path()).unwrap();
    let marker = String::from_utf8(cat(&store, &f.result, "nondeterministic")).unwrap();
    assert!(marker.contains("real clocks"), "{marker}");
}

#[test]
fn output_can_be_streamed_while_the_job_runs() {
    use std::sync::{Arc, Mutex};
    let store = MemStore::new();
    let mut spec = Spec::new(add(&store, &common::sample("wordcount")));
    let data = dataset();
    spec.inputs.push(Input { cid: add(&store, data.path()), path: vec![], guest: "/inputs".into() });
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    spec.tee = Some(shoal_runtime::Tee(Arc::new(move |stream, bytes: &[u8]| {
        if stream == shoal_runtime::Stream::Stdout {
            sink.lock().unwrap().extend_from_slice(bytes);
        }
    })));
    let scratch = tempfile::tempdir().unwrap();
    let f = job::run(common::executor(), &store, &spec, scratch.path()).unwrap();
    assert!(!seen.lock().unwrap().is_empty());
    assert_eq!(*seen.lock().unwrap(), cat(&store, &f.result, "stdout"));
    // The tee is not part of the job's identity.
    let mut plain = spec.clone();
    plain.tee = None;
    assert_eq!(plain.id(), spec.id());
}

#[test]
fn a_runner_keeps_module_bytes_by_cid() {
    let store = MemStore::new();
    let module = add(&store, &common::sample("hello"));
    let spec = Spec::new(module);
    let runner = job::Runner::new(common::executor());
    let scratch = tempfile::tempdir().unwrap();
    let first = runner.run(&store, &spec, scratch.path()).unwrap();
    // Remove the module's blocks: the runner still has its bytes, a fresh
    // one reports the missing module.
    shoal_storage::exporter::walk(&store, &module, &mut |c, _| {
        store.delete(c)?;
        Ok(())
    })
    .unwrap();
    let second = runner.run(&store, &spec, scratch.path()).unwrap();
    assert_eq!(first.result, second.result);
    let err = job::Runner::new(common::executor()).run(&store, &spec, scratch.path()).unwrap_err();
    assert!(err.to_string().contains(&format!("module {module}")), "{err}");
}

#[test]
fn a_runner_reuses_only_work_directories_a_run_left_empty() {
    let store = MemStore::new();
    let runner = job::Runner::new(common::executor());
    let scratch = tempfile::tempdir().unwrap();
    let listing = |p: &std::path::Path| -> Vec<std::ffi::OsString> {
        let mut v: Vec<_> = std::fs::read_dir(p).unwrap().map(|e| e.unwrap().file_name()).collect();
        v.sort();
        v
    };
    let hello = Spec::new(add(&store, &common::sample("hello")));
    let a = runner.run(&store, &hello, scratch.path()).unwrap();
    let kept = listing(scratch.path());
    assert_eq!(kept.len(), 1, "{kept:?}");
    let b = runner.run(&store, &hello, scratch.path()).unwrap();
    assert_eq!(listing(scratch.path()), kept, "the empty work directory is used again");
    assert_eq!(a.result, b.result);
    // wordcount reads mounted inputs and writes outputs: the directory it
    // used is removed, never handed to another job.
    let data = dataset();
    let mut wc = Spec::new(add(&store, &common::sample("wordcount")));
    wc.inputs.push(Input { cid: add(&store, data.path()), path: vec![], guest: "/inputs".into() });
    let f = runner.run(&store, &wc, scratch.path()).unwrap();
    assert_eq!(f.exit_status, 0, "{:?}", f.outcome.failure);
    assert!(listing(scratch.path()).is_empty(), "{:?}", listing(scratch.path()));
    let c = runner.run(&store, &hello, scratch.path()).unwrap();
    assert_eq!(c.result, a.result);
    drop(runner);
    assert!(listing(scratch.path()).is_empty(), "a dropped runner leaves nothing behind");
}
