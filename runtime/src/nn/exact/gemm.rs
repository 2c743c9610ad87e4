//! The exact matrix product on the CPU: C[i][j] = sum over k, ascending, of
//! A[i][k] * B[k][j], each product and each partial sum rounded (no fused
//! multiply-add), exactly as the GPU's matmul and conv kernels sum.
//!
//! Two paths give the same bits:
//! - `flushed`: every product and partial sum through `math::z`, as the
//!   device does it. Scalar, for operands with tiny values.
//! - `fast`: plain IEEE products and sums, vectorised across 16 columns of
//!   B and 4 rows of A, on every core. It is taken only when every nonzero
//!   product has magnitude at least 2^-102 (checked on the operands'
//!   smallest nonzero magnitudes). Then every product is a multiple of
//!   2^-125, so is every partial sum (rounding moves a sum to a coarser
//!   grid, never a finer one), and a nonzero one is at least 2^-125 in
//!   magnitude: nothing `z` would flush ever appears, and the two paths
//!   compute the same values. A sum starting at +0 never becomes -0, so
//!   signed zeros agree too.
//!
//! Vectorising across independent outputs keeps each output's order of
//! operations, so the SIMD and scalar code give the same bits.

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

/// The smallest nonzero finite magnitude in `v` (infinity if none).
pub(crate) fn min_magnitude(v: impl Iterator<Item = f32>) -> f32 {
    v.map(f32::abs).filter(|x| *x != 0.0 && x.is_finite()).fold(f32::INFINITY, f32::min)
}

/// Whether products of values of at least these magnitudes can take the
/// fast path.
pub(crate) fn fast_ok(min_a: f32, min_b: f32) -> bool {
    min_a.is_infinite() || min_b.is_infinite() || (min_a as f64) * (min_b as f64) >= FAST_PRODUCT_MIN
}

/// C (m x n, row-major) = A (m x k, row-major) x B (k x n, row-major).
pub(crate) fn matmul(a: &[f32], b: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    let fast = fast_ok(min_magnitude(a.iter().copied()), min_magnitude(b.iter().copied()));
    if fast {
        fast_matmul(a, b, m, n, k)
    } else {
        flushed_matmul(a, b, m, n, k)
    }
}

/// Every operation flushed, as the device computes it.
pub(crate) fn flushed_matmul(a: &[f32], b: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    let mut c = vec![0.0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0.0f32;
            for q in 0..k {
                acc = add(acc, mul(a[i * k + q], b[q * n + j]));
            }
            c[i * n + j] = acc;
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

pub(crate) fn fast_matmul(a: &[f32], b: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    let mut c = vec![0.0f32; m * n];
    if m == 0 || n == 0 {
        return c;
    }
    let packed = pack_b(b, n, k);
    let rows = |(blk, c): (usize, &mut [f32])| {
        let i0 = blk * MR;
        let mr = MR.min(m - i0);
        rows_kernel(&a[i0 * k..(i0 + mr) * k], &packed, c, mr, n, k);
    };
    if m * n * k >= PARALLEL_WORK {
        c.par_chunks_mut(MR * n).enumerate().for_each(rows);
    } else {
        c.chunks_mut(MR * n).enumerate().for_each(rows);
    }
    c
}

/// Up to MR rows of C.
fn rows_kernel(a: &[f32], packed: &[f32], c: &mut [f32], mr: usize, n: usize, k: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx") {
            // SAFETY: the CPU has AVX (checked just above).
            unsafe { rows_avx(a, packed, c, mr, n, k) };
            return;
        }
    }
    rows_generic(a, packed, c, mr, n, k);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
fn rows_avx(a: &[f32], packed: &[f32], c: &mut [f32], mr: usize, n: usize, k: usize) {
    rows_generic(a, packed, c, mr, n, k)
}

#[inline(always)]
fn rows_generic(a: &[f32], packed: &[f32], c: &mut [f32], mr: usize, n: usize, k: usize) {
    for p in 0..n.div_ceil(NR) {
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
                        acc[r][j] += av[r] * bv[j];
                    }
                }
            }
        } else {
            for (q, bv) in panel.chunks_exact(NR).enumerate() {
                for r in 0..mr {
                    let av = a[r * k + q];
                    for j in 0..NR {
                        acc[r][j] += av * bv[j];
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
            assert!(fast_ok(min_magnitude(a.iter().copied()), min_magnitude(b.iter().copied())));
            let f = fast_matmul(&a, &b, m, n, k);
            let s = flushed_matmul(&a, &b, m, n, k);
            let fb: Vec<u32> = f.iter().map(|x| x.to_bits()).collect();
            let sb: Vec<u32> = s.iter().map(|x| x.to_bits()).collect();
            assert_eq!(fb, sb, "{m}x{n}x{k}");
        }
    }

    #[test]
    fn tiny_operands_take_the_flushed_path() {
        assert!(!fast_ok(1e-20, 1e-20));
        assert!(fast_ok(1e-10, 1e-20));
        assert!(fast_ok(f32::INFINITY, 1e-40));
        // 1e-20 * 1e-20 would be a denormal: flushed to +0, so 1 + 0 = 1
        // and the product of these rows is exactly [1].
        let c = matmul(&[1e-20, 1.0], &[1e-20, 1.0], 1, 1, 2);
        assert_eq!(c, vec![1.0]);
        let c = matmul(&[1e-20, -1e-20], &[1e-20, 1e-20], 1, 1, 2);
        assert_eq!(c[0].to_bits(), 0);
    }
}
