//! NaN-payload torture guest: NaNs with different payloads and signs made by
//! every kind of arithmetic, then sent down every path where bits can be
//! seen (memory, globals, reinterpretation, sign operations, vector lanes,
//! host calls, indirect calls, export results). What it writes and returns
//! must be identical with the NaN rewrite, with Cranelift's global
//! canonicalisation, and with other Cranelift settings.

use shoal_runtime::nan;
use shoal_runtime::wasmtime::{self, Engine, Func, Instance, Module, Store, Val};

/// NaN makers: each `k` makes a NaN another way (plain arithmetic, and
/// arithmetic on NaNs with payloads loaded from memory).
const MAKERS: i32 = 12;

const GUEST: &str = r#"(module
  (import "host" "f32" (func $h32 (param f32)))
  (import "host" "f64" (func $h64 (param f64)))
  (memory (export "memory") 1)
  (global $g32 (mut f32) (f32.const 0))
  (global $g64 (mut f64) (f64.const 0))
  (global (export "last32") (mut f32) (f32.const 0))
  (type $t32 (func (param f32) (result f32)))
  (type $t64 (func (param f64)))
  (table 2 funcref)
  (elem (i32.const 0) $inc32 $h64)
  ;; NaNs with payloads: f32 sNaN 0x7fa00001, f32 -qNaN 0xffc12345,
  ;; f64 sNaN 0x7ff4000000000001, f64 -qNaN 0xfff8dead00000000.
  (data (i32.const 60000) "\01\00\a0\7f\45\23\c1\ff")
  (data (i32.const 60008) "\01\00\00\00\00\00\f4\7f\00\00\00\00\ad\de\f8\ff")

  (func $inc32 (param f32) (result f32) (f32.add (local.get 0) (f32.const 1)))

  (func $p32 (param i32) (result f32) (f32.load (i32.add (i32.const 60000) (i32.shl (local.get 0) (i32.const 2)))))
  (func $p64 (param i32) (result f64) (f64.load (i32.add (i32.const 60008) (i32.shl (local.get 0) (i32.const 3)))))

  (func $mk32 (param $k i32) (result f32)
    (block $b11 (block $b10 (block $b9 (block $b8 (block $b7 (block $b6 (block $b5 (block $b4
    (block $b3 (block $b2 (block $b1 (block $b0
      (br_table $b0 $b1 $b2 $b3 $b4 $b5 $b6 $b7 $b8 $b9 $b10 $b11 (local.get $k)))
      (return (f32.div (f32.const 0) (f32.const 0))))
      (return (f32.sub (f32.const inf) (f32.const inf))))
      (return (f32.mul (f32.const -inf) (f32.const 0))))
      (return (f32.sqrt (f32.const -1))))
      (return (f32.add (call $p32 (i32.const 0)) (f32.const 1))))
      (return (f32.mul (f32.const 2) (call $p32 (i32.const 1)))))
      (return (f32.min (call $p32 (i32.const 0)) (f32.const 1))))
      (return (f32.max (f32.const 1) (call $p32 (i32.const 1)))))
      (return (f32.ceil (call $p32 (i32.const 0)))))
      (return (f32.nearest (call $p32 (i32.const 1)))))
      (return (f32.demote_f64 (call $p64 (i32.const 0)))))
    (f32.div (call $p32 (i32.const 1)) (call $p32 (i32.const 0))))

  (func $mk64 (param $k i32) (result f64)
    (block $b11 (block $b10 (block $b9 (block $b8 (block $b7 (block $b6 (block $b5 (block $b4
    (block $b3 (block $b2 (block $b1 (block $b0
      (br_table $b0 $b1 $b2 $b3 $b4 $b5 $b6 $b7 $b8 $b9 $b10 $b11 (local.get $k)))
      (return (f64.div (f64.const 0) (f64.const 0))))
      (return (f64.sub (f64.const -inf) (f64.const -inf))))
      (return (f64.mul (f64.const inf) (f64.const -0))))
      (return (f64.sqrt (f64.const -2))))
      (return (f64.add (call $p64 (i32.const 0)) (f64.const 1))))
      (return (f64.sub (f64.const 2) (call $p64 (i32.const 1)))))
      (return (f64.min (call $p64 (i32.const 1)) (f64.const 1))))
      (return (f64.max (f64.const 1) (call $p64 (i32.const 0)))))
      (return (f64.floor (call $p64 (i32.const 1)))))
      (return (f64.trunc (call $p64 (i32.const 0)))))
      (return (f64.promote_f32 (call $p32 (i32.const 0)))))
    (f64.mul (call $p64 (i32.const 0)) (call $p64 (i32.const 1))))

  ;; Vectors: lanes from the payload NaNs and from plain arithmetic.
  (func $vmk (param $k i32) (result v128)
    (block $b5 (block $b4 (block $b3 (block $b2 (block $b1 (block $b0
      (br_table $b0 $b1 $b2 $b3 $b4 $b5 (i32.rem_u (local.get $k) (i32.const 6))))
      (return (f32x4.div (v128.load (i32.const 60000)) (v128.const f32x4 0 1 0 inf))))
      (return (f64x2.add (v128.load (i32.const 60008)) (v128.const f64x2 1 -1))))
      (return (f32x4.sqrt (v128.const f32x4 -1 4 -0 -inf))))
      (return (f64x2.promote_low_f32x4 (v128.load (i32.const 60000)))))
      (return (f32x4.demote_f64x2_zero (v128.load (i32.const 60008)))))
    (f32x4.relaxed_madd (v128.load (i32.const 60000)) (v128.const f32x4 inf 0 1 2) (v128.const f32x4 -inf 1 2 3)))

  (func (export "run") (local $k i32) (local $o i32) (local $x f32) (local $y f64)
    (loop $next
      (local.set $o (i32.mul (local.get $k) (i32.const 256)))
      (local.set $x (call $mk32 (local.get $k)))
      (local.set $y (call $mk64 (local.get $k)))
      ;; stores, reinterpretation, sign operations
      (f32.store (local.get $o) (local.get $x))
      (i32.store offset=4 (local.get $o) (i32.reinterpret_f32 (local.get $x)))
      (f32.store offset=8 (local.get $o) (f32.neg (local.get $x)))
      (f32.store offset=12 (local.get $o) (f32.abs (local.get $x)))
      (f32.store offset=16 (local.get $o) (f32.copysign (f32.const 1) (local.get $x)))
      (f32.store offset=20 (local.get $o) (f32.copysign (local.get $x) (f32.const -1)))
      (f64.store offset=24 (local.get $o) (local.get $y))
      (i64.store offset=32 (local.get $o) (i64.reinterpret_f64 (local.get $y)))
      (f64.store offset=40 (local.get $o) (f64.neg (local.get $y)))
      (f64.store offset=48 (local.get $o) (f64.copysign (f64.const 2) (local.get $y)))
      ;; arithmetic on the arithmetic NaN, and conversions of it
      (f32.store offset=56 (local.get $o) (f32.mul (local.get $x) (f32.const 3)))
      (f64.store offset=64 (local.get $o) (f64.promote_f32 (local.get $x)))
      (f32.store offset=72 (local.get $o) (f32.demote_f64 (local.get $y)))
      (i32.store offset=76 (local.get $o) (i32.trunc_sat_f32_s (local.get $x)))
      (i32.store offset=80 (local.get $o) (f32.eq (local.get $x) (local.get $x)))
      ;; globals
      (global.set $g32 (local.get $x))
      (global.set $g64 (local.get $y))
      (f32.store offset=84 (local.get $o) (global.get $g32))
      (f64.store offset=88 (local.get $o) (global.get $g64))
      (global.set 2 (f32.sub (local.get $x) (f32.const 1)))
      ;; select against a NaN with a payload: the payload must survive
      (f32.store offset=96 (local.get $o)
        (select (local.get $x) (call $p32 (i32.const 0)) (i32.and (local.get $k) (i32.const 1))))
      (f64.store offset=104 (local.get $o)
        (select (call $p64 (i32.const 1)) (local.get $y) (i32.and (local.get $k) (i32.const 1))))
      ;; vector lanes
      (v128.store offset=112 (local.get $o) (f32x4.splat (local.get $x)))
      (v128.store offset=128 (local.get $o) (f64x2.replace_lane 1 (v128.const i64x2 7 7) (local.get $y)))
      (v128.store offset=144 (local.get $o) (call $vmk (local.get $k)))
      (i32.store offset=160 (local.get $o) (i32x4.extract_lane 2 (call $vmk (local.get $k))))
      (f32.store offset=164 (local.get $o) (f32x4.extract_lane 1 (call $vmk (local.get $k))))
      (v128.store offset=168 (local.get $o)
        (v128.xor (call $vmk (local.get $k)) (v128.const i32x4 1 2 3 4)))
      ;; host calls, direct and through the table
      (call $h32 (local.get $x))
      (call $h64 (local.get $y))
      (call_indirect (type $t64) (f64.sqrt (local.get $y)) (i32.const 1))
      (f32.store offset=184 (local.get $o) (call_indirect (type $t32) (local.get $x) (i32.const 0)))
      (br_if $next (i32.lt_u (local.tee $k (i32.add (local.get $k) (i32.const 1))) (i32.const 12)))))

  (func (export "ret32") (param i32) (result f32) (call $mk32 (local.get 0)))
  (func (export "ret64") (param i32) (result f64) (call $mk64 (local.get 0)))
  (func (export "multi") (param i32) (result f32 i32 f64 v128)
    (call $mk32 (local.get 0)) (local.get 0) (call $mk64 (local.get 0)) (call $vmk (local.get 0)))
  (func (export "inc32") (param f32) (result f32) (call_indirect (type $t32) (local.get 0) (i32.const 0))))
"#;

#[derive(Debug, Clone, Copy)]
enum Canon {
    Rewrite,
    Cranelift,
    Native,
}

/// Everything the guest makes observable, as bytes.
fn observe(canon: Canon, opt: wasmtime::OptLevel) -> Vec<u8> {
    let mut cfg = wasmtime::Config::new();
    cfg.cranelift_nan_canonicalization(matches!(canon, Canon::Cranelift))
        .relaxed_simd_deterministic(true)
        .cranelift_opt_level(opt);
    let engine = Engine::new(&cfg).unwrap();
    let wasm = wat::parse_str(GUEST).unwrap();
    let wasm = match canon {
        Canon::Rewrite => nan::canonicalize(&wasm).unwrap(),
        _ => wasm,
    };
    let module = Module::new(&engine, &wasm).unwrap();
    let mut store = Store::new(&engine, Vec::<u8>::new());
    let h32 = Func::wrap(&mut store, |mut c: wasmtime::Caller<'_, Vec<u8>>, x: f32| {
        c.data_mut().extend(x.to_bits().to_le_bytes())
    });
    let h64 = Func::wrap(&mut store, |mut c: wasmtime::Caller<'_, Vec<u8>>, x: f64| {
        c.data_mut().extend(x.to_bits().to_le_bytes())
    });
    let inst = Instance::new(&mut store, &module, &[h32.into(), h64.into()]).unwrap();
    inst.get_typed_func::<(), ()>(&mut store, "run").unwrap().call(&mut store, ()).unwrap();
    let mut out = inst.get_memory(&mut store, "memory").unwrap().data(&store)[..MAKERS as usize * 256].to_vec();
    out.extend(std::mem::take(store.data_mut()));
    let g = inst.get_global(&mut store, "last32").unwrap().get(&mut store);
    out.extend(g.unwrap_f32().to_bits().to_le_bytes());
    for k in 0..MAKERS {
        let r32 = inst.get_typed_func::<i32, f32>(&mut store, "ret32").unwrap().call(&mut store, k).unwrap();
        let r64 = inst.get_typed_func::<i32, f64>(&mut store, "ret64").unwrap().call(&mut store, k).unwrap();
        out.extend(r32.to_bits().to_le_bytes());
        out.extend(r64.to_bits().to_le_bytes());
        let multi = inst.get_func(&mut store, "multi").unwrap();
        let mut res = [Val::I32(0), Val::I32(0), Val::I32(0), Val::I32(0)];
        multi.call(&mut store, &[Val::I32(k)], &mut res).unwrap();
        out.extend(res[0].unwrap_f32().to_bits().to_le_bytes());
        out.extend(res[1].unwrap_i32().to_le_bytes());
        out.extend(res[2].unwrap_f64().to_bits().to_le_bytes());
        out.extend(res[3].unwrap_v128().as_u128().to_le_bytes());
        let inc = inst.get_typed_func::<f32, f32>(&mut store, "inc32").unwrap();
        out.extend(inc.call(&mut store, f32::from_bits(0xff80_0001)).unwrap().to_bits().to_le_bytes());
    }
    out
}

/// Every f32-aligned word that is a NaN, in `bytes`.
fn nan_words(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .filter(|w| w & 0x7f80_0000 == 0x7f80_0000 && w & 0x007f_ffff != 0)
        .collect()
}

#[test]
fn rewrite_matches_global_canonicalisation_and_cranelift_settings() {
    use wasmtime::OptLevel::{None, Speed, SpeedAndSize};
    let reference = observe(Canon::Rewrite, Speed);
    for (canon, opt) in
        [(Canon::Rewrite, None), (Canon::Rewrite, SpeedAndSize), (Canon::Cranelift, Speed), (Canon::Cranelift, None)]
    {
        let other = observe(canon, opt);
        let first_diff = reference.iter().zip(&other).position(|(a, b)| a != b);
        assert_eq!(reference.len(), other.len());
        assert!(first_diff.is_none(), "{canon:?}/{opt:?} differs from the rewrite at byte {first_diff:?}");
    }
    // The guest really makes NaNs: hundreds of the observed words are NaNs,
    // and the only payloads are the canonical one, its negation (a sign
    // operation applied after canonicalisation) and the NaNs with payloads
    // the guest loads from memory. f64 NaNs show up as their high words.
    let mut scan = reference.clone();
    for k in 0..MAKERS as usize {
        // Skip the xor-ed vectors (they are integers made from floats).
        scan[k * 256 + 168..k * 256 + 184].fill(0);
    }
    let nans = nan_words(&scan);
    assert!(nans.len() > 300, "{}", nans.len());
    let loaded = [0x7fa0_0001, 0xffc1_2345, 0x7ff4_0000, 0xfff8_dead];
    for w in &nans {
        let canonical = [0x7fc0_0000u32, 0x7ff8_0000].contains(&(w & 0x7fff_ffff));
        assert!(canonical || loaded.contains(w), "unexpected NaN word {w:#010x}");
    }
}

#[test]
#[cfg(target_arch = "x86_64")]
fn without_canonicalisation_the_guest_sees_x86_nans() {
    // The test above is not vacuous: on x86-64 the native NaN of 0/0 is
    // negative (0xffc00000), so the native run differs from the rewrite.
    let native = observe(Canon::Native, wasmtime::OptLevel::Speed);
    assert_eq!(&native[..4], &0xffc0_0000u32.to_le_bytes());
    assert_ne!(native, observe(Canon::Rewrite, wasmtime::OptLevel::Speed));
    assert_eq!(&observe(Canon::Rewrite, wasmtime::OptLevel::Speed)[..4], &0x7fc0_0000u32.to_le_bytes());
}
