//! A plan (`nn/graph/`) run on the CPU with the exact kernels: each step
//! is the Rust twin of its kernel in `vulkan/kernels.wgsl` with the exact
//! prelude, reading the same parameters, summing in the same order and
//! rounding (and flushing) after the same operations. Matrix products and
//! convolutions go through `gemm.rs` (vectorised, on every core).

use std::borrow::Cow;

use rayon::prelude::*;

use super::gemm;
use super::math::{self, add, div, mul, out, sub};
use crate::nn::graph::{Kernel, Plan, Step};
use crate::nn::params::{self, KernelParams, MAX_RANK, NONE};
use crate::nn::NnError;
/// Elements below which an elementwise step stays on one thread.
const PARALLEL_ELEMENTS: usize = 1 << 16;

fn bad(what: &str) -> NnError {
    NnError::Runtime(format!("the exact CPU backend: {what} outside the plan's memory (a planner bug)"))
}

fn region(arena: &[f32], off: usize, len: usize) -> Result<&[f32], NnError> {
    arena.get(off..off.checked_add(len).ok_or_else(|| bad("an operand"))?).ok_or_else(|| bad("an operand"))
}

fn store(arena: &mut [f32], off: usize, values: &[f32]) -> Result<(), NnError> {
    let end = off.checked_add(values.len()).ok_or_else(|| bad("a result"))?;
    arena.get_mut(off..end).ok_or_else(|| bad("a result"))?.copy_from_slice(values);
    Ok(())
}

/// What running a plan keeps between calls: the arena (every tensor, the
/// weights in place) and, for each MatMul whose B is a weight, B packed.
pub(crate) struct State {
    arena: Vec<f32>,
    /// Per step: `Some` for a MatMul with a constant B, packed on first use.
    packed: Vec<Option<Option<gemm::Packed>>>,
}

/// The state of a plan before its first run.
pub(crate) fn prepare(plan: &Plan) -> State {
    let mut arena = vec![0.0f32; plan.arena];
    for (off, w) in &plan.weights {
        if let Some(dst) = arena.get_mut(*off..*off + w.len()) {
            dst.copy_from_slice(w);
        }
    }
    let in_weights =
        |off: usize, len: usize| plan.weights.iter().any(|(o, w)| *o <= off && off.saturating_add(len) <= o + w.len());
    let packed = plan
        .steps
        .iter()
        .map(|step| {
            if step.kernel != Kernel::MatMul {
                return None;
            }
            let q = params::MatMul::from_words(&step.params);
            let (k, n) = (q.k as usize, q.n as usize);
            let extent = ((k.max(1) - 1).saturating_mul(q.b_k_stride as usize))
                .saturating_add((n.max(1) - 1).saturating_mul(q.b_col_stride as usize))
                .saturating_add(1);
            let constant = (q.batch <= 1 || q.batch_stride_b == 0) && in_weights(q.off_b as usize, extent);
            constant.then_some(None)
        })
        .collect();
    State { arena, packed }
}

/// Puts canonical `inputs` in place, runs every step and returns the outputs.
pub(crate) fn run(plan: &Plan, state: &mut State, inputs: &[&[f32]]) -> Result<Vec<Vec<f32>>, NnError> {
    let arena = &mut state.arena;
    for ((off, len), data) in plan.inputs.iter().zip(inputs) {
        if *len != data.len() {
            return Err(NnError::InvalidArgument(format!("an input of {} values, the plan expects {len}", data.len())));
        }
        let dst = arena.get_mut(*off..*off + len).ok_or_else(|| bad("an input"))?;
        for (d, s) in dst.iter_mut().zip(data.iter()) {
            *d = math::canonical(*s);
        }
    }
    for (step, packed) in plan.steps.iter().zip(&mut state.packed) {
        run_step(step, arena, packed.as_mut())?;
    }
    plan.outputs.iter().map(|(off, shape)| region(arena, *off, shape.iter().product()).map(|r| r.to_vec())).collect()
}

/// Runs one step; `packed` keeps a MatMul's constant B across calls.
fn run_step(step: &Step, m: &mut [f32], packed: Option<&mut Option<gemm::Packed>>) -> Result<(), NnError> {
    let w = &step.params;
    match step.kernel {
        Kernel::MatMul => matmul(&params::MatMul::from_words(w), m, packed),
        Kernel::Binary => {
            let q = params::Binary::from_words(w);
            let f = |idx: usize| -> Result<f32, NnError> {
                let (ia, ib) = strided2(idx, q.rank as usize, &q.dims, &q.stride_a, &q.stride_b);
                let a = *m.get(q.off_a as usize + ia).ok_or_else(|| bad("an operand"))?;
                let b = *m.get(q.off_b as usize + ib).ok_or_else(|| bad("an operand"))?;
                Ok(out(match q.op {
                    0 => add(a, b),
                    1 => mul(a, b),
                    2 => sub(a, b),
                    _ => div(a, b),
                }))
            };
            let y = map_indices(q.n as usize, f)?;
            store(m, q.off_c as usize, &y)
        }
        Kernel::Unary => {
            let q = params::Unary::from_words(w);
            let x = region(m, q.off_in as usize, q.n as usize)?;
            // One loop per function, so each is inlined (and vectorised
            // where it can be) rather than called through a pointer.
            fn apply(x: &[f32], f: impl Fn(f32) -> f32 + Sync) -> Vec<f32> {
                if x.len() >= PARALLEL_ELEMENTS {
                    x.par_iter().map(|v| out(f(*v))).collect()
                } else {
                    x.iter().map(|v| out(f(*v))).collect()
                }
            }
            let y = match q.op {
                0 => apply(x, math::relu),
                1 => apply(x, math::sigmoid),
                _ => apply(x, math::tanh),
            };
            store(m, q.off_out as usize, &y)
        }
        Kernel::Copy => {
            let q = params::StridedCopy::from_words(w);
            for idx in 0..q.n as usize {
                let (is, id) = strided2(idx, q.rank as usize, &q.dims, &q.src, &q.dst);
                let v = *m.get(q.off_in as usize + is).ok_or_else(|| bad("an operand"))?;
                *m.get_mut(q.off_out as usize + id).ok_or_else(|| bad("a result"))? = v;
            }
            Ok(())
        }
        Kernel::Conv => conv(&params::Conv::from_words(w), m),
        Kernel::Pool => pool(&params::Pool::from_words(w), m),
        Kernel::Softmax => {
            let q = params::Softmax::from_words(w);
            let (outer, len, inner) = (q.outer as usize, q.len as usize, q.inner as usize);
            let x = region(m, q.off_in as usize, outer * len * inner)?.to_vec();
            let mut y = vec![0.0f32; x.len()];
            for o in 0..outer {
                for i in 0..inner {
                    let at = |k: usize| o * len * inner + i + k * inner;
                    let mut mx = f32::NEG_INFINITY;
                    for k in 0..len {
                        mx = math::max(mx, x[at(k)]);
                    }
                    // The GPU computes each exponential twice; the same
                    // function of the same value, so once is the same bits.
                    let mut sum = 0.0f32;
                    for k in 0..len {
                        let e = math::exp(sub(x[at(k)], mx));
                        y[at(k)] = e;
                        sum = add(sum, e);
                    }
                    let sum = math::Divisor::new(sum);
                    for k in 0..len {
                        y[at(k)] = out(sum.divide(y[at(k)]));
                    }
                }
            }
            store(m, q.off_out as usize, &y)
        }
        Kernel::BatchNorm => {
            let q = params::BatchNorm::from_words(w);
            let (n, c, spatial) = (q.n as usize, q.c as usize, q.spatial as usize);
            let x = region(m, q.off_x as usize, n)?;
            let a = region(m, q.off_scale as usize, c)?;
            let b = region(m, q.off_shift as usize, c)?;
            let y: Vec<f32> = (0..n)
                .map(|i| {
                    let ch = (i / spatial.max(1)) % c.max(1);
                    out(add(mul(x[i], a[ch]), b[ch]))
                })
                .collect();
            store(m, q.off_y as usize, &y)
        }
    }
}

/// `f` over 0..n, on every core when n is large.
fn map_indices(n: usize, f: impl Fn(usize) -> Result<f32, NnError> + Sync + Send) -> Result<Vec<f32>, NnError> {
    if n >= PARALLEL_ELEMENTS {
        (0..n).into_par_iter().map(f).collect()
    } else {
        (0..n).map(f).collect()
    }
}

/// The offsets of element `idx` (a multi-index over `dims`, last fastest)
/// under two sets of strides: the walk of the binary and copy kernels.
fn strided2(idx: usize, rank: usize, dims: &[u32], s1: &[u32], s2: &[u32]) -> (usize, usize) {
    let mut rem = idx;
    let (mut a, mut b) = (0usize, 0usize);
    for d in (0..rank.min(MAX_RANK)).rev() {
        let dim = dims[d].max(1) as usize;
        let c = rem % dim;
        rem /= dim;
        a += c * s1[d] as usize;
        b += c * s2[d] as usize;
    }
    (a, b)
}

fn matmul(q: &params::MatMul, m: &mut [f32], mut kept: Option<&mut Option<gemm::Packed>>) -> Result<(), NnError> {
    let u = |v: u32| v as usize;
    let (mm, nn, kk, batch) = (u(q.m), u(q.n), u(q.k), u(q.batch));
    let mut y = vec![0.0f32; batch * mm * nn];
    let bias = match q.off_bias {
        NONE => None,
        off => Some(gather(m, u(off), mm, nn, u(q.bias_row_stride), u(q.bias_col_stride))?),
    };
    for b in 0..batch {
        let a = gather(m, u(q.off_a) + b * u(q.batch_stride_a), mm, kk, u(q.a_row_stride), u(q.a_k_stride))?;
        let b_at = u(q.off_b) + b * u(q.batch_stride_b);
        let gather_b = || {
            Ok::<_, NnError>(gemm::Packed::new(
                gather(m, b_at, kk, nn, u(q.b_k_stride), u(q.b_col_stride))?.into_owned(),
                nn,
                kk,
            ))
        };
        let acc = match kept.as_deref_mut() {
            Some(slot) => {
                if slot.is_none() {
                    *slot = Some(gather_b()?);
                }
                match slot.as_mut() {
                    Some(packed) => gemm::matmul_packed(&a, packed, mm),
                    None => return Err(bad("a packed weight")),
                }
            }
            None => gemm::matmul_packed(&a, &mut gather_b()?, mm),
        };
        for (e, v) in acc.iter().enumerate() {
            let mut v = mul(q.alpha, *v);
            if let Some(bias) = &bias {
                v = add(v, mul(q.beta, bias[e]));
            }
            y[b * mm * nn + e] = out(v);
        }
    }
    store(m, u(q.off_c), &y)
}

/// A rows x cols matrix at `off` with the given strides, row-major: a
/// view of the arena when it is already laid out that way.
fn gather(
    m: &[f32],
    off: usize,
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
) -> Result<Cow<'_, [f32]>, NnError> {
    if col_stride == 1 && row_stride == cols {
        return Ok(Cow::Borrowed(region(m, off, rows * cols)?));
    }
    let mut v = Vec::with_capacity(rows * cols);
    for i in 0..rows {
        for j in 0..cols {
            v.push(*m.get(off + i * row_stride + j * col_stride).ok_or_else(|| bad("an operand"))?);
        }
    }
    Ok(Cow::Owned(v))
}

fn conv(q: &params::Conv, m: &mut [f32]) -> Result<(), NnError> {
    let u = |v: u32| v as usize;
    let (n, c, h, w, mo, oh, ow, kh, kw) = (u(q.n), u(q.c), u(q.h), u(q.w), u(q.m), u(q.oh), u(q.ow), u(q.kh), u(q.kw));
    let (sh, sw, pt, pl) = (u(q.stride_h), u(q.stride_w), u(q.pad_top), u(q.pad_left));
    let (dh, dw, group) = (u(q.dilation_h), u(q.dilation_w), u(q.group).max(1));
    let cpg = c / group;
    let mpg = mo / group;
    let kvol = kh * kw;
    let kdim = cpg * kvol;
    let x = region(m, u(q.off_x), n * c * h * w)?;
    let wt = region(m, u(q.off_w), mo * kdim)?;
    let bias = if q.off_bias != NONE { Some(region(m, u(q.off_bias), mo)?) } else { None };
    let pixels = oh * ow;
    // As a matrix product of the weights and the input's windows (im2col):
    // zero padding in place of skipped taps gives the same sums only when
    // every weight is finite (0 * inf is NaN); otherwise the direct loop.
    let fast = wt.iter().all(|v| v.is_finite());
    let tap = |o_h: usize, o_w: usize, k_h: usize, k_w: usize| -> Option<(usize, usize)> {
        let ih = (o_h * sh + k_h * dh).checked_sub(pt)?;
        let iw = (o_w * sw + k_w * dw).checked_sub(pl)?;
        (ih < h && iw < w).then_some((ih, iw))
    };
    let mut y = vec![0.0f32; n * mo * pixels];
    for b in 0..n {
        for g in 0..group {
            let wg = &wt[g * mpg * kdim..(g + 1) * mpg * kdim];
            let acc = if fast {
                let mut col = vec![0.0f32; kdim * pixels];
                for ci in 0..cpg {
                    let plane = &x[(b * c + g * cpg + ci) * h * w..][..h * w];
                    for k_h in 0..kh {
                        for k_w in 0..kw {
                            let row = &mut col[((ci * kh + k_h) * kw + k_w) * pixels..][..pixels];
                            // The output columns whose tap falls inside the
                            // input: iw = o_w * sw + k_w * dw - pl in [0, w).
                            let shift = k_w * dw;
                            let lo = pl.saturating_sub(shift).div_ceil(sw).min(ow);
                            let hi = (w + pl).saturating_sub(shift).div_ceil(sw).min(ow).max(lo);
                            for o_h in 0..oh {
                                let Some(ih) = (o_h * sh + k_h * dh).checked_sub(pt).filter(|ih| *ih < h) else {
                                    continue;
                                };
                                let src = &plane[ih * w..(ih + 1) * w];
                                let dst = &mut row[o_h * ow + lo..o_h * ow + hi];
                                if sw == 1 {
                                    let iw = lo + shift - pl;
                                    dst.copy_from_slice(&src[iw..iw + dst.len()]);
                                } else {
                                    for (d, o_w) in dst.iter_mut().zip(lo..hi) {
                                        *d = src[o_w * sw + shift - pl];
                                    }
                                }
                            }
                        }
                    }
                }
                gemm::matmul(wg, &col, mpg, pixels, kdim)
            } else {
                let mut acc = vec![0.0f32; mpg * pixels];
                for mi in 0..mpg {
                    for o_h in 0..oh {
                        for o_w in 0..ow {
                            let mut s = 0.0f32;
                            for ci in 0..cpg {
                                let plane = &x[(b * c + g * cpg + ci) * h * w..][..h * w];
                                for k_h in 0..kh {
                                    for k_w in 0..kw {
                                        if let Some((ih, iw)) = tap(o_h, o_w, k_h, k_w) {
                                            s = add(
                                                s,
                                                mul(plane[ih * w + iw], wg[mi * kdim + (ci * kh + k_h) * kw + k_w]),
                                            );
                                        }
                                    }
                                }
                            }
                            acc[mi * pixels + o_h * ow + o_w] = s;
                        }
                    }
                }
                acc
            };
            for mi in 0..mpg {
                let oc = g * mpg + mi;
                let dst = &mut y[(b * mo + oc) * pixels..][..pixels];
                for (d, v) in dst.iter_mut().zip(&acc[mi * pixels..(mi + 1) * pixels]) {
                    *d = out(match bias {
                        Some(bs) => add(*v, bs[oc]),
                        None => *v,
                    });
                }
            }
        }
    }
    store(m, u(q.off_y), &y)
}

fn pool(q: &params::Pool, m: &mut [f32]) -> Result<(), NnError> {
    let u = |v: u32| v as usize;
    let (nc, h, w, oh, ow, kh, kw) = (u(q.nc), u(q.h), u(q.w), u(q.oh), u(q.ow), u(q.kh), u(q.kw));
    let (sh, sw, pt, pl) = (u(q.stride_h), u(q.stride_w), u(q.pad_top), u(q.pad_left));
    let is_max = q.kind == 0;
    let include_pad = q.count_include_pad != 0;
    let x = region(m, u(q.off_x), nc * h * w)?;
    let mut y = vec![0.0f32; nc * oh * ow];
    for (idx, v) in y.iter_mut().enumerate() {
        let o_w = idx % ow;
        let o_h = (idx / ow) % oh;
        let plane = &x[(idx / (ow * oh)) * h * w..][..h * w];
        let mut acc = if is_max { f32::NEG_INFINITY } else { 0.0 };
        let mut count = 0u32;
        for k_h in 0..kh {
            for k_w in 0..kw {
                let ih = (o_h * sh + k_h).checked_sub(pt).filter(|i| *i < h);
                let iw = (o_w * sw + k_w).checked_sub(pl).filter(|i| *i < w);
                let (Some(ih), Some(iw)) = (ih, iw) else {
                    if include_pad {
                        count += 1;
                    }
                    continue;
                };
                let xv = plane[ih * w + iw];
                acc = if is_max { math::max(acc, xv) } else { add(acc, xv) };
                count += 1;
            }
        }
        if !is_max {
            acc = div(acc, count.max(1) as f32);
        }
        *v = out(acc);
    }
    store(m, u(q.off_y), &y)
}
