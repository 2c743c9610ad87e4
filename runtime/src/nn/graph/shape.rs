//! Shape arithmetic for the planner: pure functions of shapes and
//! attributes, unit-tested on their own.

use crate::nn::NnError;

pub(super) fn elems(shape: &[usize]) -> usize {
    shape.iter().product()
}

pub(super) fn contiguous(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

pub(super) fn axis_of(axis: i64, rank: usize, node: &str) -> Result<usize, NnError> {
    let a = if axis < 0 { axis + rank as i64 } else { axis };
    if a < 0 || a as usize >= rank {
        return Err(NnError::InvalidArgument(format!("node {node}: axis {axis} out of range for rank {rank}")));
    }
    Ok(a as usize)
}

/// Broadcast strides of `shape` against `out` (right-aligned, 0 where
/// broadcast), padded to MAX_RANK.
pub(super) fn broadcast_strides(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let s = contiguous(shape);
    let pad = out.len() - shape.len();
    (0..out.len()).map(|i| if i < pad || shape[i - pad] == 1 { 0 } else { s[i - pad] }).collect()
}

/// The numpy broadcast of two shapes (right-aligned; a 1 stretches), or
/// `None` if they do not broadcast.
pub(super) fn broadcast(sa: &[usize], sb: &[usize]) -> Option<Vec<usize>> {
    let rank = sa.len().max(sb.len());
    let dim = |s: &[usize], i: usize| if i + s.len() >= rank { s[i + s.len() - rank] } else { 1 };
    (0..rank)
        .map(|i| {
            let (da, db) = (dim(sa, i), dim(sb, i));
            if da == db || db == 1 {
                Some(da)
            } else if da == 1 {
                Some(db)
            } else {
                None
            }
        })
        .collect()
}

/// MatMul's batch: the batch dims and the batch strides of A and B (in
/// elements; 0 for the side without a batch), for operands of rank >= 2.
/// `None` for broadcasting the kernels do not do (both sides batched
/// differently).
pub(super) fn matmul_batch(sa: &[usize], sb: &[usize]) -> Option<(Vec<usize>, usize, usize)> {
    let (ra, rb) = (sa.len().checked_sub(2)?, sb.len().checked_sub(2)?);
    let (ba, bb) = (&sa[..ra], &sb[..rb]);
    let (m, k, n) = (sa[ra], sa[ra + 1], sb[rb + 1]);
    if bb.is_empty() || elems(bb) == 1 && bb.len() <= ba.len() {
        Some((ba.to_vec(), m * k, 0))
    } else if ba.is_empty() || elems(ba) == 1 && ba.len() <= bb.len() {
        Some((bb.to_vec(), 0, k * n))
    } else if ba == bb {
        Some((ba.to_vec(), m * k, k * n))
    } else {
        None
    }
}

/// auto_pad SAME_UPPER (`upper`) or SAME_LOWER: pads [top, left, bottom,
/// right] so that the output is ceil(size / stride), the odd one at the
/// end (upper) or the beginning (lower). `window` is the dilated kernel.
pub(super) fn same_pads(size: [usize; 2], strides: [usize; 2], window: [usize; 2], upper: bool) -> [usize; 4] {
    let mut p = [0; 4];
    for i in 0..2 {
        let out = size[i].div_ceil(strides[i]);
        let total = ((out.max(1) - 1) * strides[i] + window[i]).saturating_sub(size[i]);
        let small = total / 2;
        let (begin, end) = if upper { (small, total - small) } else { (total - small, small) };
        p[i] = begin;
        p[i + 2] = end;
    }
    p
}

/// The output height and width of a window (convolution or pooling) over
/// `size` with `pads` [top, left, bottom, right], or `None` if the window
/// is larger than the padded input.
pub(super) fn window_output(
    size: [usize; 2],
    pads: [usize; 4],
    window: [usize; 2],
    strides: [usize; 2],
) -> Option<[usize; 2]> {
    let padded = [size[0] + pads[0] + pads[2], size[1] + pads[1] + pads[3]];
    let out = |i: usize| Some(padded[i].checked_sub(window[i])? / strides[i].max(1) + 1);
    Some([out(0)?, out(1)?])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_broadcast_like_numpy() {
        assert_eq!(broadcast(&[2, 3, 4], &[4]), Some(vec![2, 3, 4]));
        assert_eq!(broadcast(&[2, 1, 4], &[3, 1]), Some(vec![2, 3, 4]));
        assert_eq!(broadcast(&[1], &[5, 2]), Some(vec![5, 2]));
        assert_eq!(broadcast(&[2, 3], &[4, 3]), None);
        // Strides are 0 along broadcast dims and where the rank is short.
        assert_eq!(broadcast_strides(&[3, 1], &[2, 3, 4]), vec![0, 1, 0]);
        assert_eq!(broadcast_strides(&[2, 3, 4], &[2, 3, 4]), vec![12, 4, 1]);
        assert_eq!(contiguous(&[2, 3, 4]), vec![12, 4, 1]);
        assert_eq!(axis_of(-1, 3, "n").unwrap(), 2);
        assert!(axis_of(3, 3, "n").is_err());
    }

    #[test]
    fn matmul_batches_one_side_or_both_alike() {
        assert_eq!(matmul_batch(&[5, 2, 3], &[3, 4]), Some((vec![5], 6, 0)));
        assert_eq!(matmul_batch(&[2, 3], &[5, 3, 4]), Some((vec![5], 0, 12)));
        assert_eq!(matmul_batch(&[5, 2, 3], &[5, 3, 4]), Some((vec![5], 6, 12)));
        assert_eq!(matmul_batch(&[2, 3], &[3, 4]), Some((vec![], 6, 0)));
        assert_eq!(matmul_batch(&[5, 2, 3], &[4, 3, 4]), None);
        assert_eq!(matmul_batch(&[3], &[3, 4]), None);
    }

    #[test]
    fn windows_and_same_padding() {
        // 3x3 kernel, stride 1, SAME: the output keeps the input's size.
        let p = same_pads([8, 8], [1, 1], [3, 3], true);
        assert_eq!(p, [1, 1, 1, 1]);
        assert_eq!(window_output([8, 8], p, [3, 3], [1, 1]), Some([8, 8]));
        // Stride 2 on 7: output 4, 3 pads in total, the odd one at the end
        // (upper) or at the beginning (lower).
        assert_eq!(same_pads([7, 7], [2, 2], [4, 4], true), [1, 1, 2, 2]);
        assert_eq!(same_pads([7, 7], [2, 2], [4, 4], false), [2, 2, 1, 1]);
        assert_eq!(window_output([7, 7], [1, 1, 2, 2], [4, 4], [2, 2]), Some([4, 4]));
        // A dilated 3x3 kernel (window 5) on 8x8, no pads, stride 1.
        assert_eq!(window_output([8, 8], [0; 4], [5, 5], [1, 1]), Some([4, 4]));
        assert_eq!(window_output([2, 8], [0; 4], [3, 3], [1, 1]), None);
    }
}
