//! NaN canonicalisation by module rewrite: canonical NaNs only where their
//! bits can be seen.
//!
//! Wasm specifies every float result bit for bit except the payload and sign
//! of a NaN produced by arithmetic (`add`, `sqrt`, `min`, `ceil`, `promote`,
//! ...). Those bits differ between CPUs, so a deterministic job must not be
//! able to see them. Cranelift's `nan_canonicalization` replaces the NaN
//! after every arithmetic instruction; this module instead rewrites the
//! module once, at load time, so that a NaN coming from arithmetic is
//! replaced by the canonical NaN (`0x7fc00000` / `0x7ff8000000000000`, the
//! same positive one Cranelift uses) only where its bits could become
//! observable:
//!
//! - stored to memory (`f32.store`, `f64.store`) or to a global (`global.set`);
//! - reinterpreted as an integer (`i32.reinterpret_f32`, `i64.reinterpret_f64`);
//! - moved into a vector (`f32x4.splat`, `f64x2.splat`, `*.replace_lane`);
//! - given a sign operation (`abs`, `neg`, `copysign`, either operand), which
//!   would otherwise expose or keep the nondeterministic sign;
//! - merged with a value that is not from arithmetic in a `select` (the
//!   arithmetic operand is canonicalised, so that a NaN from memory keeps its
//!   payload);
//! - passed to the host: arguments of calls to imports, of indirect calls
//!   (the target may be a host function) and of `throw`;
//! - returned from a function the host can call (exported, or whose
//!   reference escapes into a table or `ref.func`; a function such a one
//!   tail-calls counts too).
//!
//! Vector float arithmetic (`f32x4.add`, ...) is canonicalised right where it
//! produces its result: `v128` is untyped, so every later use would otherwise
//! have to be treated as a possible observation. All other values flow
//! untouched, and arithmetic runs natively.
//!
//! Which values may hold an arithmetic NaN is a forward "taint" analysis over
//! each function's structured control flow: values on the operand stack and
//! locals, joined at block ends and iterated to a fixed point at loop
//! headers. Between functions, summaries say which parameters and results of
//! directly called functions may be tainted (iterated over the whole module
//! from "none" until they stop growing); host-callable functions return
//! clean values, and the host and indirect calls pass clean arguments.
//! The analysis over-approximates: a value it cannot prove clean is treated
//! as tainted, so the guarantee holds; the price of imprecision is only that
//! a NaN loaded from memory that is merged (same local at a join, same block
//! result) with an arithmetic result can be canonicalised too. See
//! `docs/runtime.md` ("Determinism") for the argument that no other place
//! can expose NaN bits.

use wasm_encoder::reencode::{Reencode, RoundtripReencoder};
use wasm_encoder::{Ieee32, Ieee64, InstructionSink};
use wasmparser::{
    BlockType, CompositeInnerType, ExternalKind, FrameKind, FuncType, ModuleArity, Operator, Parser, Payload, RefType,
    StorageType, SubType, TableInit, ValType,
};

/// Version of the rewrite. It is part of the compiled-module cache key, so
/// bump it whenever the rewritten code changes.
pub const REWRITE_VERSION: u32 = 1;

/// The canonical f32 NaN (positive, quiet, zero payload).
pub const CANONICAL_F32: u32 = 0x7fc0_0000;
/// The canonical f64 NaN (positive, quiet, zero payload).
pub const CANONICAL_F64: u64 = 0x7ff8_0000_0000_0000;

/// Why a module could not be rewritten.
#[derive(Debug, thiserror::Error)]
pub enum RewriteError {
    /// The bytes are not a well-formed module.
    #[error("cannot read the module for NaN canonicalisation: {0}")]
    Parse(#[from] wasmparser::BinaryReaderError),
    /// The module is malformed in a way the parser does not catch.
    #[error("invalid module: {0}")]
    Invalid(String),
    /// The module uses something the rewrite does not handle.
    #[error(
        "the module uses {0}, which the NaN rewrite does not handle: run it on an executor with \
         `FloatDeterminism::Cranelift`"
    )]
    Unsupported(String),
}

type Result<T> = std::result::Result<T, RewriteError>;

const CODE_SECTION: u8 = 10;

/// Rewrites `wasm` (a core module) so that no NaN produced by arithmetic
/// can be observed with a nondeterministic payload or sign (see the module
/// documentation). Everything else is kept: function indices, imports,
/// exports, data and custom sections are copied as they are.
pub fn canonicalize(wasm: &[u8]) -> Result<Vec<u8>> {
    let mut info = Info::default();
    let mut sections: Vec<(u8, std::ops::Range<usize>)> = Vec::new();
    let mut bodies = Vec::new();
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload?;
        if let Some((id, range)) = payload.as_section() {
            sections.push((id, range));
        }
        match payload {
            Payload::Version { encoding: wasmparser::Encoding::Component, .. } => {
                return Err(RewriteError::Unsupported("the component model".into()))
            }
            Payload::TypeSection(r) => {
                for group in r {
                    info.types.extend(group?.into_types());
                }
            }
            Payload::ImportSection(r) => {
                for imp in r.into_imports() {
                    match imp?.ty {
                        wasmparser::TypeRef::Func(t) | wasmparser::TypeRef::FuncExact(t) => {
                            info.funcs.push(t);
                            info.imported_funcs += 1;
                        }
                        wasmparser::TypeRef::Global(g) => info.globals.push(g.content_type),
                        wasmparser::TypeRef::Tag(t) => info.tags.push(t.func_type_idx),
                        _ => {}
                    }
                }
            }
            Payload::FunctionSection(r) => {
                for t in r {
                    info.funcs.push(t?);
                }
            }
            Payload::TableSection(r) => {
                for t in r {
                    if let TableInit::Expr(e) = t?.init {
                        info.scan_const_expr(&e)?;
                    }
                }
            }
            Payload::GlobalSection(r) => {
                for g in r {
                    let g = g?;
                    info.globals.push(g.ty.content_type);
                    info.scan_const_expr(&g.init_expr)?;
                }
            }
            Payload::TagSection(r) => {
                for t in r {
                    info.tags.push(t?.func_type_idx);
                }
            }
            Payload::ExportSection(r) => {
                for e in r {
                    let e = e?;
                    if e.kind == ExternalKind::Func {
                        info.escape(e.index);
                    }
                }
            }
            Payload::ElementSection(r) => {
                for e in r {
                    match e?.items {
                        wasmparser::ElementItems::Functions(fs) => {
                            for f in fs {
                                info.escape(f?);
                            }
                        }
                        wasmparser::ElementItems::Expressions(_, es) => {
                            for e in es {
                                info.scan_const_expr(&e?)?;
                            }
                        }
                    }
                }
            }
            Payload::CodeSectionEntry(body) => bodies.push(body),
            Payload::UnknownSection { id, .. } => {
                return Err(RewriteError::Invalid(format!("unknown section id {id}")));
            }
            _ => {}
        }
    }
    let n = info.funcs.len();
    info.escaping.resize(n, false);
    info.called.resize(n, false);
    for f in std::mem::take(&mut info.pending_escapes) {
        info.mark_escaping(f)?;
    }

    // Pass 1: call graph, escaping references, and which bodies need work.
    let mut needs = Vec::with_capacity(bodies.len());
    let mut tail_calls = Vec::new();
    for (i, body) in bodies.iter().enumerate() {
        let me = info.imported_funcs as usize + i;
        needs.push(info.prescan(me, body, &mut tail_calls)?);
    }
    // A function an escaping one tail-calls returns to the host too.
    let mut changed = true;
    while changed {
        changed = false;
        for &(from, to) in &tail_calls {
            if info.escaping[from] && !info.escaping[to] {
                info.escaping[to] = true;
                changed = true;
            }
        }
    }

    // Pass 2: rewrite the bodies that can hold an arithmetic NaN. Which
    // parameters and results of directly called functions may be tainted is
    // found by iterating the analyses from "nothing is" until no summary
    // grows (each round analyses every such body; a round that changes
    // nothing has produced the final code).
    let mut work: Vec<usize> = Vec::new();
    for (i, &need) in needs.iter().enumerate() {
        let me = info.imported_funcs as usize + i;
        let float_params = info.func_sig(me as u32)?.params().iter().any(|t| kind(*t).is_some());
        if need || (info.called[me] && float_params) {
            work.push(i);
        }
    }
    let mut summary = Summary::new(&info)?;
    let mut rewritten: Vec<Option<wasm_encoder::Function>> = (0..bodies.len()).map(|_| None).collect();
    for round in 0.. {
        if round > 1000 {
            return Err(RewriteError::Unsupported("calls the NaN analysis cannot settle".into()));
        }
        let mut next = summary.clone();
        for &i in &work {
            let me = info.imported_funcs as usize + i;
            let (f, found) = FuncRewriter::new(&info, &summary, wasm, me, &bodies[i])?.run()?;
            next.join_results(me, &found.results);
            for (callee, args) in found.args {
                next.join_params(callee as usize, &args);
            }
            rewritten[i] = Some(f);
        }
        if next == summary {
            break;
        }
        summary = next;
    }
    let mut code = wasm_encoder::CodeSection::new();
    for (i, body) in bodies.iter().enumerate() {
        match &rewritten[i] {
            Some(f) => code.function(f),
            None => code.raw(&wasm[body.range()]),
        };
    }

    reassemble(wasm, sections, &code)
}

/// `wasm` again with its code section replaced by `code`, every other
/// section copied byte for byte (`sections`: each section's id and range,
/// in order). Shared by the load-time rewrites.
pub(crate) fn reassemble(
    wasm: &[u8],
    sections: Vec<(u8, std::ops::Range<usize>)>,
    code: &wasm_encoder::CodeSection,
) -> Result<Vec<u8>> {
    let mut module = wasm_encoder::Module::new();
    for (id, range) in sections {
        if id == CODE_SECTION {
            module.section(code);
        } else {
            let data = wasm.get(range).ok_or_else(|| RewriteError::Invalid("section out of bounds".into()))?;
            module.section(&wasm_encoder::RawSection { id, data });
        }
    }
    Ok(module.finish())
}

/// Which parameters and results of each function may hold an arithmetic
/// NaN, as far as direct calls go (host-callable functions return clean
/// results; the host and indirect calls pass clean arguments).
#[derive(Clone, PartialEq, Eq)]
struct Summary {
    params: Vec<Vec<T>>,
    results: Vec<Vec<T>>,
}

impl Summary {
    fn new(info: &Info) -> Result<Summary> {
        let mut params = Vec::with_capacity(info.funcs.len());
        let mut results = Vec::with_capacity(info.funcs.len());
        for f in 0..info.funcs.len() {
            let sig = info.func_sig(f as u32)?;
            params.push(vec![T::Clean; sig.params().len()]);
            results.push(vec![T::Clean; sig.results().len()]);
        }
        Ok(Summary { params, results })
    }

    fn join_params(&mut self, f: usize, v: &[T]) {
        if let Some(p) = self.params.get_mut(f) {
            for (a, b) in p.iter_mut().zip(v) {
                *a = a.join(*b);
            }
        }
    }

    fn join_results(&mut self, f: usize, v: &[T]) {
        if let Some(p) = self.results.get_mut(f) {
            for (a, b) in p.iter_mut().zip(v) {
                *a = a.join(*b);
            }
        }
    }
}

/// What one function's analysis found about its calls and returns.
#[derive(Default)]
struct Found {
    /// Joined taint of the values it returns (before canonicalisation).
    results: Vec<T>,
    /// Joined taint of the arguments it passes, per directly called function.
    args: Vec<(u32, Vec<T>)>,
}

impl Found {
    fn args(&mut self, callee: u32, v: Vec<T>) {
        match self.args.iter_mut().find(|(c, _)| *c == callee) {
            Some((_, a)) => {
                for (x, y) in a.iter_mut().zip(v) {
                    *x = x.join(y);
                }
            }
            None => self.args.push((callee, v)),
        }
    }

    fn results(&mut self, v: &[T]) {
        if self.results.len() < v.len() {
            self.results.resize(v.len(), T::Clean);
        }
        for (x, y) in self.results.iter_mut().zip(v) {
            *x = x.join(*y);
        }
    }
}

/// What the rewrite needs to know about the module.
#[derive(Default)]
struct Info {
    types: Vec<SubType>,
    /// Type index of every function, imports first.
    funcs: Vec<u32>,
    imported_funcs: u32,
    globals: Vec<ValType>,
    /// Type index of every tag.
    tags: Vec<u32>,
    /// Functions the host may call: their float results are canonicalised.
    escaping: Vec<bool>,
    /// Functions that are the target of a direct `call`/`return_call`.
    called: Vec<bool>,
    /// Escapes seen before the function section was complete.
    pending_escapes: Vec<u32>,
}

impl Info {
    fn escape(&mut self, f: u32) {
        self.pending_escapes.push(f);
    }

    fn mark_escaping(&mut self, f: u32) -> Result<()> {
        match self.escaping.get_mut(f as usize) {
            Some(e) => {
                *e = true;
                Ok(())
            }
            None => Err(RewriteError::Invalid(format!("function index {f} out of bounds"))),
        }
    }

    fn scan_const_expr(&mut self, e: &wasmparser::ConstExpr<'_>) -> Result<()> {
        let mut r = e.get_operators_reader();
        while !r.eof() {
            if let Operator::RefFunc { function_index } = r.read()? {
                self.escape(function_index);
            }
        }
        Ok(())
    }

    fn func_type(&self, type_index: u32) -> Result<&FuncType> {
        match self.types.get(type_index as usize).map(|t| &t.composite_type.inner) {
            Some(CompositeInnerType::Func(f)) => Ok(f),
            _ => Err(RewriteError::Invalid(format!("type {type_index} is not a function type"))),
        }
    }

    fn func_sig(&self, func: u32) -> Result<&FuncType> {
        let t = self.funcs.get(func as usize).ok_or_else(|| RewriteError::Invalid(format!("no function {func}")))?;
        self.func_type(*t)
    }

    fn is_import(&self, func: u32) -> bool {
        func < self.imported_funcs
    }

    /// Whether a struct or array type stores floats (which the rewrite does
    /// not follow into the GC heap).
    fn has_float_storage(&self, type_index: u32) -> bool {
        let float = |s: &StorageType| matches!(s, StorageType::Val(ValType::F32 | ValType::F64));
        match self.types.get(type_index as usize).map(|t| &t.composite_type.inner) {
            Some(CompositeInnerType::Struct(s)) => s.fields.iter().any(|f| float(&f.element_type)),
            Some(CompositeInnerType::Array(a)) => float(&a.0.element_type),
            _ => false,
        }
    }

    /// Records calls and escaping references of one body; returns whether
    /// it contains a source of arithmetic NaNs.
    fn prescan(
        &mut self,
        me: usize,
        body: &wasmparser::FunctionBody<'_>,
        tail_calls: &mut Vec<(usize, usize)>,
    ) -> Result<bool> {
        let mut r = body.get_operators_reader()?;
        let mut source = false;
        while !r.eof() {
            let op = r.read()?;
            match op {
                Operator::Call { function_index } | Operator::ReturnCall { function_index } => {
                    let called = self
                        .called
                        .get_mut(function_index as usize)
                        .ok_or_else(|| RewriteError::Invalid(format!("call to unknown function {function_index}")))?;
                    *called = true;
                    if matches!(op, Operator::ReturnCall { .. }) && !self.is_import(function_index) {
                        tail_calls.push((me, function_index as usize));
                    }
                    if !self.is_import(function_index)
                        && self.func_sig(function_index)?.results().iter().any(|t| kind(*t).is_some())
                    {
                        source = true;
                    }
                }
                Operator::RefFunc { function_index } => self.mark_escaping(function_index)?,
                ref op => {
                    if scalar_arith(op).is_some() || simd_arith(op).is_some() {
                        source = true;
                    }
                }
            }
        }
        Ok(source)
    }
}

/// What a value on the stack or in a local may hold: `Clean` values have
/// deterministic bits; `F32`/`F64` values may be an arithmetic NaN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum T {
    Clean,
    F32,
    F64,
}

impl T {
    fn join(self, other: T) -> T {
        if self == T::Clean {
            other
        } else {
            self
        }
    }

    fn tainted(self) -> bool {
        self != T::Clean
    }
}

fn kind(t: ValType) -> Option<T> {
    match t {
        ValType::F32 => Some(T::F32),
        ValType::F64 => Some(T::F64),
        _ => None,
    }
}

/// Scalar float instructions whose NaN results have unspecified bits, and
/// the type they produce.
pub(crate) fn scalar_arith(op: &Operator<'_>) -> Option<T> {
    use Operator::*;
    match op {
        F32Add | F32Sub | F32Mul | F32Div | F32Min | F32Max | F32Sqrt | F32Ceil | F32Floor | F32Trunc | F32Nearest
        | F32DemoteF64 => Some(T::F32),
        F64Add | F64Sub | F64Mul | F64Div | F64Min | F64Max | F64Sqrt | F64Ceil | F64Floor | F64Trunc | F64Nearest
        | F64PromoteF32 => Some(T::F64),
        _ => None,
    }
}

/// Vector float instructions whose NaN lanes have unspecified bits, and the
/// lane type of their result.
pub(crate) fn simd_arith(op: &Operator<'_>) -> Option<T> {
    use Operator::*;
    match op {
        F32x4Add | F32x4Sub | F32x4Mul | F32x4Div | F32x4Min | F32x4Max | F32x4Sqrt | F32x4Ceil | F32x4Floor
        | F32x4Trunc | F32x4Nearest | F32x4DemoteF64x2Zero | F32x4RelaxedMadd | F32x4RelaxedNmadd | F32x4RelaxedMin
        | F32x4RelaxedMax => Some(T::F32),
        F64x2Add | F64x2Sub | F64x2Mul | F64x2Div | F64x2Min | F64x2Max | F64x2Sqrt | F64x2Ceil | F64x2Floor
        | F64x2Trunc | F64x2Nearest | F64x2PromoteLowF32x4 | F64x2RelaxedMadd | F64x2RelaxedNmadd | F64x2RelaxedMin
        | F64x2RelaxedMax => Some(T::F64),
        _ => None,
    }
}

/// Which locals may hold an arithmetic NaN (a bit per local).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Locals(Vec<u64>);

impl Locals {
    fn new(n: usize) -> Self {
        Locals(vec![0; n.div_ceil(64)])
    }

    fn get(&self, i: u32) -> bool {
        self.0.get(i as usize / 64).is_some_and(|w| w >> (i % 64) & 1 == 1)
    }

    fn set(&mut self, i: u32, v: bool) {
        if let Some(w) = self.0.get_mut(i as usize / 64) {
            if v {
                *w |= 1 << (i % 64);
            } else {
                *w &= !(1 << (i % 64));
            }
        }
    }

    fn join(&mut self, other: &Locals) {
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a |= *b;
        }
    }
}

/// The abstract state flowing into a label: locals and the label's values.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Edge {
    locals: Locals,
    values: Vec<T>,
}

impl Edge {
    fn join(into: &mut Option<Edge>, e: Edge) -> bool {
        match into {
            None => {
                *into = Some(e);
                true
            }
            Some(cur) => {
                let before = cur.clone();
                cur.locals.join(&e.locals);
                for (a, b) in cur.values.iter_mut().zip(e.values) {
                    *a = a.join(b);
                }
                *cur != before
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Func,
    Block,
    Loop,
    If,
    Else,
    TryTable,
}

struct Frame {
    kind: Kind,
    blockty: BlockType,
    /// Operand stack height below the frame's parameters.
    height: usize,
    params: Vec<ValType>,
    results: Vec<ValType>,
    /// Join of everything reaching the frame's end.
    end: Option<Edge>,
    /// For `if`: the state on entry, which the `else` branch starts from.
    if_entry: Option<Edge>,
    unreachable: bool,
    /// For loops: index into the per-function loop header states.
    loop_id: usize,
    /// For `try_table`: the frames its catch clauses branch to.
    catches: Vec<usize>,
}

impl Frame {
    fn label_types(&self) -> &[ValType] {
        if self.kind == Kind::Loop {
            &self.params
        } else {
            &self.results
        }
    }
}

/// Rewrites one function body.
struct FuncRewriter<'a> {
    info: &'a Info,
    summary: &'a Summary,
    found: Found,
    wasm: &'a [u8],
    body: &'a wasmparser::FunctionBody<'a>,
    me: usize,
    escaping: bool,
    local_types: Vec<ValType>,
    declared: Vec<(u32, ValType)>,
    /// Header state of each loop, kept across passes until it is stable.
    loops: Vec<Option<Edge>>,
    // Per pass:
    stack: Vec<T>,
    frames: Vec<Frame>,
    locals: Locals,
    out: Vec<u8>,
    scratch: Vec<ValType>,
    /// The scratch local used to canonicalise each type (f32, f64, v128).
    canon_local: [Option<u32>; 3],
    changed: bool,
    next_loop: usize,
}

impl<'a> FuncRewriter<'a> {
    fn new(
        info: &'a Info,
        summary: &'a Summary,
        wasm: &'a [u8],
        me: usize,
        body: &'a wasmparser::FunctionBody<'a>,
    ) -> Result<Self> {
        let sig = info.func_sig(me as u32)?;
        let mut local_types: Vec<ValType> = sig.params().to_vec();
        let mut declared = Vec::new();
        for l in body.get_locals_reader()? {
            let (count, ty) = l?;
            if local_types.len() + count as usize > 100_000 {
                return Err(RewriteError::Invalid("too many locals".into()));
            }
            local_types.extend(std::iter::repeat_n(ty, count as usize));
            declared.push((count, ty));
        }
        Ok(FuncRewriter {
            info,
            summary,
            found: Found::default(),
            wasm,
            body,
            me,
            escaping: info.escaping[me],
            locals: Locals::new(local_types.len()),
            local_types,
            declared,
            loops: Vec::new(),
            stack: Vec::new(),
            frames: Vec::new(),
            out: Vec::new(),
            scratch: Vec::new(),
            canon_local: [None; 3],
            changed: false,
            next_loop: 0,
        })
    }

    /// Runs passes until the loop header states are stable, then returns
    /// the rewritten function from the last pass and what it found.
    fn run(mut self) -> Result<(wasm_encoder::Function, Found)> {
        for _ in 0..1000 {
            self.pass()?;
            if !self.changed {
                let mut locals = Vec::with_capacity(self.declared.len() + self.scratch.len());
                let mut re = RoundtripReencoder;
                for &(n, t) in &self.declared {
                    locals.push((n, re.val_type(t).map_err(|e| RewriteError::Invalid(e.to_string()))?));
                }
                for &t in &self.scratch {
                    locals.push((1, re.val_type(t).map_err(|e| RewriteError::Invalid(e.to_string()))?));
                }
                let mut f = wasm_encoder::Function::new(locals);
                f.raw(std::mem::take(&mut self.out));
                return Ok((f, self.found));
            }
        }
        Err(RewriteError::Unsupported("control flow the NaN analysis cannot settle".into()))
    }

    fn pass(&mut self) -> Result<()> {
        let sig = self.info.func_sig(self.me as u32)?;
        self.stack.clear();
        self.out.clear();
        self.scratch.clear();
        self.canon_local = [None; 3];
        self.changed = false;
        self.next_loop = 0;
        self.found = Found::default();
        self.locals = Locals::new(self.local_types.len());
        for (i, t) in self.summary.params[self.me].iter().enumerate() {
            self.locals.set(i as u32, t.tainted());
        }
        self.frames = vec![Frame {
            kind: Kind::Func,
            blockty: BlockType::FuncType(self.info.funcs[self.me]),
            height: 0,
            params: Vec::new(),
            results: sig.results().to_vec(),
            end: None,
            if_entry: None,
            unreachable: false,
            loop_id: 0,
            catches: Vec::new(),
        }];
        let mut r = self.body.get_operators_reader()?;
        while !r.eof() {
            let (op, start) = r.read_with_offset()?;
            let end = r.original_position();
            if self.frames.is_empty() {
                return Err(RewriteError::Invalid("instructions after the end of the function".into()));
            }
            self.op(&op, start..end)?;
        }
        if !self.frames.is_empty() {
            return Err(RewriteError::Invalid("function body does not end".into()));
        }
        Ok(())
    }

    fn raw(&mut self, range: std::ops::Range<usize>) -> Result<()> {
        let bytes = self.wasm.get(range).ok_or_else(|| RewriteError::Invalid("instruction out of bounds".into()))?;
        self.out.extend_from_slice(bytes);
        Ok(())
    }

    fn top(&self) -> &Frame {
        // `pass` checks that a frame exists before each instruction.
        &self.frames[self.frames.len() - 1]
    }

    fn reachable(&self) -> bool {
        !self.top().unreachable
    }

    fn pop(&mut self) -> T {
        if self.stack.len() > self.top().height {
            self.stack.pop().unwrap_or(T::Clean)
        } else {
            T::Clean
        }
    }

    fn popn(&mut self, n: usize) -> Vec<T> {
        let mut v: Vec<T> = (0..n).map(|_| self.pop()).collect();
        v.reverse();
        v
    }

    /// The top `n` values without popping them (missing ones are clean).
    fn peekn(&self, n: usize) -> Vec<T> {
        let avail = self.stack.len().saturating_sub(self.top().height).min(n);
        let mut v = vec![T::Clean; n - avail];
        v.extend_from_slice(&self.stack[self.stack.len() - avail..]);
        v
    }

    fn set_unreachable(&mut self) {
        let h = self.top().height;
        self.stack.truncate(h);
        if let Some(f) = self.frames.last_mut() {
            f.unreachable = true;
        }
    }

    fn sink(&mut self) -> InstructionSink<'_> {
        InstructionSink::new(&mut self.out)
    }

    fn new_scratch(&mut self, t: ValType) -> u32 {
        let n = self.local_types.len() + self.scratch.len();
        self.scratch.push(t);
        n as u32
    }

    fn canon_slot(&mut self, slot: usize, t: ValType) -> u32 {
        match self.canon_local[slot] {
            Some(l) => l,
            None => {
                let l = self.new_scratch(t);
                self.canon_local[slot] = Some(l);
                l
            }
        }
    }

    /// Canonicalises the scalar on top of the stack (known to be `t`):
    /// `x == x ? x : canonical`, branch-free.
    fn canon_scalar(&mut self, t: T) {
        match t {
            T::Clean => {}
            T::F32 => {
                let l = self.canon_slot(0, ValType::F32);
                self.sink()
                    .local_tee(l)
                    .f32_const(Ieee32::new(CANONICAL_F32))
                    .local_get(l)
                    .local_get(l)
                    .f32_eq()
                    .select();
            }
            T::F64 => {
                let l = self.canon_slot(1, ValType::F64);
                self.sink()
                    .local_tee(l)
                    .f64_const(Ieee64::new(CANONICAL_F64))
                    .local_get(l)
                    .local_get(l)
                    .f64_eq()
                    .select();
            }
        }
    }

    /// Canonicalises every NaN lane of the vector on top of the stack:
    /// `bitselect(x, canonical, x == x)`.
    fn canon_vector(&mut self, lanes: T) {
        let l = self.canon_slot(2, ValType::V128);
        match lanes {
            T::Clean => {}
            T::F32 => {
                let c = i128::from_le_bytes(std::array::from_fn(|i| CANONICAL_F32.to_le_bytes()[i % 4]));
                self.sink().local_tee(l).v128_const(c).local_get(l).local_get(l).f32x4_eq().v128_bitselect();
            }
            T::F64 => {
                let c = i128::from_le_bytes(std::array::from_fn(|i| CANONICAL_F64.to_le_bytes()[i % 8]));
                self.sink().local_tee(l).v128_const(c).local_get(l).local_get(l).f64x2_eq().v128_bitselect();
            }
        }
    }

    /// Canonicalises the tainted ones among the top `tys.len()` stack values
    /// (`taints` bottom to top, same length), spilling the values above the
    /// deepest tainted one to scratch locals. Marks them clean.
    fn canon_values(&mut self, tys: &[ValType], taints: &[T]) {
        if !self.reachable() {
            return;
        }
        let Some(deepest) = taints.iter().position(|t| t.tainted()) else {
            return;
        };
        let above: Vec<u32> = tys[deepest + 1..].iter().map(|&t| self.new_scratch(t)).collect();
        for &l in above.iter().rev() {
            self.sink().local_set(l);
        }
        self.canon_scalar(taints[deepest]);
        for (i, &l) in above.iter().enumerate() {
            self.sink().local_get(l);
            self.canon_scalar(taints[deepest + 1 + i]);
        }
        let n = self.stack.len();
        let k = taints.len().min(n.saturating_sub(self.top().height));
        for v in &mut self.stack[n - k..] {
            *v = T::Clean;
        }
    }

    /// Canonicalises the top value if tainted.
    fn canon_top(&mut self) {
        if !self.reachable() {
            return;
        }
        if let Some(&t) = self.stack.last() {
            if self.stack.len() > self.top().height && t.tainted() {
                self.canon_scalar(t);
                if let Some(v) = self.stack.last_mut() {
                    *v = T::Clean;
                }
            }
        }
    }

    fn block_arity(&self, bt: BlockType) -> Result<(Vec<ValType>, Vec<ValType>)> {
        Ok(match bt {
            BlockType::Empty => (vec![], vec![]),
            BlockType::Type(t) => (vec![], vec![t]),
            BlockType::FuncType(i) => {
                let f = self.info.func_type(i)?;
                (f.params().to_vec(), f.results().to_vec())
            }
        })
    }

    fn target(&self, depth: u32) -> Result<usize> {
        self.frames
            .len()
            .checked_sub(1 + depth as usize)
            .ok_or_else(|| RewriteError::Invalid(format!("branch depth {depth} out of range")))
    }

    /// Records that the current state flows to the label of frame `target`.
    fn branch_to(&mut self, target: usize) {
        if !self.reachable() {
            return;
        }
        let n = self.frames[target].label_types().len();
        let e = Edge { locals: self.locals.clone(), values: self.peekn(n) };
        self.join_into(target, e);
    }

    /// Joins `e` into what reaches frame `target`'s label: a loop's header
    /// (a change there means another pass over the loop) or a block's end.
    fn join_into(&mut self, target: usize, e: Edge) {
        let f = &mut self.frames[target];
        if f.kind == Kind::Loop {
            let id = f.loop_id;
            if Edge::join(&mut self.loops[id], e) {
                self.changed = true;
            }
        } else {
            Edge::join(&mut f.end, e);
        }
    }

    /// Before a branch to the function's own label (a return): canonicalise
    /// tainted results of a host-callable function. `extra` values (a
    /// branch condition or index) sit above the results.
    fn before_return(&mut self, extra: &[ValType]) {
        if !self.reachable() {
            return;
        }
        let mut tys = self.frames[0].results.clone();
        let n = tys.len();
        let mut taints = self.peekn(n + extra.len());
        taints.truncate(n);
        self.found.results(&taints);
        if !self.escaping {
            return;
        }
        taints.extend(std::iter::repeat_n(T::Clean, extra.len()));
        tys.extend_from_slice(extra);
        self.canon_values(&tys, &taints);
    }

    /// A call, `throw` or `throw_ref` may transfer control to the catch
    /// clauses of every enclosing `try_table`.
    fn may_throw(&mut self) {
        if !self.reachable() {
            return;
        }
        let targets: Vec<usize> = self.frames.iter().flat_map(|f| f.catches.iter().copied()).collect();
        for t in targets {
            let n = self.frames[t].label_types().len();
            let e = Edge { locals: self.locals.clone(), values: vec![T::Clean; n] };
            self.join_into(t, e);
        }
    }

    fn push_frame(&mut self, kind: Kind, blockty: BlockType, params: Vec<T>) -> Result<()> {
        let (pt, rt) = self.block_arity(blockty)?;
        let unreachable = self.top().unreachable;
        let height = self.stack.len();
        let mut frame = Frame {
            kind,
            blockty,
            height,
            params: pt,
            results: rt,
            end: None,
            if_entry: None,
            unreachable,
            loop_id: 0,
            catches: Vec::new(),
        };
        let mut values = params;
        match kind {
            Kind::Loop => {
                let id = self.next_loop;
                self.next_loop += 1;
                if self.loops.len() <= id {
                    self.loops.resize(id + 1, None);
                }
                frame.loop_id = id;
                if !unreachable {
                    let e = Edge { locals: self.locals.clone(), values: values.clone() };
                    if Edge::join(&mut self.loops[id], e) {
                        // Entry state is new to the header: later passes see it.
                    }
                }
                if let Some(h) = &self.loops[id] {
                    self.locals = h.locals.clone();
                    values = h.values.clone();
                }
            }
            Kind::If if !unreachable => {
                frame.if_entry = Some(Edge { locals: self.locals.clone(), values: values.clone() });
            }
            _ => {}
        }
        self.frames.push(frame);
        self.stack.extend(values);
        Ok(())
    }

    fn end_frame(&mut self, range: std::ops::Range<usize>) -> Result<()> {
        if self.top().kind == Kind::Func {
            self.before_return(&[]);
        }
        let reachable = self.reachable();
        let n = self.top().results.len();
        let fallthrough = Edge { locals: self.locals.clone(), values: self.peekn(n) };
        let Some(mut frame) = self.frames.pop() else {
            return Err(RewriteError::Invalid("unbalanced end".into()));
        };
        if reachable {
            Edge::join(&mut frame.end, fallthrough);
        }
        if frame.kind == Kind::If {
            if let Some(e) = frame.if_entry.take() {
                // No `else`: the parameters fall through as the results.
                Edge::join(&mut frame.end, e);
            }
        }
        self.raw(range)?;
        if self.frames.is_empty() {
            return Ok(());
        }
        self.stack.truncate(frame.height);
        match frame.end {
            Some(e) => {
                self.locals = e.locals;
                self.stack.extend(e.values);
            }
            None => self.set_unreachable(),
        }
        Ok(())
    }

    fn call_args(&mut self, params: &[ValType], extra: Option<ValType>) {
        let mut tys = params.to_vec();
        tys.extend(extra);
        let taints = self.peekn(tys.len());
        self.canon_values(&tys, &taints);
    }

    fn op(&mut self, op: &Operator<'_>, range: std::ops::Range<usize>) -> Result<()> {
        use Operator::*;
        let info = self.info;
        match op {
            Block { blockty } | Loop { blockty } | If { blockty } => {
                if matches!(op, If { .. }) {
                    self.pop();
                }
                let n = self.block_arity(*blockty)?.0.len();
                let params = self.popn(n);
                let kind = match op {
                    Block { .. } => Kind::Block,
                    Loop { .. } => Kind::Loop,
                    _ => Kind::If,
                };
                self.push_frame(kind, *blockty, params)?;
                self.raw(range)?;
            }
            TryTable { try_table } => {
                let mut catches = Vec::new();
                for c in &try_table.catches {
                    let depth = match c {
                        wasmparser::Catch::One { label, .. }
                        | wasmparser::Catch::OneRef { label, .. }
                        | wasmparser::Catch::All { label }
                        | wasmparser::Catch::AllRef { label } => *label,
                    };
                    catches.push(self.target(depth)?);
                }
                let n = self.block_arity(try_table.ty)?.0.len();
                let params = self.popn(n);
                self.push_frame(Kind::TryTable, try_table.ty, params)?;
                if let Some(f) = self.frames.last_mut() {
                    f.catches = catches;
                }
                self.raw(range)?;
            }
            Else => {
                let reachable = self.reachable();
                let n = self.top().results.len();
                let fallthrough = Edge { locals: self.locals.clone(), values: self.peekn(n) };
                let h = self.top().height;
                let Some(f) = self.frames.last_mut() else {
                    return Err(RewriteError::Invalid("else outside if".into()));
                };
                if f.kind != Kind::If {
                    return Err(RewriteError::Invalid("else outside if".into()));
                }
                if reachable {
                    Edge::join(&mut f.end, fallthrough);
                }
                f.kind = Kind::Else;
                let entry = f.if_entry.take();
                self.stack.truncate(h);
                match entry {
                    Some(e) => {
                        self.locals = e.locals;
                        self.stack.extend(e.values);
                        if let Some(f) = self.frames.last_mut() {
                            f.unreachable = false;
                        }
                    }
                    None => self.set_unreachable(),
                }
                self.raw(range)?;
            }
            End => return self.end_frame(range),
            Br { relative_depth } => {
                let t = self.target(*relative_depth)?;
                if t == 0 {
                    self.before_return(&[]);
                }
                self.branch_to(t);
                self.raw(range)?;
                self.set_unreachable();
            }
            BrIf { relative_depth } => {
                let t = self.target(*relative_depth)?;
                if t == 0 {
                    self.before_return(&[ValType::I32]);
                }
                self.pop();
                self.branch_to(t);
                self.raw(range)?;
            }
            BrTable { targets } => {
                let mut ts = Vec::new();
                for d in targets.targets() {
                    ts.push(self.target(d?)?);
                }
                ts.push(self.target(targets.default())?);
                if ts.contains(&0) {
                    self.before_return(&[ValType::I32]);
                }
                self.pop();
                for t in ts {
                    self.branch_to(t);
                }
                self.raw(range)?;
                self.set_unreachable();
            }
            Return => {
                self.before_return(&[]);
                self.raw(range)?;
                self.set_unreachable();
            }
            Unreachable => {
                self.raw(range)?;
                self.set_unreachable();
            }
            BrOnNull { relative_depth } | BrOnNonNull { relative_depth } => {
                let t = self.target(*relative_depth)?;
                let on_null = matches!(op, BrOnNull { .. });
                let r = self.pop();
                if t == 0 && self.escaping && self.peekn(self.frames[0].results.len()).iter().any(|t| t.tainted()) {
                    return Err(RewriteError::Unsupported("br_on_null/br_on_non_null returning floats".into()));
                }
                if on_null {
                    self.branch_to(t);
                    self.stack.push(r);
                } else {
                    self.stack.push(r);
                    self.branch_to(t);
                    self.pop();
                }
                self.raw(range)?;
            }
            BrOnCast { relative_depth, .. } | BrOnCastFail { relative_depth, .. } => {
                let t = self.target(*relative_depth)?;
                if t == 0 && self.escaping && self.peekn(self.frames[0].results.len()).iter().any(|t| t.tainted()) {
                    return Err(RewriteError::Unsupported("br_on_cast returning floats".into()));
                }
                self.branch_to(t);
                self.raw(range)?;
            }
            Call { function_index } | ReturnCall { function_index } => {
                let f = *function_index;
                let sig = info.func_sig(f)?;
                let reachable = self.reachable();
                if info.is_import(f) {
                    self.call_args(sig.params(), None);
                } else if reachable {
                    let args = self.peekn(sig.params().len());
                    self.found.args(f, args);
                }
                self.may_throw();
                self.popn(sig.params().len());
                self.raw(range)?;
                let clean = info.is_import(f) || info.escaping[f as usize];
                let results: Vec<T> = if clean || !reachable {
                    vec![T::Clean; sig.results().len()]
                } else {
                    self.summary.results[f as usize].clone()
                };
                if matches!(op, ReturnCall { .. }) {
                    // The callee's results are this function's.
                    if reachable {
                        self.found.results(&results);
                    }
                    self.set_unreachable();
                } else {
                    self.stack.extend(results);
                }
            }
            CallIndirect { type_index, table_index } | ReturnCallIndirect { type_index, table_index } => {
                let _ = table_index;
                let sig = info.func_type(*type_index)?;
                self.call_args(sig.params(), Some(ValType::I32));
                self.may_throw();
                self.popn(sig.params().len() + 1);
                self.raw(range)?;
                if matches!(op, ReturnCallIndirect { .. }) {
                    self.set_unreachable();
                } else {
                    self.stack.extend(std::iter::repeat_n(T::Clean, sig.results().len()));
                }
            }
            CallRef { type_index } | ReturnCallRef { type_index } => {
                let sig = info.func_type(*type_index)?;
                let idx = wasmparser::PackedIndex::from_module_index(*type_index)
                    .ok_or_else(|| RewriteError::Unsupported(format!("type index {type_index}")))?;
                let rt = RefType::concrete(true, idx);
                self.call_args(sig.params(), Some(ValType::Ref(rt)));
                self.may_throw();
                self.popn(sig.params().len() + 1);
                self.raw(range)?;
                if matches!(op, ReturnCallRef { .. }) {
                    self.set_unreachable();
                } else {
                    self.stack.extend(std::iter::repeat_n(T::Clean, sig.results().len()));
                }
            }
            Throw { tag_index } => {
                let ty =
                    *info.tags.get(*tag_index as usize).ok_or_else(|| RewriteError::Invalid("no such tag".into()))?;
                let sig = info.func_type(ty)?;
                self.call_args(sig.params(), None);
                self.may_throw();
                self.raw(range)?;
                self.set_unreachable();
            }
            ThrowRef => {
                self.may_throw();
                self.raw(range)?;
                self.set_unreachable();
            }
            LocalGet { local_index } => {
                let t = self.local_type(*local_index)?;
                let v = if self.locals.get(*local_index) { kind(t).unwrap_or(T::Clean) } else { T::Clean };
                self.raw(range)?;
                self.stack.push(v);
            }
            LocalSet { local_index } | LocalTee { local_index } => {
                self.local_type(*local_index)?;
                let v = self.pop();
                if self.reachable() {
                    self.locals.set(*local_index, v.tainted());
                }
                if matches!(op, LocalTee { .. }) {
                    self.stack.push(v);
                }
                self.raw(range)?;
            }
            GlobalGet { .. } => {
                self.raw(range)?;
                self.stack.push(T::Clean);
            }
            GlobalSet { global_index } => {
                if info.globals.get(*global_index as usize).and_then(|t| kind(*t)).is_some() {
                    self.canon_top();
                }
                self.pop();
                self.raw(range)?;
            }
            Select | TypedSelect { .. } => {
                let v = self.peekn(3);
                let (a, b) = (v[0], v[1]);
                let t = a.join(b);
                let ty = match t {
                    T::F64 => ValType::F64,
                    _ => ValType::F32,
                };
                let result = if a.tainted() && b.tainted() {
                    t
                } else {
                    // At most one arithmetic operand: canonicalise it, so the
                    // other (deterministic) one keeps its bits.
                    self.canon_values(&[ty, ty, ValType::I32], &v);
                    T::Clean
                };
                self.popn(3);
                self.raw(range)?;
                self.stack.push(if self.reachable() { result } else { T::Clean });
            }
            F32Store { .. } | F64Store { .. } => {
                self.canon_top();
                self.popn(2);
                self.raw(range)?;
            }
            I32ReinterpretF32 | I64ReinterpretF64 | F32Abs | F32Neg | F64Abs | F64Neg | F32x4Splat | F64x2Splat => {
                self.canon_top();
                self.pop();
                self.raw(range)?;
                self.stack.push(T::Clean);
            }
            F32x4ReplaceLane { .. } | F64x2ReplaceLane { .. } => {
                self.canon_top();
                self.popn(2);
                self.raw(range)?;
                self.stack.push(T::Clean);
            }
            F32Copysign | F64Copysign => {
                let ty = if matches!(op, F32Copysign) { ValType::F32 } else { ValType::F64 };
                let v = self.peekn(2);
                self.canon_values(&[ty, ty], &v);
                self.popn(2);
                self.raw(range)?;
                self.stack.push(T::Clean);
            }
            StructNew { struct_type_index: t }
            | StructSet { struct_type_index: t, .. }
            | StructGet { struct_type_index: t, .. }
            | ArrayNew { array_type_index: t }
            | ArrayNewFixed { array_type_index: t, .. }
            | ArraySet { array_type_index: t }
            | ArrayGet { array_type_index: t }
            | ArrayFill { array_type_index: t }
                if info.has_float_storage(*t) =>
            {
                return Err(RewriteError::Unsupported("GC structs or arrays with float fields".into()));
            }
            Try { .. } | Catch { .. } | CatchAll | Delegate { .. } | Rethrow { .. } => {
                return Err(RewriteError::Unsupported("legacy exception handling (try/catch)".into()));
            }
            ContNew { .. }
            | ContBind { .. }
            | Suspend { .. }
            | Resume { .. }
            | ResumeThrow { .. }
            | ResumeThrowRef { .. }
            | Switch { .. } => {
                return Err(RewriteError::Unsupported("stack switching".into()));
            }
            op => {
                let arity = {
                    let view = ArityView { info, frames: &self.frames };
                    op.operator_arity(&view)
                };
                let Some((pops, pushes)) = arity else {
                    return Err(RewriteError::Unsupported(format!("the instruction {op:?}")));
                };
                self.popn(pops as usize);
                self.raw(range)?;
                let produced = scalar_arith(op);
                let reachable = self.reachable();
                for _ in 0..pushes {
                    self.stack.push(match produced {
                        Some(t) if reachable => t,
                        _ => T::Clean,
                    });
                }
                if let Some(lanes) = simd_arith(op) {
                    if reachable {
                        self.canon_vector(lanes);
                    }
                }
            }
        }
        Ok(())
    }

    fn local_type(&self, i: u32) -> Result<ValType> {
        self.local_types.get(i as usize).copied().ok_or_else(|| RewriteError::Invalid(format!("no local {i}")))
    }
}

/// What `Operator::operator_arity` needs to know for the instructions the
/// rewriter does not handle itself.
struct ArityView<'a> {
    info: &'a Info,
    frames: &'a [Frame],
}

impl ModuleArity for ArityView<'_> {
    fn sub_type_at(&self, type_idx: u32) -> Option<&SubType> {
        self.info.types.get(type_idx as usize)
    }

    fn tag_type_arity(&self, at: u32) -> Option<(u32, u32)> {
        let t = self.info.tags.get(at as usize)?;
        let f = self.info.func_type(*t).ok()?;
        Some((f.params().len() as u32, f.results().len() as u32))
    }

    fn type_index_of_function(&self, function_idx: u32) -> Option<u32> {
        self.info.funcs.get(function_idx as usize).copied()
    }

    fn func_type_of_cont_type(&self, _c: &wasmparser::ContType) -> Option<&FuncType> {
        None
    }

    fn sub_type_of_ref_type(&self, rt: &RefType) -> Option<&SubType> {
        let i = rt.type_index()?.as_module_index()?;
        self.info.types.get(i as usize)
    }

    fn control_stack_height(&self) -> u32 {
        self.frames.len() as u32
    }

    fn label_block(&self, depth: u32) -> Option<(BlockType, FrameKind)> {
        let f = self.frames.get(self.frames.len().checked_sub(1 + depth as usize)?)?;
        let kind = match f.kind {
            Kind::Func | Kind::Block => FrameKind::Block,
            Kind::Loop => FrameKind::Loop,
            Kind::If => FrameKind::If,
            Kind::Else => FrameKind::Else,
            Kind::TryTable => FrameKind::TryTable,
        };
        Some((f.blockty, kind))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::{Config, Engine, Func, Instance, Module, Store, Val};

    fn engine(cranelift_canon: bool) -> Engine {
        let mut c = Config::new();
        c.cranelift_nan_canonicalization(cranelift_canon);
        Engine::new(&c).unwrap()
    }

    /// Runs export `f` of `wat` (rewritten when `rewrite`) and returns its
    /// results as raw bits; imports `host.f32`/`host.f64` record their
    /// argument's bits into `seen`.
    fn run(wat: &str, f: &str, args: &[Val], rewrite: bool) -> (Vec<u64>, Vec<u64>) {
        let wasm = wat::parse_str(wat).unwrap();
        let wasm = if rewrite { canonicalize(&wasm).unwrap() } else { wasm };
        let engine = engine(false);
        let module = Module::new(&engine, &wasm).unwrap();
        let mut store = Store::new(&engine, Vec::<u64>::new());
        let mut imports = Vec::new();
        for imp in module.imports() {
            let func = match imp.name() {
                "f32" => Func::wrap(&mut store, |mut c: wasmtime::Caller<'_, Vec<u64>>, x: f32| {
                    c.data_mut().push(x.to_bits().into())
                }),
                "f64" => Func::wrap(&mut store, |mut c: wasmtime::Caller<'_, Vec<u64>>, x: f64| {
                    c.data_mut().push(x.to_bits())
                }),
                other => panic!("unexpected import {other}"),
            };
            imports.push(func.into());
        }
        let inst = Instance::new(&mut store, &module, &imports).unwrap();
        let func = inst.get_func(&mut store, f).unwrap();
        let mut results = vec![Val::I32(0); func.ty(&store).results().len()];
        func.call(&mut store, args, &mut results).unwrap();
        let bits = results
            .iter()
            .map(|v| match v {
                Val::I32(x) => *x as u32 as u64,
                Val::I64(x) => *x as u64,
                Val::F32(x) => *x as u64,
                Val::F64(x) => *x,
                Val::V128(x) => x.as_u128() as u64,
                other => panic!("unexpected result {other:?}"),
            })
            .collect();
        (bits, store.into_data())
    }

    fn rewritten(wat: &str, f: &str) -> Vec<u64> {
        run(wat, f, &[], true).0
    }

    const CANON32: u64 = CANONICAL_F32 as u64;

    #[test]
    fn module_without_floats_is_unchanged() {
        let wasm = wat::parse_str(
            r#"(module (memory 1) (func (export "f") (param i32) (result i32)
                 (i32.add (local.get 0) (i32.load (i32.const 0)))) (data (i32.const 0) "abc"))"#,
        )
        .unwrap();
        assert_eq!(canonicalize(&wasm).unwrap(), wasm);
    }

    #[test]
    fn arithmetic_nan_is_canonical_where_stored_reinterpreted_or_returned() {
        let wat = r#"(module (memory 1)
            (func $nan (result f32) (f32.div (f32.const 0) (f32.const 0)))
            (func (export "stored") (result i32)
              (f32.store (i32.const 0) (f32.div (f32.const 0) (f32.const 0)))
              (i32.load (i32.const 0)))
            (func (export "reinterpreted") (result i32)
              (i32.reinterpret_f32 (f32.sqrt (f32.const -1))))
            (func (export "returned") (result f32) (f32.div (f32.const 0) (f32.const 0)))
            (func (export "negated") (result i32) (i32.reinterpret_f32 (f32.neg (call $nan))))
            (func (export "sign") (result f32) (f32.copysign (f32.const 1) (call $nan)))
            (func (export "promoted") (result i64) (i64.reinterpret_f64 (f64.promote_f32 (call $nan)))))"#;
        assert_eq!(rewritten(wat, "stored"), [CANON32]);
        assert_eq!(rewritten(wat, "reinterpreted"), [CANON32]);
        assert_eq!(rewritten(wat, "returned"), [CANON32]);
        // The sign of an arithmetic NaN is not specified either: negating
        // gives the canonical NaN negated, on every CPU.
        assert_eq!(rewritten(wat, "negated"), [CANON32 | 0x8000_0000]);
        assert_eq!(rewritten(wat, "sign"), [1f32.to_bits() as u64]);
        assert_eq!(rewritten(wat, "promoted"), [CANONICAL_F64]);
    }

    #[test]
    fn deterministic_nans_keep_their_bits() {
        let wat = r#"(module (memory 1)
            (func (export "load_store") (result i32) (local f32)
              (local.set 0 (f32.load (i32.const 8)))
              (f32.store (i32.const 0) (f32.neg (local.get 0)))
              (i32.load (i32.const 0)))
            (func (export "param") (param f32) (result f32) (f32.abs (local.get 0)))
            (func (export "mixed_select") (param i32) (result f32)
              (select (f32.load (i32.const 8)) (f32.div (f32.const 0) (f32.const 0)) (local.get 0)))
            (data (i32.const 8) "\01\00\a0\ff"))"#;
        // 0xffa00001: a signalling NaN with a payload, straight from memory.
        assert_eq!(rewritten(wat, "load_store"), [0x7fa0_0001]);
        let (r, _) = run(wat, "param", &[Val::F32(0xffa0_0001)], true);
        assert_eq!(r, [0x7fa0_0001]);
        let (r, _) = run(wat, "mixed_select", &[Val::I32(1)], true);
        assert_eq!(r, [0xffa0_0001]);
        let (r, _) = run(wat, "mixed_select", &[Val::I32(0)], true);
        assert_eq!(r, [CANON32]);
    }

    #[test]
    fn host_call_arguments_are_canonical() {
        let wat = r#"(module
            (import "host" "f32" (func $f32 (param f32)))
            (import "host" "f64" (func $f64 (param f64)))
            (table 1 funcref) (elem (i32.const 0) $f64)
            (type $t (func (param f64)))
            (func (export "go")
              (call $f32 (f32.mul (f32.const inf) (f32.const 0)))
              (call_indirect (type $t) (f64.div (f64.const 0) (f64.const 0)) (i32.const 0))
              (call $f32 (f32.reinterpret_i32 (i32.const 0x7f800001)))))"#;
        let (_, seen) = run(wat, "go", &[], true);
        assert_eq!(seen, [CANON32, CANONICAL_F64, 0x7f80_0001]);
    }

    #[test]
    fn taint_follows_locals_through_loops_and_blocks() {
        // `x` only becomes an arithmetic NaN on the second iteration, through
        // the loop's back edge; `y` is merged at a block end.
        let wat = r#"(module (memory 1)
            (func (export "loop") (result i32) (local f32 i32)
              (local.set 0 (f32.const 1))
              (loop $l
                (f32.store (i32.const 0) (local.get 0))
                (local.set 0 (f32.sub (local.get 0) (f32.const inf)))
                (local.set 0 (f32.mul (local.get 0) (f32.const 0)))
                (local.set 1 (i32.add (local.get 1) (i32.const 1)))
                (br_if $l (i32.lt_u (local.get 1) (i32.const 3))))
              (i32.load (i32.const 0)))
            (func (export "block") (param i32) (result i32)
              (f32.store (i32.const 0)
                (if (result f32) (local.get 0)
                  (then (f32.div (f32.const 0) (f32.const 0)))
                  (else (f32.const 2))))
              (i32.load (i32.const 0))))"#;
        assert_eq!(rewritten(wat, "loop"), [CANON32]);
        let (r, _) = run(wat, "block", &[Val::I32(1)], true);
        assert_eq!(r, [CANON32]);
        let (r, _) = run(wat, "block", &[Val::I32(0)], true);
        assert_eq!(r, [2f32.to_bits() as u64]);
    }

    #[test]
    fn vector_arithmetic_is_canonical() {
        let wat = r#"(module
            (func (export "lanes") (result i64)
              (i64x2.extract_lane 0
                (f32x4.div (v128.const f32x4 0 1 0 4) (v128.const f32x4 0 1 0 2))))
            (func (export "splat") (result i64)
              (i64x2.extract_lane 1 (f64x2.splat (f64.sqrt (f64.const -1))))))"#;
        assert_eq!(rewritten(wat, "lanes"), [(1f32.to_bits() as u64) << 32 | CANON32]);
        assert_eq!(rewritten(wat, "splat"), [CANONICAL_F64]);
    }

    #[test]
    fn returns_of_escaping_functions_are_canonical() {
        // Multi-value results with the NaN below an integer, and a return
        // through `br` to the function's label.
        let wat = r#"(module
            (func (export "multi") (result f64 i32)
              (f64.div (f64.const 0) (f64.const 0)) (i32.const 7))
            (func (export "br") (param i32) (result f32)
              (br_if 0 (f32.sqrt (f32.const -2)) (local.get 0))
              (drop) (f32.const 3)))"#;
        assert_eq!(rewritten(wat, "multi"), [CANONICAL_F64, 7]);
        let (r, _) = run(wat, "br", &[Val::I32(1)], true);
        assert_eq!(r, [CANON32]);
        let (r, _) = run(wat, "br", &[Val::I32(0)], true);
        assert_eq!(r, [3f32.to_bits() as u64]);
    }

    #[test]
    fn errors_are_reported() {
        assert!(matches!(canonicalize(b"\0asm\x01\0\0\0\x01"), Err(RewriteError::Parse(_))));
        assert!(matches!(canonicalize(b"not wasm"), Err(RewriteError::Parse(_))));
        let msg = canonicalize(b"\0asm\x01\0\0\0\x01").unwrap_err().to_string();
        assert!(msg.starts_with("cannot read the module"), "{msg}");
    }
}
