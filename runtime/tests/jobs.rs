//! End-to-end jobs with the real sample guests.

mod common;

use std::fs;
use std::time::Duration;

use common::{executor, sample, stdout, task};
use shoal_runtime::{Entry, Failure, Mode, Mount, OutputLimit, Stream, Task};

#[test]
fn hello_succeeds_with_args_and_sorted_env() {
    let mut t = task("hello", &["one", "two words"]);
    t.env = vec![("ZED".into(), "z".into()), ("ALPHA".into(), "a".into())];
    let o = executor().run(&t).unwrap();
    assert!(o.success(), "{:?}", o.failure);
    assert_eq!(o.exit_code, Some(0));
    assert_eq!(stdout(&o), "hello from shoal\narg 1: one\narg 2: two words\nenv ALPHA=a\nenv ZED=z\n");
    assert!(o.fuel_consumed > 0);
    assert!(o.deterministic);
    assert!(!o.stdout.truncated);
}

#[test]
fn host_environment_is_not_inherited() {
    std::env::set_var("SHOAL_TEST_LEAK", "leaked");
    let o = executor().run(&task("hello", &[])).unwrap();
    assert!(!stdout(&o).contains("SHOAL_TEST_LEAK"));
    assert!(!stdout(&o).contains("env "));
}

#[test]
fn invalid_env_is_a_host_error() {
    let mut t = task("hello", &[]);
    t.env = vec![("A".into(), "1".into()), ("A".into(), "2".into())];
    let e = executor().run(&t).unwrap_err();
    assert!(e.to_string().contains("set twice"), "{e}");
}

#[test]
fn wordcount_reads_inputs_and_writes_outputs() {
    let input = tempfile::tempdir().unwrap();
    let output = tempfile::tempdir().unwrap();
    fs::write(input.path().join("b.txt"), "one two\nthree\n").unwrap();
    fs::write(input.path().join("a.txt"), "x\n").unwrap();
    let mut t = task("wordcount", &[]);
    t.mounts = vec![Mount::new(input.path(), "/inputs")];
    t.outputs = Some(output.path().join("out"));
    let o = executor().run(&t).unwrap();
    assert!(o.success(), "{:?} {}", o.failure, String::from_utf8_lossy(&o.stderr.bytes));
    let tsv = fs::read_to_string(output.path().join("out/counts.tsv")).unwrap();
    assert_eq!(tsv, "file\tlines\twords\tbytes\na.txt\t1\t1\t2\nb.txt\t2\t3\t14\ntotal\t3\t4\t16\n");
    assert!(stdout(&o).contains("total (2 files)"));
    assert_eq!(o.outputs.files, 1);
    assert_eq!(o.outputs.bytes, tsv.len() as u64);
}

#[test]
fn single_file_mount_hides_siblings() {
    let input = tempfile::tempdir().unwrap();
    fs::write(input.path().join("wanted.txt"), "a b c\n").unwrap();
    fs::write(input.path().join("secret.txt"), "hidden\n").unwrap();
    let mut t = task("ls", &["/in"]);
    t.mounts = vec![Mount::new(input.path().join("wanted.txt"), "/in/wanted.txt")];
    let o = executor().run(&t).unwrap();
    assert!(o.success(), "{:?}", o.failure);
    assert_eq!(stdout(&o), "wanted.txt\n");
}

#[test]
fn sha256sum_matches_host() {
    use sha2::Digest;
    let input = tempfile::tempdir().unwrap();
    let big: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(input.path().join("big.bin"), &big).unwrap();
    fs::write(input.path().join("empty"), b"").unwrap();
    let mut t = task("sha256sum", &[]);
    t.mounts = vec![Mount::new(input.path(), "/inputs")];
    let o = executor().run(&t).unwrap();
    assert!(o.success(), "{:?}", o.failure);
    let hex = |d: &[u8]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let expected =
        format!("{}  big.bin\n{}  empty\n", hex(&sha2::Sha256::digest(&big)), hex(&sha2::Sha256::digest(b"")));
    assert_eq!(stdout(&o), expected);
}

#[test]
fn imagefilter_inverts_ppm() {
    let input = tempfile::tempdir().unwrap();
    let output = tempfile::tempdir().unwrap();
    let mut ppm = b"P6\n# comment\n2 1\n255\n".to_vec();
    ppm.extend_from_slice(&[0, 10, 20, 250, 255, 128]);
    fs::write(input.path().join("in.ppm"), &ppm).unwrap();
    let mut t = task("imagefilter", &["/inputs/in.ppm", "/outputs/out.ppm", "invert"]);
    t.mounts = vec![Mount::new(input.path(), "/inputs")];
    t.outputs = Some(output.path().to_path_buf());
    let o = executor().run(&t).unwrap();
    assert!(o.success(), "{:?} {}", o.failure, String::from_utf8_lossy(&o.stderr.bytes));
    let out = fs::read(output.path().join("out.ppm")).unwrap();
    let mut expected = b"P6\n2 1\n255\n".to_vec();
    expected.extend_from_slice(&[255, 245, 235, 5, 0, 127]);
    assert_eq!(out, expected);
}

#[test]
fn mandelbrot_is_reproducible_including_fuel() {
    let t = task("mandelbrot", &["120", "200"]);
    let a = executor().run(&t).unwrap();
    let b = executor().run(&t).unwrap();
    assert!(a.success(), "{:?}", a.failure);
    assert_eq!(a.stdout, b.stdout);
    assert_eq!(a.fuel_consumed, b.fuel_consumed);
    assert!(stdout(&a).starts_with("mandelbrot 120x120 iter=200 sum="));
}

#[test]
fn nonzero_exit_is_a_failure() {
    let o = executor().run(&task("exitcode", &["7"])).unwrap();
    assert!(!o.success());
    assert_eq!(o.exit_code, Some(7));
    assert_eq!(o.failure, Some(Failure::Exit(7)));
    assert_eq!(stdout(&o), "exiting\n");
}

#[test]
fn spin_runs_out_of_fuel() {
    let mut t = task("spin", &[]);
    t.limits.fuel = 10_000_000;
    let o = executor().run(&t).unwrap();
    assert_eq!(o.failure, Some(Failure::OutOfFuel { limit: 10_000_000 }));
    assert_eq!(o.fuel_consumed, 10_000_000);
    assert_eq!(o.exit_code, None);
}

#[test]
fn spin_times_out() {
    let mut t = task("spin", &[]);
    t.limits.timeout = Duration::from_millis(200);
    let o = executor().run(&t).unwrap();
    assert_eq!(o.failure, Some(Failure::Timeout { limit: Duration::from_millis(200) }));
    assert!(o.wall_time >= Duration::from_millis(190), "{:?}", o.wall_time);
    assert!(o.wall_time < Duration::from_secs(2), "{:?}", o.wall_time);
}

#[test]
fn membomb_hits_memory_limit() {
    let mut t = task("membomb", &[]);
    t.limits.memory = 32 << 20;
    let o = executor().run(&t).unwrap();
    assert_eq!(o.failure, Some(Failure::MemoryLimit { limit: 32 << 20 }));
    assert!(String::from_utf8_lossy(&o.stderr.bytes).contains("allocation failed after"));
}

#[test]
fn stdout_flood_is_capped_and_fails() {
    let mut t = task("flood", &["stdout"]);
    t.limits.stdout = 100_000;
    let o = executor().run(&t).unwrap();
    assert_eq!(o.failure, Some(Failure::OutputLimitExceeded(OutputLimit::Stream(Stream::Stdout, 100_000))));
    assert!(o.stdout.truncated);
    assert_eq!(o.stdout.bytes.len(), 100_000);
}

#[test]
fn outputs_bytes_limit_stops_a_running_job() {
    let output = tempfile::tempdir().unwrap();
    let mut t = task("flood", &["file"]);
    t.outputs = Some(output.path().to_path_buf());
    t.limits.outputs_bytes = 1 << 20;
    t.limits.outputs_check_interval = Duration::from_millis(20);
    let o = executor().run(&t).unwrap();
    assert_eq!(o.failure, Some(Failure::OutputLimitExceeded(OutputLimit::OutputsBytes(1 << 20))));
    // Stopped while running (not by the 60 s timeout).
    assert!(o.wall_time < Duration::from_secs(10), "{:?}", o.wall_time);
}

#[test]
fn outputs_files_limit_stops_a_running_job() {
    let output = tempfile::tempdir().unwrap();
    let mut t = task("flood", &["many"]);
    t.outputs = Some(output.path().to_path_buf());
    t.limits.outputs_files = 100;
    t.limits.outputs_check_interval = Duration::from_millis(20);
    let o = executor().run(&t).unwrap();
    assert_eq!(o.failure, Some(Failure::OutputLimitExceeded(OutputLimit::OutputsFiles(100))));
}

#[test]
fn traps_carry_message_and_backtrace() {
    let o = executor().run(&task("trap", &["unreachable"])).unwrap();
    match o.failure {
        Some(Failure::Trap { message, backtrace }) => {
            assert!(message.contains("unreachable"), "{message}");
            assert!(backtrace.contains("fail_here"), "{backtrace}");
        }
        other => panic!("expected trap, got {other:?}"),
    }
    let o = executor().run(&task("trap", &["div"])).unwrap();
    assert!(
        matches!(&o.failure, Some(Failure::Trap { message, .. }) if message.contains("divide by zero")),
        "{:?}",
        o.failure
    );
    // C recursion exhausts the shadow stack in linear memory first, which
    // shows up as an out-of-bounds access rather than a Wasm stack overflow.
    let o = executor().run(&task("trap", &["stack"])).unwrap();
    assert!(
        matches!(&o.failure, Some(Failure::Trap { message, backtrace })
            if (message.contains("stack") || message.contains("out of bounds"))
                && backtrace.contains("recurse")),
        "{:?}",
        o.failure
    );
    let o = executor().run(&task("trap", &["oob"])).unwrap();
    assert!(
        matches!(&o.failure, Some(Failure::Trap { message, .. }) if message.contains("out of bounds")),
        "{:?}",
        o.failure
    );
}

#[test]
fn reactor_is_initialized_then_invoked() {
    let mut t = task("reactor", &[]);
    t.entry = Entry::Reactor { export: "invoke".into() };
    let o = executor().run(&t).unwrap();
    assert!(o.success(), "{:?}", o.failure);
    assert_eq!(stdout(&o), "reactor invoked, initialized=42\n");
}

#[test]
fn missing_export_is_named() {
    let mut t = task("hello", &[]);
    t.entry = Entry::Command { export: "nope".into() };
    let o = executor().run(&t).unwrap();
    match o.failure {
        Some(Failure::MissingExport { name, available, .. }) => {
            assert_eq!(name, "nope");
            assert!(available.contains(&"_start".to_owned()));
        }
        other => panic!("expected missing export, got {other:?}"),
    }
}

#[test]
fn missing_imports_are_all_named() {
    let o = executor().run(&task("needs_host", &[])).unwrap();
    match o.failure {
        Some(Failure::MissingImports { missing }) => {
            assert!(missing.contains(&"env::host_magic".to_owned()), "{missing:?}");
            assert!(missing.contains(&"shoal::secret".to_owned()), "{missing:?}");
        }
        other => panic!("expected missing imports, got {other:?}"),
    }
}

#[test]
fn garbage_is_not_a_wasm_file() {
    let o = executor().run(&Task::from_bytes(b"#!/bin/sh\necho hi\n".to_vec())).unwrap();
    assert!(matches!(&o.failure, Some(Failure::InvalidModule(m)) if m.contains("not a wasm file")), "{:?}", o.failure);
    let mut truncated = fs::read(sample("hello")).unwrap();
    truncated.truncate(truncated.len() / 2);
    let o = executor().run(&Task::from_bytes(truncated)).unwrap();
    assert!(matches!(o.failure, Some(Failure::InvalidModule(_))), "{:?}", o.failure);
}

#[test]
fn missing_module_file_is_a_host_error() {
    let e = executor().run(&Task::from_path("/nonexistent/x.wasm")).unwrap_err();
    assert!(e.to_string().contains("cannot read module"), "{e}");
}

#[test]
fn entropy_is_deterministic_per_seed() {
    let mut t = task("entropy", &[]);
    t.mode = Mode::Deterministic { seed: [1; 32] };
    let a = executor().run(&t).unwrap();
    let b = executor().run(&t).unwrap();
    assert!(a.success(), "{:?}", a.failure);
    assert_eq!(stdout(&a), stdout(&b));
    let out = stdout(&a);
    assert!(out.contains("realtime 946684800.000000000"), "{out}");
    assert!(out.contains("monotonic 0.000000000 0.001000000"), "{out}");

    t.mode = Mode::Deterministic { seed: [2; 32] };
    let c = executor().run(&t).unwrap();
    let random = |s: &str| s.lines().find(|l| l.starts_with("random")).unwrap().to_owned();
    assert_ne!(random(&out), random(&stdout(&c)));

    t.mode = Mode::Nondeterministic;
    let d = executor().run(&t).unwrap();
    assert!(!d.deterministic);
    assert!(!stdout(&d).contains("realtime 946684800."), "{}", stdout(&d));
}

#[test]
fn directory_listing_is_sorted() {
    let input = tempfile::tempdir().unwrap();
    // Enough names, created in scrambled order, that file-system order and
    // sorted order would differ (hashed directories on ext4, tmpfs order).
    let mut names: Vec<String> = (0..300u32).map(|i| format!("f{:08x}", i.wrapping_mul(2_654_435_761))).collect();
    for n in &names {
        fs::write(input.path().join(n), b"").unwrap();
    }
    names.sort();
    let mut t = task("ls", &["/inputs"]);
    t.mounts = vec![Mount::new(input.path(), "/inputs")];
    let o = executor().run(&t).unwrap();
    assert!(o.success(), "{:?}", o.failure);
    let listed: Vec<&str> = std::str::from_utf8(&o.stdout.bytes).unwrap().lines().collect();
    assert_eq!(listed, names);
}

#[test]
fn large_directory_listing_is_complete_and_sorted() {
    // ~150 KB of dirents: several fd_readdir calls, resumed by cookie.
    let input = tempfile::tempdir().unwrap();
    let mut names: Vec<String> =
        (0..4000u32).map(|i| format!("file-with-a-longish-name-{:08x}", i.wrapping_mul(2_654_435_761))).collect();
    for n in &names {
        fs::write(input.path().join(n), b"").unwrap();
    }
    names.sort();
    let mut t = task("ls", &["/inputs"]);
    t.mounts = vec![Mount::new(input.path(), "/inputs")];
    let start = std::time::Instant::now();
    let o = executor().run(&t).unwrap();
    assert!(o.success(), "{:?}", o.failure);
    let listed: Vec<&str> = std::str::from_utf8(&o.stdout.bytes).unwrap().lines().collect();
    assert_eq!(listed, names);
    println!("listed 4000 entries in {:?}", start.elapsed());
}

#[test]
fn concurrent_jobs() {
    let handles: Vec<_> = (0..4)
        .map(|i| {
            std::thread::spawn(move || {
                let o = executor().run(&task("hello", &[&i.to_string()])).unwrap();
                assert!(o.success(), "{:?}", o.failure);
                stdout(&o)
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        assert!(h.join().unwrap().contains(&format!("arg 1: {i}")));
    }
}

#[test]
fn a_cancelled_job_stops_spinning_or_sleeping() {
    for (guest, args) in [("spin", vec![]), ("sleep", vec!["20000"])] {
        let mut t = task(guest, &args);
        // Without the cancellation, each would run for a minute (or sleep
        // its 20 s and succeed).
        t.limits.timeout = Duration::from_secs(60);
        let cancel = shoal_runtime::Cancel::new();
        t.cancel = Some(cancel.clone());
        let stopper = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            cancel.cancel();
        });
        let o = executor().run(&t).unwrap();
        stopper.join().unwrap();
        assert!(matches!(o.failure, Some(Failure::Cancelled)), "{guest}: {:?}", o.failure);
    }
    // A token nobody uses changes nothing: the sleep ends and says so.
    let mut t = task("sleep", &["30"]);
    t.cancel = Some(shoal_runtime::Cancel::new());
    let o = executor().run(&t).unwrap();
    assert!(o.success(), "{:?}", o.failure);
    assert_eq!(stdout(&o), "slept 30 ms\n");
    // Cancelled before it starts: it does not run at all.
    let mut t = task("hello", &[]);
    let cancel = shoal_runtime::Cancel::new();
    cancel.cancel();
    t.cancel = Some(cancel);
    let o = executor().run(&t).unwrap();
    assert!(matches!(o.failure, Some(Failure::Cancelled)), "{:?}", o.failure);
    assert_eq!(stdout(&o), "");
}

#[test]
fn sleeping_past_the_timeout_is_stopped_at_once() {
    let mut t = task("sleep", &[]);
    t.limits.timeout = Duration::from_secs(5);
    let o = executor().run(&t).unwrap();
    assert!(matches!(o.failure, Some(Failure::Timeout { .. })), "{:?}", o.failure);
    assert!(o.wall_time < Duration::from_secs(1), "{:?}", o.wall_time);

    let o = executor().run(&task("sleep", &["30"])).unwrap();
    assert!(o.success(), "{:?}", o.failure);
    assert_eq!(stdout(&o), "slept 30 ms\n");
    assert!(o.wall_time >= Duration::from_millis(30), "{:?}", o.wall_time);
}

#[test]
fn initial_memory_above_limit_is_a_memory_failure() {
    let mut t = task("hello", &[]);
    t.limits.memory = 64 << 10;
    let o = executor().run(&t).unwrap();
    assert_eq!(o.failure, Some(Failure::MemoryLimit { limit: 64 << 10 }));
}

/// A guest written in Rust (Debian's rustc and wasm32-wasi std, installed
/// by `scripts/setup.sh --samples`).
#[test]
fn rust_guest_lists_inputs() {
    let out = std::process::Command::new("make")
        .args(["-C", common::samples_dir().to_str().unwrap(), "rust"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "building the rust sample failed (scripts/setup.sh --samples installs rustc and libstd-rust-dev-wasm32): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let input = tempfile::tempdir().unwrap();
    let output = tempfile::tempdir().unwrap();
    fs::write(input.path().join("b"), b"12").unwrap();
    fs::write(input.path().join("a"), b"1").unwrap();
    let mut t = Task::from_path(common::samples_dir().join("build/rust-listdir.wasm"));
    t.mounts = vec![Mount::new(input.path(), "/inputs")];
    t.outputs = Some(output.path().to_path_buf());
    let o = executor().run(&t).unwrap();
    assert!(o.success(), "{:?} {}", o.failure, String::from_utf8_lossy(&o.stderr.bytes));
    assert_eq!(stdout(&o), "2 entries in /inputs\n");
    assert_eq!(fs::read_to_string(output.path().join("names.txt")).unwrap(), "a\t1\nb\t2\n");
}
