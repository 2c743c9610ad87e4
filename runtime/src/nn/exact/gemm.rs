//! The exact matrix product on the CPU: C[i][j] = sum over k, ascending, of
//! A[i][k] * B[k][j], each product and each partial sum rounded (no fused
//! multiply-add), exactly as the GPU's matmul and conv kernels sum.
//!
//! Two paths give the same bits:
//! - `flushed`: every product and partial sum through `math::z`, as the
//!   device does it, vectorised across a row's columns or a column's rows.
//! - `fast`: plain IEEE products and sums, vectorised across 16 columns of
//!   B and 4 rows of A, on every core. It gives an output the flushed
//!   path's bits when every nonzero product in its sum has magnitude at
//!   least 2^-102: then every product is a multiple of 2^-125, so is every
//!   partial sum (rounding moves a sum to a coarser grid, never a finer
//!   one), and a nonzero one is at least 2^-125 in magnitude: nothing `z`
//!   would flush ever appears. A sum starting at +0 never becomes -0, so
//!   signed zeros agree too.
//!
//! `matmul` marks, with bit masks, the outputs where a product could be
//! smaller (both factors small relative to the other operand's smallest
//! nonzero magnitude), and computes only those again on the flushed path
//! (none at all when no product can be that small). Trained models do hold
//! weights near 2^-126: sklearn's digits MLP has them for pixels that are
//! always blank (they meet zero activations: harmless) and for dead hidden
//! units (only their outputs are computed again).
//!
//! Vectorising across independent outputs keeps each output's order of
//! operations, so the SIMD and scalar code give the same bits.

use std::ops::Range;

use rayon::prelude::*;

use super::math::{add, mul};

/// Columns of B per micro-kernel panel (two AVX registers).
const NR: usize = 16;
/// Rows of A per micro-kernel.
const MR: usize = 4;
/// Multiply-adds below which one thread does all the work.
const PARALLEL_WORK: usize = 1 << 18;

/// The smallest magnitude of a nonzero product the fast path accepts.
const FAST_PRODUCT_MIN: f64 = 1.0 / (1u128 << 102) as f64;

/// The smallest nonzero finite magnitude in `v` (infinity if none), on
/// the bits (an integer min vectorises).
fn min_magnitude(v: &[f32]) -> f64 {
    let bits = v
        .iter()
        .map(|x| x.to_bits() & 0x7fff_ffff)
        .map(|b| if b == 0 || b >= 0x7f80_0000 { 0x7f80_0000 } else { b })
        .min()
        .unwrap_or(0x7f80_0000);
    f32::from_bits(bits) as f64
}

/// Below this magnitude a factor may make a product smaller than
/// FAST_PRODUCT_MIN with some nonzero value of the other operand, whose
/// smallest nonzero magnitude is `other_min` (slightly high, so rounding
/// in f64 errs on the side of caution).
fn small_below(other_min: f64) -> f64 {
    FAST_PRODUCT_MIN / other_min * (1.0 + 1e-9)
}

/// The bits of `below` as an f32, at most those of infinity: a magnitude's
/// bits below them are exactly the finite values below it. Rounded up,
/// never down, so a value just under `below` stays small.
fn limit_bits(below: f64) -> u32 {
    if below >= f32::MAX as f64 {
        return 0x7f80_0000;
    }
    let f = below as f32;
    (if (f as f64) < below { f.next_up() } else { f }).to_bits()
}

/// For each k, a bit per column j of B (k x n) whose magnitude's bits are
/// nonzero and below `limit` (branch-free, so the loop vectorises).
fn small_masks(b: &[f32], n: usize, k: usize, limit: u32) -> Vec<u64> {
    let words = n.div_ceil(64);
    let mut masks = vec![0u64; k * words];
    for q in 0..k {
        for (w, chunk) in b[q * n..(q + 1) * n].chunks(64).enumerate() {
            let mut bits = 0u64;
            for (t, v) in chunk.iter().enumerate() {
                let x = v.to_bits() & 0x7fff_ffff;
                bits |= (((x != 0) & (x < limit)) as u64) << t;
            }
            masks[q * words + w] = bits;
        }
    }
    masks
}

/// B (k x n) ready for products: its values, its panels and what the
/// fast-path check needs. A MatMul whose B is a weight of the model keeps
/// one across calls (`exact/cpu.rs`), so a batch loop packs it once.
pub(crate) struct Packed {
    b: Vec<f32>,
    panels: Vec<f32>,
    n: usize,
    k: usize,
    /// Smallest nonzero finite magnitude of B.
    min: f64,
    /// The last small-value masks, with the threshold bits they are for.
    masks: Option<(u32, Vec<u64>)>,
}

impl Packed {
    pub(crate) fn new(b: Vec<f32>, n: usize, k: usize) -> Packed {
        let panels = pack_b(&b, n, k);
        let min = min_magnitude(&b);
        Packed { b, panels, n, k, min, masks: None }
    }

    /// `small_masks` for `below`, computed again only when it changes.
    fn masks(&mut self, below: f64) -> &[u64] {
        let limit = limit_bits(below);
        if self.masks.as_ref().is_none_or(|(l, _)| *l != limit) {
            self.masks = Some((limit, small_masks(&self.b, self.n, self.k, limit)));
        }
        self.masks.as_ref().map_or(&[], |(_, m)| m.as_slice())
    }
}

/// The outputs the fast path may get wrong: those with a nonzero product
/// below 2^-102 in magnitude. Such a product needs both factors below
/// their thresholds (`small_below` the other operand's smallest nonzero
/// magnitude), so an output (i, j) is at risk if some k has a small
/// A[i][k] and a small B[k][j]. Returned as (row, a bit per column) for
/// rows with any: O(m k n / 64) at worst, O(m k + k n) when no product
/// can be small.
fn risky(a: &[f32], b: &mut Packed, m: usize) -> Vec<(usize, Vec<u64>)> {
    let (n, k) = (b.n, b.k);
    let (min_a, min_b) = (min_magnitude(a), b.min);
    if min_a.is_infinite() || min_b.is_infinite() || min_a * min_b >= FAST_PRODUCT_MIN {
        return Vec::new();
    }
    let (small_a, small_b) = (small_below(min_b), small_below(min_a));
    let small = |x: f32, below: f64| x != 0.0 && x.is_finite() && (x.abs() as f64) < below;
    let words = n.div_ceil(64);
    let small_cols = b.masks(small_b);
    let mut out = Vec::new();
    for i in 0..m {
        let mut mask = vec![0u64; words];
        for (q, x) in a[i * k..(i + 1) * k].iter().enumerate() {
            if small(*x, small_a) {
                for (m, c) in mask.iter_mut().zip(&small_cols[q * words..(q + 1) * words]) {
                    *m |= c;
                }
            }
        }
        if mask.iter().any(|w| *w != 0) {
            out.push((i, mask));
        }
    }
    out
}

/// C (m x n, row-major) = A (m x k, row-major) x B (k x n, row-major),
/// with the bits of every operation flushed.
pub(crate) fn matmul(a: &[f32], b: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    matmul_packed(a, &mut Packed::new(b.to_vec(), n, k), m)
}

/// C (m x n) = A (m x k) x B, B packed (and perhaps kept across calls).
pub(crate) fn matmul_packed(a: &[f32], b: &mut Packed, m: usize) -> Vec<f32> {
    let (n, k) = (b.n, b.k);
    let mut c = vec![0.0f32; m * n];
    if m == 0 || n == 0 {
        return c;
    }
    fast_matmul(a, &b.panels, &mut c, m, n, k);
    let risky = risky(a, b, m);
    if risky.is_empty() {
        return c;
    }
    // Outputs at risk, again with every operation flushed (any output may
    // be: the flushed path is the definition), vectorised either across the
    // columns of a row's 16-column panels or across the rows of a whole
    // column, whichever covers them with less work. Trained models put
    // their small weights in whole columns (dead units) or whole rows
    // (inputs that are always blank).
    let panel_bits = |mask: &[u64], p: usize| (mask[p * NR / 64] >> (p * NR % 64)) & ((1u64 << NR) - 1);
    let panels = n.div_ceil(NR);
    let by_rows: usize =
        risky.iter().map(|(_, mask)| (0..panels).filter(|p| panel_bits(mask, *p) != 0).count() * NR).sum();
    let mut columns = vec![0u64; n.div_ceil(64)];
    for (_, mask) in &risky {
        for (c, w) in columns.iter_mut().zip(mask) {
            *c |= w;
        }
    }
    let risky_columns: Vec<usize> = (0..n).filter(|j| columns[j / 64] & (1 << (j % 64)) != 0).collect();
    if risky_columns.len() * m < by_rows {
        let at = transpose(a, m, k);
        let mut col = vec![0.0f32; m];
        for j in risky_columns {
            flushed_column(&at, &b.b, j, n, m, k, &mut col);
            for (i, v) in col.iter().enumerate() {
                c[i * n + j] = *v;
            }
        }
    } else {
        for (i, mask) in &risky {
            let row = &a[i * k..(i + 1) * k];
            for p in (0..panels).filter(|p| panel_bits(mask, *p) != 0) {
                rows_kernel::<true>(row, &b.panels, &mut c[i * n..(i + 1) * n], 1, n, k, p..p + 1);
            }
        }
    }
    c
}

/// A (m x k) as k x m.
fn transpose(a: &[f32], m: usize, k: usize) -> Vec<f32> {
    let mut t = vec![0.0f32; m * k];
    for i in 0..m {
        for q in 0..k {
            t[q * m + i] = a[i * k + q];
        }
    }
    t
}

/// Column j of C with every operation flushed, from A transposed (k x m):
/// each row's sum in ascending k, vectorised across rows.
fn flushed_column(at: &[f32], b: &[f32], j: usize, n: usize, m: usize, k: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked just above).
            return unsafe { flushed_column_avx512(at, b, j, n, m, k, out) };
        }
        if std::arch::is_x86_feature_detected!("avx") {
            // SAFETY: the CPU has AVX (checked just above).
            return unsafe { flushed_column_avx(at, b, j, n, m, k, out) };
        }
    }
    flushed_column_generic(at, b, j, n, m, k, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn flushed_column_avx512(at: &[f32], b: &[f32], j: usize, n: usize, m: usize, k: usize, out: &mut [f32]) {
    flushed_column_generic(at, b, j, n, m, k, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
fn flushed_column_avx(at: &[f32], b: &[f32], j: usize, n: usize, m: usize, k: usize, out: &mut [f32]) {
    flushed_column_generic(at, b, j, n, m, k, out)
}

#[inline(always)]
fn flushed_column_generic(at: &[f32], b: &[f32], j: usize, n: usize, m: usize, k: usize, out: &mut [f32]) {
    out.fill(0.0);
    for q in 0..k {
        let bq = b[q * n + j];
        for (acc, x) in out[..m].iter_mut().zip(&at[q * m..(q + 1) * m]) {
            *acc = add(*acc, mul(*x, bq));
        }
    }
}

/// B packed into panels of NR columns: panel p holds, for each k, the
/// columns p*NR.. (zero beyond n; those lanes are never stored).
fn pack_b(b: &[f32], n: usize, k: usize) -> Vec<f32> {
    let panels = n.div_ceil(NR);
    let mut out = vec![0.0f32; panels * k * NR];
    for p in 0..panels {
        let cols = NR.min(n - p * NR);
        for q in 0..k {
            let dst = &mut out[(p * k + q) * NR..(p * k + q) * NR + cols];
            dst.copy_from_slice(&b[q * n + p * NR..q * n + p * NR + cols]);
        }
    }
    out
}

/// C = A x B (packed) with plain IEEE operations, on every core.
fn fast_matmul(a: &[f32], packed: &[f32], c: &mut [f32], m: usize, n: usize, k: usize) {
    let rows = |(blk, c): (usize, &mut [f32])| {
        let i0 = blk * MR;
        let mr = MR.min(m - i0);
        rows_kernel::<false>(&a[i0 * k..(i0 + mr) * k], packed, c, mr, n, k, 0..n.div_ceil(NR));
    };
    if m * n * k >= PARALLEL_WORK {
        c.par_chunks_mut(MR * n).enumerate().for_each(rows);
    } else {
        c.chunks_mut(MR * n).enumerate().for_each(rows);
    }
}

/// Up to MR rows of C.
/// Up to MR rows of C; with FLUSH, every product and sum through `z`.
fn rows_kernel<const FLUSH: bool>(
    a: &[f32],
    packed: &[f32],
    c: &mut [f32],
    mr: usize,
    n: usize,
    k: usize,
    panels: Range<usize>,
) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked just above).
            unsafe { rows_avx512::<FLUSH>(a, packed, c, mr, n, k, panels) };
            return;
        }
        if std::arch::is_x86_feature_detected!("avx") {
            // SAFETY: the CPU has AVX (checked just above).
            unsafe { rows_avx::<FLUSH>(a, packed, c, mr, n, k, panels) };
            return;
        }
    }
    rows_generic::<FLUSH>(a, packed, c, mr, n, k, panels);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
fn rows_avx<const FLUSH: bool>(
    a: &[f32],
    packed: &[f32],
    c: &mut [f32],
    mr: usize,
    n: usize,
    k: usize,
    panels: Range<usize>,
) {
    rows_generic::<FLUSH>(a, packed, c, mr, n, k, panels)
}

// The same code with 16-wide registers: each lane still computes one
// output in the same order, so the bits do not change.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn rows_avx512<const FLUSH: bool>(
    a: &[f32],
    packed: &[f32],
    c: &mut [f32],
    mr: usize,
    n: usize,
    k: usize,
    panels: Range<usize>,
) {
    rows_generic::<FLUSH>(a, packed, c, mr, n, k, panels)
}

/// acc + a * b, each operation rounded (and flushed with FLUSH).
#[inline(always)]
fn mac<const FLUSH: bool>(acc: f32, a: f32, b: f32) -> f32 {
    if FLUSH {
        add(acc, mul(a, b))
    } else {
        acc + a * b
    }
}

#[inline(always)]
fn rows_generic<const FLUSH: bool>(
    a: &[f32],
    packed: &[f32],
    c: &mut [f32],
    mr: usize,
    n: usize,
    k: usize,
    panels: Range<usize>,
) {
    for p in panels {
        let panel = &packed[p * k * NR..(p + 1) * k * NR];
        let mut acc = [[0.0f32; NR]; MR];
        if mr == MR {
            let (a0, rest) = a.split_at(k);
            let (a1, rest) = rest.split_at(k);
            let (a2, a3) = rest.split_at(k);
            for (q, bv) in panel.chunks_exact(NR).enumerate() {
                let av = [a0[q], a1[q], a2[q], a3[q]];
                for r in 0..MR {
                    for j in 0..NR {
                        acc[r][j] = mac::<FLUSH>(acc[r][j], av[r], bv[j]);
                    }
                }
            }
        } else {
            for (q, bv) in panel.chunks_exact(NR).enumerate() {
                for r in 0..mr {
                    let av = a[r * k + q];
                    for j in 0..NR {
                        acc[r][j] = mac::<FLUSH>(acc[r][j], av, bv[j]);
                    }
                }
            }
        }
        let cols = NR.min(n - p * NR);
        for r in 0..mr {
            c[r * n + p * NR..r * n + p * NR + cols].copy_from_slice(&acc[r][..cols]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One output with every operation flushed, as the device computes it.
    fn flushed_dot(a: &[f32], b: &[f32], i: usize, j: usize, n: usize, k: usize) -> f32 {
        let mut acc = 0.0f32;
        for q in 0..k {
            acc = add(acc, mul(a[i * k + q], b[q * n + j]));
        }
        acc
    }

    /// Every operation flushed, as the device computes it.
    fn flushed_matmul(a: &[f32], b: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
        (0..m * n).map(|e| flushed_dot(a, b, e / n, e % n, n, k)).collect()
    }

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }

    #[test]
    fn the_fast_path_gives_the_flushed_paths_bits() {
        let mut s = 7;
        for (m, n, k) in [(1, 1, 1), (3, 17, 5), (4, 16, 64), (9, 33, 70), (64, 40, 130), (70, 70, 70)] {
            let a: Vec<f32> = (0..m * k).map(|_| lcg(&mut s) * 8.0).collect();
            let mut b: Vec<f32> = (0..k * n).map(|_| lcg(&mut s)).collect();
            // Zeros and negative zeros, as after a Relu or in sparse weights.
            b[0] = 0.0;
            if b.len() > 1 {
                b[1] = -0.0;
            }
            assert!(risky(&a, &mut Packed::new(b.to_vec(), n, k), m).is_empty());
            let mut f = vec![0.0; m * n];
            fast_matmul(&a, &pack_b(&b, n, k), &mut f, m, n, k);
            let s = flushed_matmul(&a, &b, m, n, k);
            let fb: Vec<u32> = f.iter().map(|x| x.to_bits()).collect();
            let sb: Vec<u32> = s.iter().map(|x| x.to_bits()).collect();
            assert_eq!(fb, sb, "{m}x{n}x{k}");
        }
    }

    #[test]
    fn outputs_with_tiny_products_take_the_flushed_path() {
        // 1e-20 * 1e-20 would be a denormal: flushed to +0, so 1 + 0 = 1.
        let c = matmul(&[1e-20, 1.0], &[1e-20, 1.0], 1, 1, 2);
        assert_eq!(c, vec![1.0]);
        let c = matmul(&[1e-20, -1e-20], &[1e-20, 1e-20], 1, 1, 2);
        assert_eq!(c[0].to_bits(), 0);
        // A tiny weight meeting a zero activation is harmless; one meeting
        // a nonzero activation puts that one output at risk.
        let b = [1e-38, 0.5, 0.5, 0.25];
        assert!(risky(&[0.0, 1.0], &mut Packed::new(b.to_vec(), 2, 2), 1).is_empty());
        assert_eq!(risky(&[0.0, 1.0, 1.0, 1.0], &mut Packed::new(b.to_vec(), 2, 2), 2), vec![(1, vec![0b01])]);
        // A tiny activation puts every output its row reaches at risk...
        assert_eq!(risky(&[1e-32, 1.0], &mut Packed::new(b.to_vec(), 2, 2), 1), vec![(0, vec![0b11])]);
        // ... unless the products stay at least 2^-102 (5e-31 here).
        assert_eq!(risky(&[1e-30, 1.0], &mut Packed::new(b.to_vec(), 2, 2), 1), vec![(0, vec![0b01])]);
        // Many tiny products, on the vectorised flushed kernel.
        let mut seed = 11;
        let (m, n, k) = (9, 37, 50);
        let a: Vec<f32> = (0..m * k).map(|_| lcg(&mut seed) * 1e-19).collect();
        let b: Vec<f32> = (0..k * n).map(|_| lcg(&mut seed) * 1e-19).collect();
        assert_eq!(risky(&a, &mut Packed::new(b.to_vec(), n, k), m).len(), m);
        let bits = |v: Vec<f32>| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(matmul(&a, &b, m, n, k)), bits(flushed_matmul(&a, &b, m, n, k)));
        // One tiny column (a dead unit): computed again as a column, and
        // every output still has the flushed bits.
        let (m, n, k) = (5, 40, 30);
        let a: Vec<f32> = (0..m * k).map(|_| lcg(&mut seed) + 1.0).collect();
        let mut b: Vec<f32> = (0..k * n).map(|_| lcg(&mut seed)).collect();
        for q in 0..k {
            b[q * n + 20] = lcg(&mut seed) * 1e-38;
        }
        assert!(risky(&a, &mut Packed::new(b.to_vec(), n, k), m).iter().all(|(_, mask)| mask == &vec![1u64 << 20]));
        assert_eq!(bits(matmul(&a, &b, m, n, k)), bits(flushed_matmul(&a, &b, m, n, k)));
        // One row of tiny activations: every column of that row is at risk
        // (computed again along the row, panel by panel).
        let mut a: Vec<f32> = (0..m * k).map(|_| lcg(&mut seed) + 1.0).collect();
        for q in 0..k {
            a[2 * k + q] = lcg(&mut seed) * 1e-38;
        }
        let b: Vec<f32> = (0..k * n).map(|_| lcg(&mut seed) * 1e-3).collect();
        let r = risky(&a, &mut Packed::new(b.to_vec(), n, k), m);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].0, 2);
        assert_eq!(bits(matmul(&a, &b, m, n, k)), bits(flushed_matmul(&a, &b, m, n, k)));
        let a = [0.0, 1.0, 1e-3, 1.0];
        let c = matmul(&a, &b, 2, 2, 2);
        let want = flushed_matmul(&a, &b, 2, 2, 2);
        assert_eq!(
            c.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            want.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
    }
}
