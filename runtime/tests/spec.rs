//! The official WebAssembly spec tests (vendored in `tests/spec/`, see its
//! README) on modules rewritten by `shoal_runtime::nan::canonicalize`, in
//! Shoal's own engine settings with Cranelift's NaN canonicalisation off.
//! NaN results are checked bit for bit: `nan:canonical` means exactly the
//! canonical payload (either sign), `nan:arithmetic` a quiet NaN (either
//! sign), and a NaN written as a value must have exactly its bits.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use shoal_runtime::wasmtime::{
    Engine, Extern, ExternRef, Func, Global, GlobalType, Instance, Linker, Memory, MemoryType, Module, Mutability, Ref,
    RefType, Store, Table, TableType, Val, ValType,
};
use shoal_runtime::{nan, unroll};
use shoal_runtime::{Config, FloatDeterminism};
use wast::core::{NanPattern, V128Pattern, WastArgCore, WastRetCore};
use wast::parser::{self, ParseBuffer};
use wast::{QuoteWat, Wast, WastArg, WastDirective, WastExecute, WastInvoke, WastRet};

#[derive(Default, Debug)]
struct Counts {
    modules: usize,
    assertions: usize,
    nan_checks: usize,
}

struct Runner {
    engine: Engine,
    store: Store<()>,
    linker: Linker<()>,
    current: Option<Instance>,
    named: HashMap<String, Instance>,
    counts: Counts,
}

type R<T> = Result<T, String>;

impl Runner {
    fn new() -> Runner {
        let mut cfg = Config::default();
        cfg.float_determinism = FloatDeterminism::Rewrite;
        let engine = Engine::new(&cfg.wasmtime_config_without_pooling()).unwrap();
        let mut store = Store::new(&engine, ());
        store.set_fuel(u64::MAX).unwrap();
        store.set_epoch_deadline(u64::MAX / 2);
        let mut linker = Linker::new(&engine);
        linker.allow_shadowing(true);
        spectest(&mut linker, &mut store);
        Runner { engine, store, linker, current: None, named: HashMap::new(), counts: Counts::default() }
    }

    /// Encodes, rewrites and compiles a module the test expects to be valid.
    fn compile(&self, module: &mut QuoteWat<'_>) -> R<Module> {
        let bytes = module.encode().map_err(|e| format!("cannot encode: {e}"))?;
        let rewritten = nan::canonicalize(&bytes).map_err(|e| format!("rewrite failed: {e}"))?;
        // Shoal also unrolls small loops: the suite checks that too.
        let rewritten = unroll::unroll_loops(&rewritten).map_err(|e| format!("unrolling failed: {e}"))?;
        Module::new(&self.engine, &rewritten).map_err(|e| format!("rewritten module rejected: {e:#}"))
    }

    fn instantiate(&mut self, module: &mut QuoteWat<'_>) -> R<Instance> {
        let m = self.compile(module)?;
        self.counts.modules += 1;
        self.linker.instantiate(&mut self.store, &m).map_err(|e| format!("{e:#}"))
    }

    fn instance(&self, id: Option<wast::token::Id<'_>>) -> R<Instance> {
        match id {
            Some(id) => self.named.get(id.name()).copied().ok_or_else(|| format!("no module ${}", id.name())),
            None => self.current.ok_or_else(|| "no current module".to_string()),
        }
    }

    fn invoke(&mut self, inv: &WastInvoke<'_>) -> R<Result<Vec<Val>, String>> {
        let inst = self.instance(inv.module)?;
        let f = inst.get_func(&mut self.store, inv.name).ok_or_else(|| format!("no export {}", inv.name))?;
        let mut args = Vec::new();
        for a in &inv.args {
            args.push(self.arg(a)?);
        }
        let mut results = vec![Val::I32(0); f.ty(&self.store).results().len()];
        Ok(f.call(&mut self.store, &args, &mut results).map(|()| results).map_err(|e| format!("{e:#}")))
    }

    fn execute(&mut self, exec: &mut WastExecute<'_>) -> R<Result<Vec<Val>, String>> {
        match exec {
            WastExecute::Invoke(inv) => self.invoke(inv),
            WastExecute::Wat(w) => {
                let mut q = QuoteWat::Wat(std::mem::replace(w, dummy_wat()));
                let m = self.compile(&mut q)?;
                Ok(self.linker.instantiate(&mut self.store, &m).map(|_| vec![]).map_err(|e| format!("{e:#}")))
            }
            WastExecute::Get { module, global, .. } => {
                let inst = self.instance(*module)?;
                let g = inst.get_global(&mut self.store, global).ok_or_else(|| format!("no global {global}"))?;
                Ok(Ok(vec![g.get(&mut self.store)]))
            }
        }
    }

    fn arg(&mut self, a: &WastArg<'_>) -> R<Val> {
        Ok(match a {
            WastArg::Core(WastArgCore::I32(x)) => Val::I32(*x),
            WastArg::Core(WastArgCore::I64(x)) => Val::I64(*x),
            WastArg::Core(WastArgCore::F32(x)) => Val::F32(x.bits),
            WastArg::Core(WastArgCore::F64(x)) => Val::F64(x.bits),
            WastArg::Core(WastArgCore::V128(x)) => Val::V128(u128::from_le_bytes(x.to_le_bytes()).into()),
            WastArg::Core(WastArgCore::RefNull(wast::core::HeapType::Abstract { ty, .. })) => match ty {
                wast::core::AbstractHeapType::Func => Val::FuncRef(None),
                _ => Val::ExternRef(None),
            },
            WastArg::Core(WastArgCore::RefExtern(n)) => {
                Val::ExternRef(Some(ExternRef::new(&mut self.store, *n).map_err(|e| format!("{e:#}"))?))
            }
            other => return Err(format!("unsupported argument {other:?}")),
        })
    }

    fn check(&mut self, got: &Val, want: &WastRetCore<'_>) -> R<bool> {
        Ok(match (got, want) {
            (Val::I32(a), WastRetCore::I32(b)) => a == b,
            (Val::I64(a), WastRetCore::I64(b)) => a == b,
            (Val::F32(a), WastRetCore::F32(p)) => {
                self.counts.nan_checks += usize::from(!matches!(p, NanPattern::Value(_)));
                f32_ok(*a, p)
            }
            (Val::F64(a), WastRetCore::F64(p)) => {
                self.counts.nan_checks += usize::from(!matches!(p, NanPattern::Value(_)));
                f64_ok(*a, p)
            }
            (Val::V128(v), WastRetCore::V128(p)) => {
                let b = v.as_u128().to_le_bytes();
                match p {
                    V128Pattern::I8x16(l) => l.iter().enumerate().all(|(i, x)| b[i] == *x as u8),
                    V128Pattern::I16x8(l) => l.iter().enumerate().all(|(i, x)| b[2 * i..2 * i + 2] == x.to_le_bytes()),
                    V128Pattern::I32x4(l) => l.iter().enumerate().all(|(i, x)| b[4 * i..4 * i + 4] == x.to_le_bytes()),
                    V128Pattern::I64x2(l) => l.iter().enumerate().all(|(i, x)| b[8 * i..8 * i + 8] == x.to_le_bytes()),
                    V128Pattern::F32x4(l) => l.iter().enumerate().all(|(i, p)| {
                        self.counts.nan_checks += usize::from(!matches!(p, NanPattern::Value(_)));
                        f32_ok(u32::from_le_bytes(b[4 * i..4 * i + 4].try_into().unwrap()), p)
                    }),
                    V128Pattern::F64x2(l) => l.iter().enumerate().all(|(i, p)| {
                        self.counts.nan_checks += usize::from(!matches!(p, NanPattern::Value(_)));
                        f64_ok(u64::from_le_bytes(b[8 * i..8 * i + 8].try_into().unwrap()), p)
                    }),
                }
            }
            (Val::FuncRef(f), WastRetCore::RefNull(_)) => f.is_none(),
            (Val::ExternRef(r), WastRetCore::RefNull(_)) => r.is_none(),
            (Val::FuncRef(f), WastRetCore::RefFunc(_)) => f.is_some(),
            (Val::ExternRef(Some(r)), WastRetCore::RefExtern(Some(n))) => {
                let data = r.data(&self.store).map_err(|e| format!("{e:#}"))?;
                data.and_then(|d| d.downcast_ref::<u32>()) == Some(n)
            }
            (Val::ExternRef(Some(_)), WastRetCore::RefExtern(None)) => true,
            (got, WastRetCore::Either(cases)) => {
                let mut any = false;
                for c in cases {
                    any |= self.check(got, c)?;
                }
                any
            }
            _ => false,
        })
    }

    fn directive(&mut self, d: WastDirective<'_>) -> R<()> {
        match d {
            WastDirective::Module(mut m) => {
                let name = m.name().map(|n| n.name().to_string());
                let inst = self.instantiate(&mut m)?;
                self.current = Some(inst);
                if let Some(n) = name {
                    self.named.insert(n, inst);
                }
            }
            WastDirective::Register { name, module, .. } => {
                let inst = self.instance(module)?;
                self.linker.instance(&mut self.store, name, inst).map_err(|e| format!("{e:#}"))?;
            }
            WastDirective::Invoke(inv) => {
                self.invoke(&inv)??;
            }
            WastDirective::AssertReturn { mut exec, results, .. } => {
                self.counts.assertions += 1;
                let got = self.execute(&mut exec)?.map_err(|e| format!("expected a return, got: {e}"))?;
                if got.len() != results.len() {
                    return Err(format!("expected {} results, got {}", results.len(), got.len()));
                }
                for (g, w) in got.iter().zip(&results) {
                    let WastRet::Core(w) = w else { return Err("component result".into()) };
                    if !self.check(g, w)? {
                        return Err(format!("result {g:?} does not match {w:?}"));
                    }
                }
            }
            WastDirective::AssertTrap { mut exec, message, .. } => {
                self.counts.assertions += 1;
                if let Ok(v) = self.execute(&mut exec)? {
                    return Err(format!("expected a trap ({message}), got {v:?}"));
                }
            }
            WastDirective::AssertExhaustion { call, message, .. } => {
                self.counts.assertions += 1;
                if let Ok(v) = self.invoke(&call)? {
                    return Err(format!("expected exhaustion ({message}), got {v:?}"));
                }
            }
            WastDirective::AssertException { mut exec, .. } => {
                self.counts.assertions += 1;
                if let Ok(v) = self.execute(&mut exec)? {
                    return Err(format!("expected an exception, got {v:?}"));
                }
            }
            WastDirective::AssertInvalid { mut module, message, .. }
            | WastDirective::AssertMalformed { mut module, message, .. } => {
                self.counts.assertions += 1;
                // The original must be refused, and the rewrite must either
                // refuse it too or produce a module the engine refuses:
                // it never turns an invalid module into a valid one.
                if let Ok(bytes) = module.encode() {
                    if Module::validate(&self.engine, &bytes).is_ok() {
                        return Err(format!("expected an invalid module ({message}), the engine accepts it"));
                    }
                    if let Ok(rewritten) = nan::canonicalize(&bytes).and_then(|b| unroll::unroll_loops(&b)) {
                        if Module::validate(&self.engine, &rewritten).is_ok() {
                            return Err(format!("the rewrite made an invalid module ({message}) valid"));
                        }
                    }
                }
            }
            WastDirective::AssertUnlinkable { module, message, .. } => {
                self.counts.assertions += 1;
                let mut q = QuoteWat::Wat(module);
                let m = self.compile(&mut q)?;
                if self.linker.instantiate(&mut self.store, &m).is_ok() {
                    return Err(format!("expected unlinkable ({message})"));
                }
            }
            other => return Err(format!("unsupported directive {other:?}")),
        }
        Ok(())
    }
}

fn dummy_wat() -> wast::Wat<'static> {
    wast::Wat::Module(wast::core::Module {
        span: wast::token::Span::from_offset(0),
        id: None,
        name: None,
        kind: wast::core::ModuleKind::Binary(vec![]),
    })
}

fn f32_ok(bits: u32, p: &NanPattern<wast::token::F32>) -> bool {
    match p {
        NanPattern::CanonicalNan => bits & 0x7fff_ffff == 0x7fc0_0000,
        NanPattern::ArithmeticNan => bits & 0x7fc0_0000 == 0x7fc0_0000,
        NanPattern::Value(v) => bits == v.bits,
    }
}

fn f64_ok(bits: u64, p: &NanPattern<wast::token::F64>) -> bool {
    match p {
        NanPattern::CanonicalNan => bits & 0x7fff_ffff_ffff_ffff == 0x7ff8_0000_0000_0000,
        NanPattern::ArithmeticNan => bits & 0x7ff8_0000_0000_0000 == 0x7ff8_0000_0000_0000,
        NanPattern::Value(v) => bits == v.bits,
    }
}

/// The `spectest` module the suite imports from.
fn spectest(linker: &mut Linker<()>, store: &mut Store<()>) {
    let mut func = |name: &str, params: &[ValType]| {
        let ty = shoal_runtime::wasmtime::FuncType::new(store.engine(), params.iter().cloned(), []);
        let f = Func::new(&mut *store, ty, |_, _, _| Ok(()));
        linker.define(&mut *store, "spectest", name, f).unwrap();
    };
    func("print", &[]);
    func("print_i32", &[ValType::I32]);
    func("print_i64", &[ValType::I64]);
    func("print_f32", &[ValType::F32]);
    func("print_f64", &[ValType::F64]);
    func("print_i32_f32", &[ValType::I32, ValType::F32]);
    func("print_f64_f64", &[ValType::F64, ValType::F64]);
    let globals: [(&str, ValType, Val); 4] = [
        ("global_i32", ValType::I32, Val::I32(666)),
        ("global_i64", ValType::I64, Val::I64(666)),
        ("global_f32", ValType::F32, Val::F32(666.6f32.to_bits())),
        ("global_f64", ValType::F64, Val::F64(666.6f64.to_bits())),
    ];
    for (name, ty, v) in globals {
        let g = Global::new(&mut *store, GlobalType::new(ty, Mutability::Const), v).unwrap();
        linker.define(&mut *store, "spectest", name, g).unwrap();
    }
    let t = Table::new(&mut *store, TableType::new(RefType::FUNCREF, 10, Some(20)), Ref::Func(None)).unwrap();
    linker.define(&mut *store, "spectest", "table", t).unwrap();
    let m = Memory::new(&mut *store, MemoryType::new(1, Some(2))).unwrap();
    linker.define(&mut *store, "spectest", "memory", Extern::Memory(m)).unwrap();
}

fn run_file(path: &Path) -> R<Counts> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let buf = ParseBuffer::new(&text).map_err(|e| e.to_string())?;
    let wast: Wast<'_> = parser::parse(&buf).map_err(|e| e.to_string())?;
    let mut r = Runner::new();
    for d in wast.directives {
        let (line, col) = d.span().linecol_in(&text);
        r.directive(d).map_err(|e| format!("{}:{}:{}: {e}", path.display(), line + 1, col + 1))?;
    }
    Ok(r.counts)
}

fn spec_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/spec");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wast"))
        .collect();
    files.sort();
    files
}

#[test]
fn spec_suite_passes_on_rewritten_modules() {
    let files = spec_files();
    let names: Vec<String> = files.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    for must in [
        "f32.wast",
        "f64.wast",
        "conversions.wast",
        "float_exprs.wast",
        "float_memory.wast",
        "simd_f32x4_arith.wast",
        "memory.wast",
    ] {
        assert!(names.iter().any(|n| n == must), "tests/spec/{must} is missing");
    }
    // Files run on two threads: the machine has two cores.
    let (a, b): (Vec<_>, Vec<_>) = files.iter().enumerate().partition(|(i, _)| i % 2 == 0);
    let run = |set: Vec<(usize, &PathBuf)>| {
        let mut failures = Vec::new();
        let mut total = Counts::default();
        for (_, p) in set {
            match run_file(p) {
                Ok(c) => {
                    total.modules += c.modules;
                    total.assertions += c.assertions;
                    total.nan_checks += c.nan_checks;
                }
                Err(e) => failures.push(e),
            }
        }
        (failures, total)
    };
    let (mut failures, total) = std::thread::scope(|s| {
        let h = s.spawn(|| run(b));
        let (f1, t1) = run(a);
        let (f2, t2) = h.join().unwrap();
        (
            [f1, f2].concat(),
            Counts {
                modules: t1.modules + t2.modules,
                assertions: t1.assertions + t2.assertions,
                nan_checks: t1.nan_checks + t2.nan_checks,
            },
        )
    });
    failures.sort();
    println!(
        "{} files, {} modules, {} assertions, {} NaN-pattern checks",
        files.len(),
        total.modules,
        total.assertions,
        total.nan_checks
    );
    assert!(failures.is_empty(), "{} files failed:\n{}", failures.len(), failures.join("\n"));
    // The suite is real: thousands of NaN results were checked bit for bit.
    assert!(total.nan_checks > 5_000, "{total:?}");
}
