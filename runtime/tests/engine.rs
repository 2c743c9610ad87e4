//! Executor-level behaviour: the on-disk cache and an injected tick source.

mod common;

use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::task;
use shoal_runtime::{Config, Executor, Failure, TickSource};

fn cached_executor(dir: &std::path::Path) -> Executor {
    let mut cfg = Config::default();
    cfg.cache_dir = Some(dir.to_path_buf());
    cfg.max_concurrent_jobs = 2;
    Executor::new(cfg).unwrap()
}

#[test]
fn disk_cache_is_used_and_corruption_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let t = task("hello", &[]);

    let first = cached_executor(dir.path()).run(&t).unwrap();
    assert!(first.success());
    assert!(!first.cached);
    let mut all: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
    all.sort();
    assert_eq!(all.len(), 2, "the entry and its checksum: {all:?}");
    let entries: Vec<_> = all.iter().filter(|p| p.extension().is_some_and(|e| e == "cwasm")).cloned().collect();
    assert_eq!(entries.len(), 1, "{all:?}");
    assert!(all.iter().any(|p| p.extension().is_some_and(|e| e == "xxh3")), "{all:?}");

    // A fresh process (executor) starts from the disk entry.
    let exec = cached_executor(dir.path());
    let second = exec.run(&t).unwrap();
    assert!(second.success());
    assert!(second.cached);
    assert_eq!(first.stdout, second.stdout);

    // Corrupt the entry: it must be recompiled, not trusted.
    let mut data = fs::read(&entries[0]).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0x55;
    fs::write(&entries[0], &data).unwrap();
    let third = cached_executor(dir.path()).run(&t).unwrap();
    assert!(third.success(), "{:?}", third.failure);
    assert!(!third.cached);
    assert_eq!(first.stdout, third.stdout);

    // Truncated entry: same.
    fs::write(&entries[0], &data[..100]).unwrap();
    let fourth = cached_executor(dir.path()).run(&t).unwrap();
    assert!(fourth.success());
    assert!(!fourth.cached);
}

#[test]
fn manual_ticks_drive_the_timeout() {
    let mut cfg = Config::default();
    cfg.tick = TickSource::Manual { nominal_interval: Duration::from_millis(100) };
    cfg.max_concurrent_jobs = 2;
    let exec = Arc::new(Executor::new(cfg).unwrap());
    let mut t = task("spin", &[]);
    // Three ticks' worth.
    t.limits.timeout = Duration::from_millis(300);
    let done = Arc::new(AtomicBool::new(false));
    let ticker = {
        let (exec, done) = (exec.clone(), done.clone());
        std::thread::spawn(move || {
            let mut ticks = 0;
            while !done.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(20));
                exec.tick();
                ticks += 1;
            }
            ticks
        })
    };
    let o = exec.run(&t).unwrap();
    done.store(true, Ordering::SeqCst);
    let ticks = ticker.join().unwrap();
    assert!(matches!(o.failure, Some(Failure::Timeout { .. })), "{:?}", o.failure);
    // Stopped after about 3 injected ticks (60 ms), long before 300 ms of
    // real time would matter for a thread ticker.
    assert!(ticks >= 3, "{ticks}");
    assert!(o.wall_time < Duration::from_millis(290), "{:?}", o.wall_time);
}

#[test]
fn full_pool_is_a_host_error_not_a_crash() {
    let mut cfg = Config::default();
    cfg.max_concurrent_jobs = 1;
    let exec = Arc::new(Executor::new(cfg).unwrap());
    let mut spin = task("spin", &[]);
    spin.limits.timeout = Duration::from_millis(600);
    // Compile up front so the spinning job surely holds the slot in time.
    exec.precompile(&spin.module).unwrap().unwrap();
    let busy = {
        let exec = exec.clone();
        std::thread::spawn(move || exec.run(&spin).unwrap())
    };
    std::thread::sleep(Duration::from_millis(200));
    let err = exec.run(&task("hello", &[])).unwrap_err();
    assert!(err.to_string().contains("max_concurrent_jobs"), "{err}");
    let o = busy.join().unwrap();
    assert!(matches!(o.failure, Some(Failure::Timeout { .. })), "{:?}", o.failure);
    // The slot is free again.
    assert!(exec.run(&task("hello", &[])).unwrap().success());
}
