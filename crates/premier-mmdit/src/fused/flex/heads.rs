//! q, k and v out of BFL's fused projection `[B, T, 3·H·D]` into the attention's heads
//! `[B, H, T, D]`, and the gradient back: one contiguous copy of D values at a time, in parallel,
//! where burn-flex copies the permuted view element by element (a rank-3 stride pattern its
//! tiled copy does not cover).

use burn::backend::flex::FlexTensor;
use burn::tensor::TensorMetadata;
use rayon::prelude::*;

use super::{dims4, tensor, Real};

/// Part `part` (0: q, 1: k, 2: v) of qkv `[B, T, 3·H·D]` → `[B, H, T, D]`.
pub(super) fn qkv_part<T: Real>(qkv: &FlexTensor, heads: usize, part: usize) -> FlexTensor {
    let shape = qkv.shape();
    assert_eq!(shape.num_dims(), 3, "fused qkv split: rank 3 expected");
    let [b, t, width] = [shape[0], shape[1], shape[2]];
    assert!(
        heads > 0 && width % (3 * heads) == 0 && part < 3,
        "fused qkv split: width {width} is not 3 × {heads} heads, or part {part} > 2"
    );
    let d = width / (3 * heads);
    let qkv = qkv.to_contiguous();
    let src = T::view(&qkv);
    let mut out = vec![T::ZERO; b * heads * t * d];
    if t * d > 0 {
        // A task per (batch, head): its [T, D] slab of the output.
        out.par_chunks_mut(t * d)
            .enumerate()
            .for_each(|(slab, dst)| {
                let (bi, hi) = (slab / heads, slab % heads);
                let column = (part * heads + hi) * d;
                for (ti, row) in dst.chunks_exact_mut(d).enumerate() {
                    let start = (bi * t + ti) * width + column;
                    row.copy_from_slice(&src[start..start + d]);
                }
            });
    }
    tensor(out, [b, heads, t, d])
}

/// The gradient of qkv `[B, T, 3·H·D]` from part `part`'s gradient `[B, H, T, D]`; zero in the
/// other two parts.
pub(super) fn qkv_part_backward<T: Real>(grad: &FlexTensor, part: usize) -> FlexTensor {
    let [b, h, t, d] = dims4(grad);
    assert!(part < 3, "fused qkv split: part {part} > 2");
    let width = 3 * h * d;
    let grad = grad.to_contiguous();
    let src = T::view(&grad);
    let mut out = vec![T::ZERO; b * t * width];
    if width > 0 {
        // A task per token row of the output.
        out.par_chunks_mut(width)
            .enumerate()
            .for_each(|(row, dst)| {
                let (bi, ti) = (row / t, row % t);
                for hi in 0..h {
                    let start = ((bi * h + hi) * t + ti) * d;
                    let column = (part * h + hi) * d;
                    dst[column..column + d].copy_from_slice(&src[start..start + d]);
                }
            });
    }
    tensor(out, [b, t, width])
}
