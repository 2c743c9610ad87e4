//! The plan for concrete input shapes: the arena (weights, inputs and
//! every intermediate, each bounded by the job's limits before anything is
//! allocated), and one kernel step per node, with typed parameters.

use std::collections::HashMap;

use super::parse::{unsupported, Const, Node, OnnxGraph, Op};
use super::shape::{self, axis_of, broadcast_strides, contiguous, elems};
use super::{Kernel, Plan, Step, MAX_RANK};
use crate::nn::params::{self, KernelParams};
use crate::nn::{NnError, NnLimits};

#[derive(Debug, Clone)]
enum Val {
    Arena(usize, Vec<usize>),
    Ints(Vec<i64>),
}

struct Planner<'a> {
    limits: &'a NnLimits,
    exact: bool,
    /// The plan is for the exact CPU backend (for error messages).
    on_cpu: bool,
    /// Constant data and where it goes in the arena.
    weights: Vec<(usize, Vec<f32>)>,
    max_elements: usize,
    next: usize,
    vals: HashMap<String, Val>,
    steps: Vec<Step>,
    /// Multiply-adds (or element operations) planned so far.
    work: u128,
}

impl Planner<'_> {
    fn alloc(&mut self, shape: &[usize], node: &str) -> Result<usize, NnError> {
        let n = shape.iter().try_fold(1usize, |a, d| a.checked_mul(*d));
        let n = n.filter(|n| (*n as u64).saturating_mul(4) <= self.limits.tensor_bytes).ok_or_else(|| {
            NnError::TooLarge(format!(
                "node {node}: a tensor of shape {shape:?} is larger than the job's tensor limit of {} bytes",
                self.limits.tensor_bytes
            ))
        })?;
        let off = self.next;
        let end = off.checked_add(n).filter(|e| *e <= self.max_elements).ok_or_else(|| {
            NnError::TooLarge(if self.on_cpu {
                format!(
                    "node {node}: the graph needs more than {} bytes, more than the job's CPU inference memory \
                     limit of {}",
                    self.max_elements * 4,
                    self.limits.cpu_memory
                )
            } else {
                format!(
                    "node {node}: the graph needs more than {} bytes of GPU memory (the job's GPU memory limit, \
                     or the device's largest storage buffer)",
                    self.max_elements * 4
                )
            })
        })?;
        // Keep every tensor 16-byte aligned.
        self.next = end.div_ceil(4) * 4;
        Ok(off)
    }

    /// Places constant data at `off`, canonical in exact mode.
    fn weight(&mut self, off: usize, mut data: Vec<f32>) {
        if self.exact {
            for v in &mut data {
                *v = crate::nn::exact::math::canonical(*v);
            }
        }
        self.weights.push((off, data));
    }

    fn arena(&self, name: &str, node: &str) -> Result<(usize, Vec<usize>), NnError> {
        match self.vals.get(name) {
            Some(Val::Arena(o, s)) => Ok((*o, s.clone())),
            Some(Val::Ints(_)) => Err(unsupported(format!("node {node}: {name} is an int64 tensor used as data"))),
            None => Err(NnError::InvalidArgument(format!("node {node}: input {name} is not computed before use"))),
        }
    }

    /// Counts `ops` against the job's GPU work limit. A dispatch cannot be
    /// stopped once submitted (and waiting for the device outlives the job's
    /// deadline), so the work a guest can ask for is bounded up front.
    fn charge(&mut self, ops: u128, node: &str) -> Result<(), NnError> {
        self.work = self.work.saturating_add(ops);
        if self.work > self.limits.gpu_work as u128 {
            let at = if node.is_empty() { String::new() } else { format!("node {node}: ") };
            return Err(NnError::TooLarge(format!(
                "{at}one inference would take more than {} operations (the job's work limit for Shoal's kernels, \
                 nn gpu_work)",
                self.limits.gpu_work
            )));
        }
        Ok(())
    }

    fn step<P: KernelParams>(&mut self, params: &P, n: usize) -> Result<(), NnError> {
        self.charge(n as u128, "")?;
        let kernel = Kernel::of(P::ENTRY)
            .ok_or_else(|| NnError::Runtime(format!("no kernel has the entry point {}", P::ENTRY)))?;
        let n = u32::try_from(n).map_err(|_| NnError::TooLarge("a step with more than 2^32 outputs".into()))?;
        if n > 0 {
            self.steps.push(Step { kernel, params: params.words(), n, grid: None });
        }
        Ok(())
    }

    /// A MatMul step: one workgroup per 64x64 output tile.
    fn matmul(&mut self, p: &params::MatMul, node: &str) -> Result<(), NnError> {
        let (m, n, k, batch) = (p.m as usize, p.n as usize, p.k as usize, p.batch as usize);
        self.charge(batch as u128 * m as u128 * n as u128 * k as u128, node)?;
        let tiles = |d: usize| u32::try_from(d.div_ceil(64)).ok().filter(|t| *t <= 65535);
        let (Some(x), Some(y), Some(z)) = (tiles(n), tiles(m), u32::try_from(batch).ok().filter(|b| *b <= 65535))
        else {
            return Err(unsupported(format!(
                "node {node}: a MatMul of {batch} x [{m}, {n}] exceeds the dispatch grid"
            )));
        };
        if m * n * batch > 0 {
            self.steps.push(Step { kernel: Kernel::MatMul, params: p.words(), n: 1, grid: Some([x, y, z]) });
        }
        Ok(())
    }

    fn out(&mut self, node: &Node, shape: Vec<usize>) -> Result<usize, NnError> {
        let off = self.alloc(&shape, &node.name)?;
        let name = node.outputs.first().cloned().unwrap_or_default();
        self.vals.insert(name, Val::Arena(off, shape));
        Ok(off)
    }

    /// Dims or strides of a strided kernel, padded to MAX_RANK.
    fn ranked(&self, list: &[usize], node: &str) -> Result<[u32; MAX_RANK], NnError> {
        let mut out = [0u32; MAX_RANK];
        for (o, v) in out.iter_mut().zip(list) {
            *o = self.u(*v, node)?;
        }
        Ok(out)
    }

    fn u(&self, v: usize, node: &str) -> Result<u32, NnError> {
        u32::try_from(v).map_err(|_| NnError::TooLarge(format!("node {node}: a size beyond 2^32")))
    }
}

/// Inference BatchNormalization as a per-channel scale and shift:
/// scale' = scale / sqrt(var + eps), shift' = bias - mean * scale', each
/// operation rounded once (f32, IEEE) and made canonical.
fn fold_batchnorm(scale: &[f32], bias: &[f32], mean: &[f32], var: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>) {
    use crate::nn::exact::math::canonical as c;
    let mut a = Vec::with_capacity(scale.len());
    let mut b = Vec::with_capacity(scale.len());
    for i in 0..scale.len() {
        let k = c(c(scale[i]) / c(c(c(var[i]) + c(eps)).sqrt()));
        a.push(k);
        b.push(c(c(bias[i]) - c(c(mean[i]) * k)));
    }
    (a, b)
}

impl OnnxGraph {
    /// Plans for inputs of `shapes`, within `limits` and an arena of at
    /// most `max_bytes`.
    pub(crate) fn plan(
        &self,
        shapes: &[Vec<usize>],
        limits: &NnLimits,
        max_bytes: u64,
        exact: bool,
        on_cpu: bool,
    ) -> Result<Plan, NnError> {
        if shapes.len() != self.inputs.len() {
            return Err(NnError::InvalidArgument(format!(
                "the graph has {} inputs, {} were set",
                self.inputs.len(),
                shapes.len()
            )));
        }
        let max_elements = usize::try_from((max_bytes / 4).min(u32::MAX as u64 - 64)).unwrap_or(usize::MAX);
        let mut pl = Planner {
            limits,
            exact,
            on_cpu,
            weights: Vec::new(),
            max_elements,
            next: 0,
            vals: HashMap::new(),
            steps: Vec::new(),
            work: 0,
        };
        for (name, c) in &self.consts {
            match c {
                Const::F32(shape, data) => {
                    let off = pl.alloc(shape, name)?;
                    pl.weight(off, data.clone());
                    pl.vals.insert(name.clone(), Val::Arena(off, shape.clone()));
                }
                Const::I64(data) => {
                    pl.vals.insert(name.clone(), Val::Ints(data.clone()));
                }
            }
        }
        let mut inputs = Vec::new();
        for (name, shape) in self.inputs.iter().zip(shapes) {
            let off = pl.alloc(shape, name)?;
            inputs.push((off, elems(shape)));
            pl.vals.insert(name.clone(), Val::Arena(off, shape.clone()));
        }
        for node in &self.nodes {
            self.plan_node(&mut pl, node)?;
        }
        let mut outputs = Vec::new();
        for name in &self.outputs {
            let (off, shape) = pl.arena(name, "graph output")?;
            outputs.push((off, shape));
        }
        Ok(Plan { arena: pl.next.max(4), weights: pl.weights, inputs, outputs, steps: pl.steps, exact })
    }

    fn plan_node(&self, pl: &mut Planner<'_>, node: &Node) -> Result<(), NnError> {
        let nm = node.name.as_str();
        let input = |i: usize| -> Result<&str, NnError> {
            node.inputs
                .get(i)
                .map(|s| s.as_str())
                .filter(|s| !s.is_empty())
                .ok_or_else(|| NnError::InvalidArgument(format!("node {nm}: missing input {i}")))
        };
        let bad = |msg: String| NnError::InvalidArgument(format!("node {nm}: {msg}"));
        match &node.op {
            Op::Gemm { alpha, beta, trans_a, trans_b } => {
                let (a, sa) = pl.arena(input(0)?, nm)?;
                let (b, sb) = pl.arena(input(1)?, nm)?;
                if sa.len() != 2 || sb.len() != 2 {
                    return Err(bad(format!("Gemm takes 2-D A and B, got {sa:?} and {sb:?}")));
                }
                let (m, k) = if *trans_a { (sa[1], sa[0]) } else { (sa[0], sa[1]) };
                let (k2, n) = if *trans_b { (sb[1], sb[0]) } else { (sb[0], sb[1]) };
                if k != k2 {
                    return Err(bad(format!("Gemm shapes {sa:?} and {sb:?} do not agree")));
                }
                let (bias, brs, bcs) = match node.inputs.get(2).filter(|s| !s.is_empty()) {
                    None => (params::NONE, 0, 0),
                    Some(c) => {
                        let (off, sc) = pl.arena(c, nm)?;
                        let s2: Vec<usize> = match sc.len() {
                            0 => vec![1, 1],
                            1 => vec![1, sc[0]],
                            2 => sc.clone(),
                            _ => return Err(bad(format!("Gemm bias of shape {sc:?}"))),
                        };
                        if !(s2[0] == 1 || s2[0] == m) || !(s2[1] == 1 || s2[1] == n) {
                            return Err(bad(format!("Gemm bias {sc:?} does not broadcast to [{m}, {n}]")));
                        }
                        let rs = if s2[0] == 1 { 0 } else { s2[1] };
                        let cs = if s2[1] == 1 { 0 } else { 1 };
                        (pl.u(off, nm)?, rs, cs)
                    }
                };
                let (ars, aks) = if *trans_a { (1, m) } else { (k, 1) };
                let (bks, bcs_) = if *trans_b { (1, k) } else { (n, 1) };
                let c = pl.out(node, vec![m, n])?;
                let u = |v: usize| pl.u(v, nm);
                let params = params::MatMul {
                    off_a: u(a)?,
                    off_b: u(b)?,
                    off_c: u(c)?,
                    off_bias: bias,
                    m: u(m)?,
                    n: u(n)?,
                    k: u(k)?,
                    batch: 1,
                    batch_stride_a: 0,
                    batch_stride_b: 0,
                    a_row_stride: u(ars)?,
                    a_k_stride: u(aks)?,
                    b_k_stride: u(bks)?,
                    b_col_stride: u(bcs_)?,
                    bias_row_stride: u(brs)?,
                    bias_col_stride: u(bcs)?,
                    alpha: *alpha,
                    beta: *beta,
                };
                pl.matmul(&params, nm)
            }
            Op::MatMul => {
                let (a, sa) = pl.arena(input(0)?, nm)?;
                let (b, sb) = pl.arena(input(1)?, nm)?;
                if sa.len() < 2 || sb.len() < 2 {
                    return Err(unsupported(format!("node {nm}: MatMul of 1-D operands ({sa:?}, {sb:?})")));
                }
                let (m, k) = (sa[sa.len() - 2], sa[sa.len() - 1]);
                let (k2, n) = (sb[sb.len() - 2], sb[sb.len() - 1]);
                if k != k2 {
                    return Err(bad(format!("MatMul shapes {sa:?} and {sb:?} do not agree")));
                }
                let Some((batch_dims, stride_a, stride_b)) = shape::matmul_batch(&sa, &sb) else {
                    return Err(unsupported(format!("node {nm}: MatMul broadcasting {sa:?} with {sb:?}")));
                };
                let batch = elems(&batch_dims);
                let mut shape = batch_dims;
                shape.extend([m, n]);
                let c = pl.out(node, shape)?;
                let u = |v: usize| pl.u(v, nm);
                let params = params::MatMul {
                    off_a: u(a)?,
                    off_b: u(b)?,
                    off_c: u(c)?,
                    off_bias: params::NONE,
                    m: u(m)?,
                    n: u(n)?,
                    k: u(k)?,
                    batch: u(batch)?,
                    batch_stride_a: u(stride_a)?,
                    batch_stride_b: u(stride_b)?,
                    a_row_stride: u(k)?,
                    a_k_stride: 1,
                    b_k_stride: u(n)?,
                    b_col_stride: 1,
                    bias_row_stride: 0,
                    bias_col_stride: 0,
                    alpha: 1.0,
                    beta: 0.0,
                };
                pl.matmul(&params, nm)
            }
            Op::Binary(op) => {
                let (a, sa) = pl.arena(input(0)?, nm)?;
                let (b, sb) = pl.arena(input(1)?, nm)?;
                let rank = sa.len().max(sb.len());
                if rank > MAX_RANK {
                    return Err(unsupported(format!("node {nm}: tensors of rank {rank} (at most {MAX_RANK})")));
                }
                let Some(out) = shape::broadcast(&sa, &sb) else {
                    return Err(bad(format!("shapes {sa:?} and {sb:?} do not broadcast")));
                };
                let stra = broadcast_strides(&sa, &out);
                let strb = broadcast_strides(&sb, &out);
                let n = elems(&out);
                let c = pl.out(node, out.clone())?;
                let p = params::Binary {
                    op: *op,
                    off_a: pl.u(a, nm)?,
                    off_b: pl.u(b, nm)?,
                    off_c: pl.u(c, nm)?,
                    n: pl.u(n, nm)?,
                    rank: rank as u32,
                    dims: pl.ranked(&out, nm)?,
                    stride_a: pl.ranked(&stra, nm)?,
                    stride_b: pl.ranked(&strb, nm)?,
                };
                pl.step(&p, n)
            }
            Op::Unary(op) => {
                let (x, s) = pl.arena(input(0)?, nm)?;
                let n = elems(&s);
                let y = pl.out(node, s)?;
                let p = params::Unary { op: *op, off_in: pl.u(x, nm)?, off_out: pl.u(y, nm)?, n: pl.u(n, nm)? };
                pl.step(&p, n)
            }
            Op::Conv { strides, pads, auto_pad, dilations, group } => {
                let (x, sx) = pl.arena(input(0)?, nm)?;
                let (w, sw) = pl.arena(input(1)?, nm)?;
                if sx.len() != 4 || sw.len() != 4 {
                    return Err(unsupported(format!("node {nm}: only 2-D Conv (NCHW), got {sx:?} and {sw:?}")));
                }
                let (n, c, h, wd) = (sx[0], sx[1], sx[2], sx[3]);
                let (m, cpg, kh, kw) = (sw[0], sw[1], sw[2], sw[3]);
                if !c.is_multiple_of(*group) || !m.is_multiple_of(*group) || cpg != c / group || kh == 0 || kw == 0 {
                    return Err(bad(format!("Conv input {sx:?}, weights {sw:?} and group {group} do not agree")));
                }
                let bias = match node.inputs.get(2).filter(|s| !s.is_empty()) {
                    None => params::NONE,
                    Some(b) => {
                        let (off, sb) = pl.arena(b, nm)?;
                        if sb != [m] {
                            return Err(bad(format!("Conv bias of shape {sb:?}, expected [{m}]")));
                        }
                        pl.u(off, nm)?
                    }
                };
                let ek = [(kh - 1) * dilations[0] + 1, (kw - 1) * dilations[1] + 1];
                let pads = match auto_pad.as_str() {
                    "SAME_UPPER" => shape::same_pads([h, wd], *strides, ek, true),
                    "SAME_LOWER" => shape::same_pads([h, wd], *strides, ek, false),
                    "VALID" => [0; 4],
                    _ => pads.unwrap_or([0; 4]),
                };
                let Some([oh, ow]) = shape::window_output([h, wd], pads, ek, *strides) else {
                    return Err(bad(format!("Conv kernel {ek:?} larger than the input {h}x{wd} padded by {pads:?}")));
                };
                let y = pl.out(node, vec![n, m, oh, ow])?;
                // Four output channels per invocation when they fall in
                // one group (so they share their input values).
                let cb = if (m / group).is_multiple_of(4) { 4 } else { 1 };
                let u = |v: usize| pl.u(v, nm);
                let p = params::Conv {
                    off_x: u(x)?,
                    off_w: u(w)?,
                    off_bias: bias,
                    off_y: u(y)?,
                    n: u(n)?,
                    c: u(c)?,
                    h: u(h)?,
                    w: u(wd)?,
                    m: u(m)?,
                    oh: u(oh)?,
                    ow: u(ow)?,
                    kh: u(kh)?,
                    kw: u(kw)?,
                    stride_h: u(strides[0])?,
                    stride_w: u(strides[1])?,
                    pad_top: u(pads[0])?,
                    pad_left: u(pads[1])?,
                    dilation_h: u(dilations[0])?,
                    dilation_w: u(dilations[1])?,
                    group: u(*group)?,
                    cb: cb as u32,
                };
                pl.charge((n * m * oh * ow) as u128 * (cpg * kh * kw) as u128, nm)?;
                pl.step(&p, n * (m / cb) * oh * ow)
            }
            Op::Pool { max, kernel, strides, pads, count_include_pad } => {
                let (x, sx) = pl.arena(input(0)?, nm)?;
                self.pool(pl, node, x, &sx, *max, *kernel, *strides, *pads, *count_include_pad)
            }
            Op::GlobalAveragePool => {
                let (x, sx) = pl.arena(input(0)?, nm)?;
                if sx.len() != 4 {
                    return Err(unsupported(format!("node {nm}: only 2-D GlobalAveragePool, got {sx:?}")));
                }
                self.pool(pl, node, x, &sx, false, [sx[2], sx[3]], [1, 1], [0; 4], false)
            }
            Op::Softmax { axis } => {
                let (x, s) = pl.arena(input(0)?, nm)?;
                let a = axis_of(*axis, s.len(), nm)?;
                let outer = elems(&s[..a]);
                let (len, inner) = if self.legacy_softmax { (elems(&s[a..]), 1) } else { (s[a], elems(&s[a + 1..])) };
                let y = pl.out(node, s)?;
                let p = params::Softmax {
                    off_in: pl.u(x, nm)?,
                    off_out: pl.u(y, nm)?,
                    outer: pl.u(outer, nm)?,
                    len: pl.u(len, nm)?,
                    inner: pl.u(inner, nm)?,
                };
                pl.charge((outer * inner) as u128 * len as u128 * 3, nm)?;
                pl.step(&p, outer * inner)
            }
            Op::Reshape { allowzero } => {
                let (x, s) = pl.arena(input(0)?, nm)?;
                let Some(Val::Ints(spec)) = pl.vals.get(input(1)?).cloned() else {
                    return Err(unsupported(format!("node {nm}: Reshape to a computed shape (it must be a constant)")));
                };
                let mut out = Vec::with_capacity(spec.len());
                let mut infer = None;
                for (i, d) in spec.iter().enumerate() {
                    match *d {
                        0 if !allowzero => {
                            out.push(*s.get(i).ok_or_else(|| bad("Reshape copies a missing dimension".into()))?)
                        }
                        -1 if infer.is_none() => {
                            infer = Some(i);
                            out.push(1);
                        }
                        d if d >= 0 => out.push(d as usize),
                        d => return Err(bad(format!("Reshape dimension {d}"))),
                    }
                }
                if let Some(i) = infer {
                    let known = elems(&out);
                    if known == 0 || !elems(&s).is_multiple_of(known) {
                        return Err(bad(format!("cannot reshape {s:?} to {spec:?}")));
                    }
                    out[i] = elems(&s) / known;
                }
                if elems(&out) != elems(&s) {
                    return Err(bad(format!("cannot reshape {s:?} to {spec:?}")));
                }
                self.alias(pl, node, x, out)
            }
            Op::Flatten { axis } => {
                let (x, s) = pl.arena(input(0)?, nm)?;
                let a = if *axis < 0 { *axis + s.len() as i64 } else { *axis };
                if a < 0 || a as usize > s.len() {
                    return Err(bad(format!("Flatten axis {axis} for rank {}", s.len())));
                }
                let out = vec![elems(&s[..a as usize]), elems(&s[a as usize..])];
                self.alias(pl, node, x, out)
            }
            Op::Identity => {
                let (x, s) = pl.arena(input(0)?, nm)?;
                self.alias(pl, node, x, s)
            }
            Op::Transpose { perm } => {
                let (x, s) = pl.arena(input(0)?, nm)?;
                let rank = s.len();
                if rank > MAX_RANK {
                    return Err(unsupported(format!("node {nm}: Transpose of rank {rank} (at most {MAX_RANK})")));
                }
                let perm: Vec<usize> = perm.clone().unwrap_or_else(|| (0..rank).rev().collect());
                let mut sorted = perm.clone();
                sorted.sort_unstable();
                if sorted != (0..rank).collect::<Vec<_>>() {
                    return Err(bad(format!("bad perm {perm:?} for rank {rank}")));
                }
                let out: Vec<usize> = perm.iter().map(|p| s[*p]).collect();
                let src_strides = contiguous(&s);
                let src: Vec<usize> = perm.iter().map(|p| src_strides[*p]).collect();
                let dst = contiguous(&out);
                let n = elems(&out);
                let y = pl.out(node, out.clone())?;
                self.copy(pl, nm, x, y, &out, &src, &dst, n)
            }
            Op::Concat { axis } => {
                let mut parts = Vec::new();
                for name in node.inputs.iter().filter(|s| !s.is_empty()) {
                    parts.push(pl.arena(name, nm)?);
                }
                let first = parts.first().map(|p| p.1.clone()).ok_or_else(|| bad("Concat of nothing".into()))?;
                let rank = first.len();
                if rank > MAX_RANK {
                    return Err(unsupported(format!("node {nm}: Concat of rank {rank} (at most {MAX_RANK})")));
                }
                let a = axis_of(*axis, rank, nm)?;
                let mut out = first.clone();
                out[a] = 0;
                for (_, s) in &parts {
                    if s.len() != rank || (0..rank).any(|i| i != a && s[i] != first[i]) {
                        return Err(bad(format!("Concat of {first:?} and {s:?} along axis {a}")));
                    }
                    out[a] += s[a];
                }
                let y = pl.out(node, out.clone())?;
                let dst = contiguous(&out);
                let mut at = 0;
                for (off, s) in parts {
                    let src = contiguous(&s);
                    self.copy(pl, nm, off, y + at * dst[a], &s, &src, &dst, elems(&s))?;
                    at += s[a];
                }
                Ok(())
            }
            Op::BatchNorm { eps } => {
                let (x, s) = pl.arena(input(0)?, nm)?;
                if s.len() < 2 {
                    return Err(bad(format!("BatchNormalization of shape {s:?}")));
                }
                let c = s[1];
                // Folded on the host into y = x * scale' + shift', with
                // IEEE division and square root: correctly rounded on every
                // host, so exact mode needs no sqrt on the device.
                let mut params = Vec::new();
                for i in 1..5 {
                    let name = input(i)?;
                    let Some(Const::F32(sp, v)) = self.consts.iter().find(|(n, _)| n == name).map(|(_, c)| c) else {
                        return Err(unsupported(format!(
                            "node {nm}: BatchNormalization with a computed {name} (scale, bias, mean and var \
                             must be constants of the model)"
                        )));
                    };
                    if *sp != [c] {
                        return Err(bad(format!("BatchNormalization parameter of shape {sp:?}, expected [{c}]")));
                    }
                    params.push(v.clone());
                }
                let (scale, shift) = fold_batchnorm(&params[0], &params[1], &params[2], &params[3], *eps);
                let a = pl.alloc(&[c], nm)?;
                pl.weight(a, scale);
                let b = pl.alloc(&[c], nm)?;
                pl.weight(b, shift);
                let n = elems(&s);
                let spatial = elems(&s[2..]);
                let y = pl.out(node, s)?;
                let p = params::BatchNorm {
                    off_x: pl.u(x, nm)?,
                    off_y: pl.u(y, nm)?,
                    off_scale: pl.u(a, nm)?,
                    off_shift: pl.u(b, nm)?,
                    n: pl.u(n, nm)?,
                    c: pl.u(c, nm)?,
                    spatial: pl.u(spatial, nm)?,
                };
                pl.step(&p, n)
            }
        }
    }

    fn alias(&self, pl: &mut Planner<'_>, node: &Node, off: usize, shape: Vec<usize>) -> Result<(), NnError> {
        let name = node.outputs.first().cloned().unwrap_or_default();
        pl.vals.insert(name, Val::Arena(off, shape));
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn copy(
        &self,
        pl: &mut Planner<'_>,
        nm: &str,
        src_off: usize,
        dst_off: usize,
        dims: &[usize],
        src: &[usize],
        dst: &[usize],
        n: usize,
    ) -> Result<(), NnError> {
        let p = params::StridedCopy {
            off_in: pl.u(src_off, nm)?,
            off_out: pl.u(dst_off, nm)?,
            n: pl.u(n, nm)?,
            rank: dims.len() as u32,
            dims: pl.ranked(dims, nm)?,
            src: pl.ranked(src, nm)?,
            dst: pl.ranked(dst, nm)?,
        };
        pl.step(&p, n)
    }

    #[allow(clippy::too_many_arguments)]
    fn pool(
        &self,
        pl: &mut Planner<'_>,
        node: &Node,
        x: usize,
        sx: &[usize],
        max: bool,
        kernel: [usize; 2],
        strides: [usize; 2],
        pads: [usize; 4],
        count_include_pad: bool,
    ) -> Result<(), NnError> {
        let nm = node.name.as_str();
        if sx.len() != 4 {
            return Err(unsupported(format!("node {nm}: only 2-D pooling (NCHW), got {sx:?}")));
        }
        let Some([oh, ow]) = shape::window_output([sx[2], sx[3]], pads, kernel, strides) else {
            return Err(NnError::InvalidArgument(format!("node {nm}: pooling window larger than the input")));
        };
        let nc = sx[0] * sx[1];
        let y = pl.out(node, vec![sx[0], sx[1], oh, ow])?;
        let u = |v: usize| pl.u(v, nm);
        let p = params::Pool {
            off_x: u(x)?,
            off_y: u(y)?,
            nc: u(nc)?,
            h: u(sx[2])?,
            w: u(sx[3])?,
            oh: u(oh)?,
            ow: u(ow)?,
            kh: u(kernel[0])?,
            kw: u(kernel[1])?,
            stride_h: u(strides[0])?,
            stride_w: u(strides[1])?,
            pad_top: u(pads[0])?,
            pad_left: u(pads[1])?,
            kind: if max { 0 } else { 1 },
            count_include_pad: count_include_pad as u32,
        };
        pl.charge((nc * oh * ow) as u128 * (kernel[0] * kernel[1]) as u128, nm)?;
        pl.step(&p, nc * oh * ow)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{attr_i, floats, model, node};
    use super::super::{parse, Kernel};
    use super::*;

    fn plan(
        nodes: Vec<tract_onnx::pb::NodeProto>,
        weights: Vec<tract_onnx::pb::TensorProto>,
        shape: &[usize],
        exact: bool,
    ) -> Result<Plan, NnError> {
        let g = parse(&model(nodes, &["x"], weights)).unwrap();
        g.plan(&[shape.to_vec()], &NnLimits::default(), 1 << 30, exact, true)
    }

    #[test]
    fn gemm_with_a_transposed_b_lowers_to_a_strided_matmul() {
        let p = plan(
            vec![node("Gemm", &["x", "w"], "y", vec![attr_i("transB", 1)])],
            vec![floats("w", &[4, 3], &[1.0; 12])],
            &[2, 3],
            false,
        )
        .unwrap();
        assert_eq!(p.steps.len(), 1);
        assert_eq!(p.steps[0].kernel, Kernel::MatMul);
        let q = params::MatMul::from_words(&p.steps[0].params);
        assert_eq!((q.m, q.n, q.k, q.batch), (2, 4, 3, 1));
        // B is [n, k]: k is its fast axis.
        assert_eq!((q.b_k_stride, q.b_col_stride, q.a_row_stride, q.a_k_stride), (1, 3, 3, 1));
        assert_eq!((q.off_bias, q.alpha), (params::NONE, 1.0));
        assert_eq!(p.outputs[0].1, vec![2, 4]);
        assert_eq!(q.off_c as usize, p.outputs[0].0);
    }

    #[test]
    fn broadcasting_binary_ops_get_zero_strides() {
        let p = plan(vec![node("Add", &["x", "b"], "y", vec![])], vec![floats("b", &[3], &[1.0; 3])], &[2, 3], false)
            .unwrap();
        let q = params::Binary::from_words(&p.steps[0].params);
        assert_eq!((q.op, q.n, q.rank), (0, 6, 2));
        assert_eq!((&q.dims[..2], &q.stride_a[..2], &q.stride_b[..2]), (&[2, 3][..], &[3, 1][..], &[0, 1][..]));
        // Reshape and Flatten are views: no step, the same offset.
        let p = plan(vec![node("Flatten", &["x"], "y", vec![attr_i("axis", 1)])], vec![], &[2, 3, 4], false).unwrap();
        assert!(p.steps.is_empty());
        assert_eq!(p.outputs[0], (p.inputs[0].0, vec![2, 12]));
    }

    #[test]
    fn batchnorm_is_folded_into_a_scale_and_shift_and_exact_weights_are_canonical() {
        let stats = vec![
            floats("scale", &[2], &[2.0, 1.0]),
            floats("bias", &[2], &[0.5, f32::from_bits(0x7fc0_1234)]),
            floats("mean", &[2], &[1.0, 0.0]),
            floats("var", &[2], &[3.0, 1e-40]),
        ];
        let bn = vec![node("BatchNormalization", &["x", "scale", "bias", "mean", "var"], "y", vec![])];
        let p = plan(bn, stats, &[1, 2, 2, 2], true).unwrap();
        let q = params::BatchNorm::from_words(&p.steps[0].params);
        let weight = |off: u32| p.weights.iter().find(|(o, _)| *o == off as usize).unwrap().1.clone();
        // scale / sqrt(var + eps) with eps 1e-5: channel 0 is 2 / sqrt(3.00001).
        let a = weight(q.off_scale);
        assert_eq!(a[0], 2.0 / (3.0f32 + 1e-5).sqrt());
        // shift = bias - mean * scale'.
        assert_eq!(weight(q.off_shift)[0], 0.5 - a[0]);
        // In exact mode the denormal variance is +0 and the NaN canonical.
        assert_eq!(weight(q.off_shift)[1].to_bits(), 0x7fc0_0000);
        assert_eq!((q.n, q.c, q.spatial), (8, 2, 4));
    }

    #[test]
    fn tensors_are_bounded_before_anything_is_planned() {
        let g = parse(&model(vec![node("Relu", &["x"], "y", vec![])], &["x"], vec![])).unwrap();
        let limits = NnLimits { tensor_bytes: 1024, ..NnLimits::default() };
        let e = g.plan(&[vec![1, 512]], &limits, 1 << 30, true, true).unwrap_err();
        assert!(matches!(e, NnError::TooLarge(_)) && e.to_string().contains("tensor limit of 1024 bytes"), "{e}");
        let e = g.plan(&[vec![1, 64]], &NnLimits::default(), 256, true, true).unwrap_err();
        assert!(e.to_string().contains("CPU inference memory limit"), "{e}");
        let e = g.plan(&[vec![1, 64], vec![2]], &NnLimits::default(), 1 << 30, true, true).unwrap_err();
        assert!(e.to_string().contains("the graph has 1 inputs, 2 were set"), "{e}");
    }
}
