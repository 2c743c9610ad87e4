//! Cheaper metering: small innermost loops are unrolled at load time, in
//! as many copies as keep the unrolled body near [`UNROLLED_BUDGET`]
//! instructions ([`copies`]: 16 copies of a body up to 40 instructions, 8
//! up to 80, 4 up to 160, 2 up to [`MAX_BODY`]).
//!
//! wasmtime checks fuel and the epoch deadline at every loop header. The
//! check is a few instructions, but its cold path is a call, and values
//! that live across a call must survive it: in a tight float loop (all
//! vector registers are caller-saved) that costs spills in every
//! iteration, and made mandelbrot's loop 1.9x slower. Unrolling the loop
//! body divides the number of header checks without changing what the loop
//! computes (shown for two copies):
//!
//! ```text
//! loop $L (result R)          block $exit (result R)
//!   BODY                        loop $L (result R)
//! end                             block $again
//!                                   BODY   ;; `br $L` -> `br $again`
//!                                   br $exit
//!                                 end
//!                                 BODY     ;; unchanged
//!                               end
//!                             end
//! ```
//!
//! Only innermost loops that do float arithmetic, without parameters, of at
//! most [`MAX_BODY`] instructions, using no branch other than `br`, `br_if`,
//! `br_table` are unrolled; everything else is copied byte for byte. Fuel stays exactly
//! deterministic (it counts the instructions executed, and this is a fixed
//! function of the module); it grows by one `br` per loop exit.

use std::ops::Range;

use wasm_encoder::InstructionSink;
use wasmparser::{BlockType, Operator, Parser, Payload};

use crate::nan::RewriteError;

/// Version of the transformation, part of the compiled-module cache key.
pub const UNROLL_VERSION: u32 = 3;

/// Largest loop body (in instructions) that is unrolled (twice).
pub const MAX_BODY: usize = 240;

/// About how many instructions an unrolled loop may hold. The copies
/// divide the metering checks at the loop header: on mandelbrot's loop,
/// metering cost x1.92 without unrolling, x1.24 with 4 copies, x1.12 with
/// 8 and x1.07 with 16; nbody's went from x1.17 (a budget of 320) to x1.10,
/// for 12-30 % more compile time on these small modules (`make bench`,
/// docs/runtime.md). Only float loops are unrolled, so big modules, mostly
/// integer code, barely grow.
pub const UNROLLED_BUDGET: usize = 640;

/// Most copies of one loop body.
pub const MAX_COPIES: u32 = 16;

/// How many copies of a loop body of `len` instructions: the largest power
/// of two up to [`MAX_COPIES`] whose copies stay within
/// [`UNROLLED_BUDGET`], and at least two.
pub fn copies(len: usize) -> u32 {
    let fit = UNROLLED_BUDGET / len.max(1);
    let mut n = 2;
    while n * 2 <= MAX_COPIES && (n as usize) * 2 <= fit {
        n *= 2;
    }
    n
}

/// Unrolls the small innermost loops of every function of `wasm`.
pub fn unroll_loops(wasm: &[u8]) -> Result<Vec<u8>, RewriteError> {
    let mut sections = Vec::new();
    let mut code = wasm_encoder::CodeSection::new();
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload?;
        if let Some((id, range)) = payload.as_section() {
            sections.push((id, range));
        }
        if let Payload::CodeSectionEntry(body) = payload {
            match unroll_body(wasm, &body)? {
                Some(bytes) => code.raw(&bytes),
                None => code.raw(&wasm[body.range()]),
            };
        }
    }
    crate::nan::reassemble(wasm, sections, &code)
}

/// The new body (locals and code), or `None` when no loop qualifies.
fn unroll_body(wasm: &[u8], body: &wasmparser::FunctionBody<'_>) -> Result<Option<Vec<u8>>, RewriteError> {
    let mut r = body.get_operators_reader()?;
    let code_start = r.original_position();
    let mut ops: Vec<(Operator<'_>, Range<usize>)> = Vec::new();
    while !r.eof() {
        let (op, start) = r.read_with_offset()?;
        ops.push((op, start..r.original_position()));
    }
    // Innermost loops that qualify: (index of `loop`, index of its `end`).
    let mut chosen = Vec::new();
    let mut open: Vec<(usize, bool)> = Vec::new(); // (index, is a loop with no loop inside)
    for (i, (op, _)) in ops.iter().enumerate() {
        match op {
            Operator::Loop { .. } => {
                for o in open.iter_mut() {
                    o.1 = false;
                }
                open.push((i, true));
            }
            Operator::Block { .. } | Operator::If { .. } | Operator::TryTable { .. } | Operator::Try { .. } => {
                open.push((i, false))
            }
            Operator::End => {
                if let Some((start, innermost)) = open.pop() {
                    if innermost && qualifies(&ops[start..=i]) {
                        chosen.push((start, i));
                    }
                }
            }
            _ => {}
        }
    }
    if chosen.is_empty() {
        return Ok(None);
    }
    chosen.sort_unstable();
    let mut out = wasm.get(body.range().start..code_start).map(<[u8]>::to_vec).unwrap_or_default();
    let copy = |out: &mut Vec<u8>, r: &Range<usize>| out.extend_from_slice(&wasm[r.clone()]);
    let mut next = 0;
    for (start, end) in chosen {
        for (_, r) in &ops[next..start] {
            copy(&mut out, r);
        }
        let Operator::Loop { blockty } = ops[start].0 else {
            return Err(RewriteError::Invalid("expected a loop".into()));
        };
        let bt = match blockty {
            BlockType::Empty => wasm_encoder::BlockType::Empty,
            BlockType::Type(t) => wasm_encoder::BlockType::Result(
                wasm_encoder::reencode::Reencode::val_type(&mut wasm_encoder::reencode::RoundtripReencoder, t)
                    .map_err(|e| RewriteError::Invalid(e.to_string()))?,
            ),
            BlockType::FuncType(i) => wasm_encoder::BlockType::FunctionType(i),
        };
        let body = &ops[start + 1..end];
        // Copy i of n sits inside n-i `$again` blocks, the loop and `$exit`:
        // its loop label becomes the innermost `$again` (same depth), labels
        // outside move out by n-i+1, and `$exit` is at depth n-i+1.
        let n = copies(body.len());
        InstructionSink::new(&mut out).block(bt).loop_(bt);
        for _ in 1..n {
            InstructionSink::new(&mut out).block(wasm_encoder::BlockType::Empty);
        }
        for i in 1..n {
            emit_copy(wasm, &mut out, body, n - i + 1)?;
            InstructionSink::new(&mut out).br(n - i + 1).end();
        }
        emit_copy(wasm, &mut out, body, 1)?;
        InstructionSink::new(&mut out).end().end();
        next = end + 1;
    }
    for (_, r) in &ops[next..] {
        copy(&mut out, r);
    }
    Ok(Some(out))
}

/// Whether a loop (`ops` from `loop` to its `end`) can be unrolled.
fn qualifies(ops: &[(Operator<'_>, Range<usize>)]) -> bool {
    let body = &ops[1..ops.len() - 1];
    if body.len() > MAX_BODY {
        return false;
    }
    if let Operator::Loop { blockty: BlockType::FuncType(_) } = ops[0].0 {
        // May have parameters; not worth a new type.
        return false;
    }
    // Float arithmetic: where the checks hurt (every vector register is
    // caller-saved, so the check's cold call spills the loop's floats).
    // Integer loops keep their values in callee-saved registers, and
    // unrolling every loop of a big module makes it much slower to compile.
    let floats =
        body.iter().any(|(op, _)| crate::nan::scalar_arith(op).is_some() || crate::nan::simd_arith(op).is_some());
    floats
        && body.iter().all(|(op, _)| {
            !matches!(
                op,
                Operator::TryTable { .. }
                    | Operator::Try { .. }
                    | Operator::Catch { .. }
                    | Operator::CatchAll
                    | Operator::Delegate { .. }
                    | Operator::Rethrow { .. }
                    | Operator::BrOnNull { .. }
                    | Operator::BrOnNonNull { .. }
                    | Operator::BrOnCast { .. }
                    | Operator::BrOnCastFail { .. }
                    | Operator::Resume { .. }
                    | Operator::ResumeThrow { .. }
                    | Operator::ResumeThrowRef { .. }
            )
        })
}

/// Copies a loop body, adding `shift` to branch depths that leave the body
/// (the loop's own label, at depth `k` from nesting `k`, keeps its depth:
/// in the first copy it now names `$again`).
fn emit_copy(
    wasm: &[u8],
    out: &mut Vec<u8>,
    body: &[(Operator<'_>, Range<usize>)],
    shift: u32,
) -> Result<(), RewriteError> {
    let mut k: u32 = 0;
    let adjust = |d: u32, k: u32| if d > k { d + shift } else { d };
    for (op, r) in body {
        match op {
            Operator::Block { .. } | Operator::Loop { .. } | Operator::If { .. } => {
                k += 1;
                out.extend_from_slice(&wasm[r.clone()]);
            }
            Operator::End => {
                k = k.saturating_sub(1);
                out.extend_from_slice(&wasm[r.clone()]);
            }
            Operator::Br { relative_depth } => {
                InstructionSink::new(out).br(adjust(*relative_depth, k));
            }
            Operator::BrIf { relative_depth } => {
                InstructionSink::new(out).br_if(adjust(*relative_depth, k));
            }
            Operator::BrTable { targets } => {
                let mut ts = Vec::new();
                for t in targets.targets() {
                    ts.push(adjust(t?, k));
                }
                InstructionSink::new(out).br_table(ts, adjust(targets.default(), k));
            }
            _ => out.extend_from_slice(&wasm[r.clone()]),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::{Config, Engine, Instance, Module, Store};

    fn fuel_and_result(wasm: &[u8], arg: i32) -> (i32, u64) {
        let mut c = Config::new();
        c.consume_fuel(true);
        let engine = Engine::new(&c).unwrap();
        let module = Module::new(&engine, wasm).unwrap();
        let mut store = Store::new(&engine, ());
        store.set_fuel(1 << 40).unwrap();
        let inst = Instance::new(&mut store, &module, &[]).unwrap();
        let f = inst.get_typed_func::<i32, i32>(&mut store, "f").unwrap();
        let r = f.call(&mut store, arg).unwrap();
        (r, (1 << 40) - store.get_fuel().unwrap())
    }

    #[test]
    fn unrolled_loops_compute_the_same() {
        // Exits from the loop through br_if to an outer block, through the
        // fall-through with a result, and a br_table choosing between the
        // loop and the exit; an inner block with its own branches.
        let wat = r#"(module
          (func (export "f") (param i32) (result i32) (local i32 i32 f64)
            (block $out
              (loop $l (result i32)
                (local.set 3 (f64.add (local.get 3) (f64.const 0.5)))
                (local.set 1 (i32.add (local.get 1) (local.get 0)))
                (block $skip
                  (br_if $skip (i32.and (local.get 1) (i32.const 1)))
                  (local.set 2 (i32.add (local.get 2) (i32.const 1))))
                (br_if $out (i32.gt_u (local.get 1) (i32.const 100000)))
                (br_table $l $out (i32.gt_u (local.get 2) (i32.const 50)))
              )
              (drop))
            (i32.add (local.get 1) (i32.mul (local.get 2) (i32.const 1000)))))"#;
        let wasm = wat::parse_str(wat).unwrap();
        let unrolled = unroll_loops(&wasm).unwrap();
        assert_ne!(unrolled, wasm);
        for arg in [1, 2, 3, 7, 1000, 99999] {
            let (a, fa) = fuel_and_result(&wasm, arg);
            let (b, fb) = fuel_and_result(&unrolled, arg);
            assert_eq!(a, b, "arg {arg}");
            // Fuel differs by at most the one added `br` per loop exit.
            assert!(fb >= fa && fb <= fa + 1, "{fa} vs {fb}");
        }
    }

    #[test]
    fn the_copies_keep_the_unrolled_body_within_its_budget() {
        assert_eq!(copies(1), MAX_COPIES);
        assert_eq!(copies(40), 16);
        assert_eq!(copies(41), 8);
        assert_eq!(copies(80), 8);
        assert_eq!(copies(81), 4);
        assert_eq!(copies(160), 4);
        assert_eq!(copies(161), 2);
        assert_eq!(copies(MAX_BODY), 2);
        for len in 1..=MAX_BODY {
            let n = copies(len) as usize;
            assert!(n.is_power_of_two() && (2..=MAX_COPIES as usize).contains(&n));
            assert!(n == 2 || n * len <= UNROLLED_BUDGET, "{len}: {n} copies");
        }
    }

    #[test]
    fn small_loops_get_many_copies() {
        // A loop whose result leaves through the fall-through, counting
        // iterations; and a `br` out of the loop from inside an `if`.
        let wat = r#"(module
          (func (export "f") (param i32) (result i32) (local i32 f32)
            (block $done (result i32)
              (loop $l (result i32)
                (local.set 2 (f32.mul (local.get 2) (f32.const 1.5)))
                (local.set 1 (i32.add (local.get 1) (i32.const 3)))
                (if (i32.eq (local.get 1) (i32.const 300)) (then (br $done (i32.const -1))))
                (local.set 0 (i32.sub (local.get 0) (i32.const 1)))
                (br_if $l (i32.gt_s (local.get 0) (i32.const 0)))
                (local.get 1)))))"#;
        let wasm = wat::parse_str(wat).unwrap();
        let unrolled = unroll_loops(&wasm).unwrap();
        assert!(unrolled.len() > wasm.len() + 40, "{} vs {}", unrolled.len(), wasm.len());
        for arg in [0, 1, 2, 3, 4, 5, 9, 99, 100, 101, 1000] {
            let (a, fa) = fuel_and_result(&wasm, arg);
            let (b, fb) = fuel_and_result(&unrolled, arg);
            assert_eq!(a, b, "arg {arg}");
            assert!(fb >= fa && fb <= fa + 1, "{fa} vs {fb}");
        }
    }

    #[test]
    fn integer_loops_are_kept() {
        let wat = r#"(module (func (export "f") (param i32) (result i32)
            (loop $l (br_if $l (local.tee 0 (i32.sub (local.get 0) (i32.const 1))))) (local.get 0)))"#;
        let wasm = wat::parse_str(wat).unwrap();
        assert_eq!(unroll_loops(&wasm).unwrap(), wasm);
    }

    #[test]
    fn big_or_nested_loops_are_kept() {
        let nested = wat::parse_str(
            r#"(module (func (export "f") (param i32) (result i32)
                 (loop $a (loop $b (br_if $b (i32.const 0))) (br_if $a (i32.const 0))) (local.get 0)))"#,
        )
        .unwrap();
        let out = unroll_loops(&nested).unwrap();
        // Only the inner loop grows.
        assert_eq!(fuel_and_result(&out, 5).0, 5);
        let body = "(drop (f32.add (f32.const 1) (f32.const 1)))".repeat(MAX_BODY / 2);
        let big = wat::parse_str(format!(r#"(module (func (loop {body})))"#)).unwrap();
        assert_eq!(unroll_loops(&big).unwrap(), big);
    }
}
