//! Real float-heavy samples through the executor under each
//! `FloatDeterminism`: the NaN rewrite (the default) gives the same output
//! as Cranelift's canonicalisation, and the same as before on programs
//! without NaNs.

mod common;

use common::{stdout, task};
use shoal_runtime::{Config, Executor, FloatDeterminism};

fn run(fd: FloatDeterminism, name: &str, args: &[&str]) -> (String, u64) {
    let mut cfg = Config::default();
    cfg.float_determinism = fd;
    cfg.max_concurrent_jobs = 1;
    let exec = Executor::new(cfg).unwrap();
    let o = exec.run(&task(name, args)).unwrap();
    assert!(o.success(), "{fd:?} {name}: {:?}", o.failure);
    (stdout(&o), o.fuel_consumed)
}

#[test]
fn nbody_nans_are_canonical_with_the_rewrite_and_with_cranelift() {
    let args = ["2000", "24"];
    let (rewrite, _) = run(FloatDeterminism::Rewrite, "nbody", &args);
    let (cranelift, _) = run(FloatDeterminism::Cranelift, "nbody", &args);
    assert_eq!(rewrite, cranelift);
    assert!(rewrite.contains("energy before -0.169075164"), "{rewrite}");
    assert!(rewrite.contains("nan bits 7ff8000000000000 7ff8000000000000 7ff8000000000000"), "{rewrite}");
    // Without canonicalisation the energies and the product are the same
    // (Wasm fixes every non-NaN bit); only the NaN line may differ.
    let (off, _) = run(FloatDeterminism::Off, "nbody", &args);
    let strip = |s: &str| s.lines().filter(|l| !l.starts_with("nan bits")).collect::<Vec<_>>().join("\n");
    assert_eq!(strip(&off), strip(&rewrite));
    #[cfg(target_arch = "x86_64")]
    assert!(off.contains("nan bits fff8000000000000"), "x86-64's NaN of 0/0 is negative: {off}");
}

#[test]
fn mandelbrot_output_is_the_same_under_every_setting() {
    let args = ["120", "200"];
    let (rewrite, fuel_rewrite) = run(FloatDeterminism::Rewrite, "mandelbrot", &args);
    let (cranelift, fuel_cranelift) = run(FloatDeterminism::Cranelift, "mandelbrot", &args);
    let (off, fuel_off) = run(FloatDeterminism::Off, "mandelbrot", &args);
    assert_eq!(rewrite, cranelift);
    assert_eq!(rewrite, off);
    assert!(rewrite.starts_with("mandelbrot 120x120 iter=200 sum="), "{rewrite}");
    // Fuel counts Wasm instructions: Cranelift's canonicalisation adds
    // none, the rewrite adds a few where a float is stored (printf's
    // arguments), not in the loop.
    assert_eq!(fuel_cranelift, fuel_off);
    assert!(fuel_rewrite >= fuel_off);
    assert!((fuel_rewrite - fuel_off) * 10_000 < fuel_off, "{fuel_rewrite} vs {fuel_off}");
}

#[test]
fn compiled_code_is_cached_per_setting() {
    // The disk cache key names the rewrite (and its version) and the
    // unrolling: an executor with another setting never loads code
    // compiled from differently transformed bytes.
    let dir = tempfile::tempdir().unwrap();
    let exec = |fd: FloatDeterminism, unroll: bool| {
        let mut cfg = Config::default();
        cfg.float_determinism = fd;
        cfg.unroll_loops = unroll;
        cfg.max_concurrent_jobs = 1;
        cfg.cache_dir = Some(dir.path().to_path_buf());
        Executor::new(cfg).unwrap()
    };
    let t = task("nbody", &["10", "4"]);
    let first = |e: &Executor| e.run(&t).unwrap().cached;
    assert!(!first(&exec(FloatDeterminism::Rewrite, true)));
    assert!(first(&exec(FloatDeterminism::Rewrite, true)), "same setting: from the disk cache");
    assert!(!first(&exec(FloatDeterminism::Rewrite, false)));
    assert!(!first(&exec(FloatDeterminism::Off, true)));
    assert!(!first(&exec(FloatDeterminism::Cranelift, true)));
    assert!(first(&exec(FloatDeterminism::Off, true)));
}
