//! `shoal-bare-run`: the smallest honest "run this wasm" process, the
//! baseline `shoal run` is measured against (see `benches/process.rs`).
//!
//! `shoal-bare-run --precompile IN.wasm OUT.cwasm` compiles once;
//! `shoal-bare-run OUT.cwasm` loads it, instantiates it with WASI and calls
//! `_start`. Same engine settings as Shoal's (minus the instance pool), so
//! the difference is Shoal's own work: store, spec, limits, result.

use shoal_runtime::wasmtime::{Engine, Linker, Module, Store};
use wasmtime_wasi::WasiCtxBuilder;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let engine = Engine::new(&shoal_runtime::Config::default().wasmtime_config_without_pooling())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if args.get(1).map(String::as_str) == Some("--precompile") {
        let (Some(input), Some(out)) = (args.get(2), args.get(3)) else {
            anyhow::bail!("usage: shoal-bare-run --precompile IN.wasm OUT.cwasm");
        };
        let bytes = engine.precompile_module(&std::fs::read(input)?).map_err(|e| anyhow::anyhow!("{e}"))?;
        std::fs::write(out, bytes)?;
        return Ok(());
    }
    let Some(path) = args.get(1) else {
        anyhow::bail!("usage: shoal-bare-run MODULE.cwasm");
    };
    // SAFETY: the file was written by `--precompile` with this engine.
    let module = unsafe { Module::deserialize_file(&engine, path) }.map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut linker = Linker::new(&engine);
    wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |c| c).map_err(|e| anyhow::anyhow!("{e}"))?;
    let wasi = WasiCtxBuilder::new().inherit_stdout().inherit_stderr().build_p1();
    let mut store = Store::new(&engine, wasi);
    store.set_fuel(u64::MAX).map_err(|e| anyhow::anyhow!("{e}"))?;
    store.set_epoch_deadline(u64::MAX / 2);
    let instance = linker.instantiate(&mut store, &module).map_err(|e| anyhow::anyhow!("{e}"))?;
    let start = instance.get_typed_func::<(), ()>(&mut store, "_start").map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Err(e) = start.call(&mut store, ()) {
        match e.downcast_ref::<wasmtime_wasi::I32Exit>() {
            Some(exit) if exit.0 == 0 => {}
            Some(exit) => std::process::exit(exit.0),
            None => anyhow::bail!("{e}"),
        }
    }
    Ok(())
}
