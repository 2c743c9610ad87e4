//! The exact matrix product on the CPU: C[i][j] = sum over k, ascending, of
//! A[i][k] * B[k][j], each product and each partial sum rounded (no fused
//! multiply-add), exactly as the GPU's matmul and conv kernels sum.
//!
//! Two paths give the same bits:
//! - `flushed`: every product and partial sum through `math::z`, as the
//!   device does it. Scalar, for operands with tiny values.
//! - `fast`: plain IEEE products and sums, vectorised across 16 columns of
//!   B and 4 rows of A, on every core. It gives row i of C the flushed
//!   path's bits when every nonzero product in that row has magnitude at
//!   least 2^-102: then every product is a multiple of 2^-125, so is every
//!   partial sum (rounding moves a sum to a coarser grid, never a finer
//!   one), and a nonzero one is at least 2^-125 in magnitude: nothing `z`
//!   would flush ever appears. A sum starting at +0 never becomes -0, so
//!   signed zeros agree too.
//!
//! Such a product needs a factor below 2^-51, so `matmul` marks, with bit
//! masks, the outputs where a small factor meets a nonzero one, and
//! computes only those again on the flushed path (none at all when neither
//! operand holds a small value). Trained models do hold weights near
//! 2^-126: sklearn's digits MLP has them for pixels that are always blank
//! (they meet zero activations: harmless) and for dead hidden units (only
//! their outputs are computed again).
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

/// Bits of 2^-51: two nonzero values of at least this magnitude have a
/// product of at least 2^-102.
const SMALL_BITS: u32 = (127 - 51) << 23;

/// Nonzero and smaller than 2^-51 in magnitude.
#[inline(always)]
fn small(x: f32) -> bool {
    let b = x.to_bits() & 0x7fff_ffff;
    b != 0 && b < SMALL_BITS
}

/// For each k, a bit per column j of B (k x n) where `pred(B[k][j])`.
fn column_masks(b: &[f32], n: usize, k: usize, pred: impl Fn(f32) -> bool) -> Vec<u64> {
    let words = n.div_ceil(64);
    let mut masks = vec![0u64; k * words];
    for q in 0..k {
        for (j, v) in b[q * n..(q + 1) * n].iter().enumerate() {
            if pred(*v) {
                masks[q * words + j / 64] |= 1 << (j % 64);
            }
        }
    }
    masks
}

/// The outputs the fast path may get wrong: those with a nonzero product
/// below 2^-102 in magnitude, which needs a small factor (below 2^-51).
/// Returned as (row, a bit per column) for rows with any. O(m k n / 64)
/// at worst, nothing when neither operand holds a small value.
fn risky(a: &[f32], b: &[f32], m: usize, n: usize, k: usize) -> Vec<(usize, Vec<u64>)> {
    let small_a = a.iter().any(|x| small(*x));
    let small_b = b.iter().any(|x| small(*x));
    if !small_a && !small_b {
        return Vec::new();
    }
    let words = n.div_ceil(64);
    let small_cols = if small_b { column_masks(b, n, k, small) } else { Vec::new() };
    let nonzero_cols = if small_a { column_masks(b, n, k, |x| x.to_bits() & 0x7fff_ffff != 0) } else { Vec::new() };
    let mut out = Vec::new();
    for i in 0..m {
        let mut mask = vec![0u64; words];
        for (q, x) in a[i * k..(i + 1) * k].iter().enumerate() {
            if x.to_bits() & 0x7fff_ffff == 0 {
                continue;
            }
            let cols = if small(*x) {
                &nonzero_cols[q * words..(q + 1) * words]
            } else if small_b {
                &small_cols[q * words..(q + 1) * words]
            } else {
                continue;
            };
            for (m, c) in mask.iter_mut().zip(cols) {
                *m |= c;
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
    let mut c = vec![0.0f32; m * n];
    if m == 0 || n == 0 {
        return c;
    }
    let packed = pack_b(b, n, k);
    fast_matmul(a, &packed, &mut c, m, n, k);
    // Rows with an output at risk, again with every operation flushed
    // (still vectorised across columns: a row costs a few times a fast one).
    for (i, mask) in risky(a, b, m, n, k) {
        let row = &a[i * k..(i + 1) * k];
        for p in 0..n.div_ceil(NR) {
            // The panel's columns p*NR.. in the mask's 64-bit words.
            let (word, shift) = (p * NR / 64, p * NR % 64);
            if (mask[word] >> shift) & ((1u64 << NR) - 1) != 0 {
                rows_kernel::<true>(row, &packed, &mut c[i * n..(i + 1) * n], 1, n, k, p..p + 1);
            }
        }
    }
    c
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
            assert!(risky(&a, &b, m, n, k).is_empty());
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
        assert!(risky(&[0.0, 1.0], &b, 1, 2, 2).is_empty());
        assert_eq!(risky(&[0.0, 1.0, 1.0, 1.0], &b, 2, 2, 2), vec![(1, vec![0b01])]);
        // A tiny activation puts every output its row reaches at risk.
        assert_eq!(risky(&[1e-30, 1.0], &b, 1, 2, 2), vec![(0, vec![0b11])]);
        // Many tiny products, on the vectorised flushed kernel.
        let mut seed = 11;
        let (m, n, k) = (9, 37, 50);
        let a: Vec<f32> = (0..m * k).map(|_| lcg(&mut seed) * 1e-19).collect();
        let b: Vec<f32> = (0..k * n).map(|_| lcg(&mut seed) * 1e-19).collect();
        assert_eq!(risky(&a, &b, m, n, k).len(), m);
        let bits = |v: Vec<f32>| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(matmul(&a, &b, m, n, k)), bits(flushed_matmul(&a, &b, m, n, k)));
        // One tiny column in the second panel of three: only that panel
        // is computed again, and every output still has the flushed bits.
        let (m, n, k) = (5, 40, 30);
        let a: Vec<f32> = (0..m * k).map(|_| lcg(&mut seed) + 1.0).collect();
        let mut b: Vec<f32> = (0..k * n).map(|_| lcg(&mut seed)).collect();
        for q in 0..k {
            b[q * n + 20] = lcg(&mut seed) * 1e-38;
        }
        assert!(risky(&a, &b, m, n, k).iter().all(|(_, mask)| mask == &vec![1u64 << 20]));
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
