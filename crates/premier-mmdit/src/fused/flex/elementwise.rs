//! Elementwise kernels for `Flex`: GELU(tanh) and its backward in one vectorised pass each, in
//! parallel chunks, where the composite makes six passes on one core (burn-flex runs unary ops
//! serially) and its autodiff keeps three intermediates.

use burn::backend::flex::FlexTensor;
use burn::tensor::TensorMetadata;
use rayon::prelude::*;

use super::simd::vectorized;
use super::{tensor, Real};
use crate::fused::composite::{GELU_CUBIC, GELU_SQRT_2_OVER_PI};

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

/// e^(−2u) at x, u = √(2/π)(x + 0.044715x³); σ(2u) = 1 / (1 + e^(−2u)), which is 0 where the
/// exponential overflows to ∞, as it should be.
#[inline(always)]
fn exp_minus_2u<T: Real>(x: T) -> T {
    let cubic = x + T::of(GELU_CUBIC) * x * x * x;
    (T::ZERO - T::of(2.0 * GELU_SQRT_2_OVER_PI) * cubic).exp_fast()
}

/// `x · σ(2u)`. x: any shape → the same shape. Written over x when x owns its buffer alone (the
/// MLP's hidden activations in an untracked forward), which saves a buffer and its page faults.
pub(super) fn gelu_tanh<T: Real>(mut x: FlexTensor) -> FlexTensor {
    #[inline(always)]
    fn gelu<T: Real>(x: T) -> T {
        x / (T::ONE + exp_minus_2u(x))
    }
    if let Some(values) = T::view_mut(&mut x) {
        values.par_chunks_mut(CHUNK).for_each(|chunk| {
            vectorized(
                #[inline(always)]
                || chunk.iter_mut().for_each(|v| *v = gelu(*v)),
            )
        });
        return x;
    }
    let x = x.to_contiguous();
    let xs = T::view(&x);
    let mut out = vec![T::ZERO; xs.len()];
    out.par_chunks_mut(CHUNK)
        .zip(xs.par_chunks(CHUNK))
        .for_each(|(o, xc)| {
            vectorized(
                #[inline(always)]
                || o.iter_mut().zip(xc).for_each(|(o, &x)| *o = gelu(x)),
            )
        });
    tensor(out, x.shape())
}

/// dx = dy · (s + x · s(1 − s) · d(2u)/dx) with s = σ(2u) and s(1 − s) = 1 / (2 + e + 1/e),
/// e = e^(−2u): finite (0) in both tails, where e is 0 or ∞.
pub(super) fn gelu_tanh_backward<T: Real>([x, grad_out]: [&FlexTensor; 2]) -> FlexTensor {
    assert_eq!(x.shape(), grad_out.shape(), "fused GELU: grad vs x");
    let (x, grad_out) = (x.to_contiguous(), grad_out.to_contiguous());
    let (xs, grads) = (T::view(&x), T::view(&grad_out));
    let mut dx = vec![T::ZERO; xs.len()];
    dx.par_chunks_mut(CHUNK)
        .zip(xs.par_chunks(CHUNK).zip(grads.par_chunks(CHUNK)))
        .for_each(|(d, (xc, gc))| {
            vectorized(
                #[inline(always)]
                || {
                    for ((d, &x), &g) in d.iter_mut().zip(xc).zip(gc) {
                        let e = exp_minus_2u(x);
                        let s = T::ONE / (T::ONE + e);
                        let ds = T::ONE / (T::of(2.0) + e + T::ONE / e);
                        let slope = T::of(2.0 * GELU_SQRT_2_OVER_PI)
                            * (T::ONE + T::of(3.0 * GELU_CUBIC) * x * x);
                        *d = g * (s + x * ds * slope);
                    }
                },
            )
        });
    tensor(dx, x.shape())
}
