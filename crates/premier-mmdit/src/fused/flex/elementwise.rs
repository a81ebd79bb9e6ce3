//! Elementwise kernels for `Flex`: GELU(tanh) and its backward in one vectorised pass each, in
//! parallel chunks, where the composite makes six passes on one core (burn-flex runs unary ops
//! serially) and its autodiff keeps three intermediates.

use burn::backend::flex::FlexTensor;
use burn::tensor::{TensorData, TensorMetadata};
use rayon::prelude::*;

use super::simd::vectorized;
use super::Real;

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

/// √(2/π).
const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;

/// e^(−2u) at x, u = √(2/π)(x + 0.044715x³); σ(2u) = 1 / (1 + e^(−2u)), which is 0 where the
/// exponential overflows to ∞, as it should be.
#[inline(always)]
fn exp_minus_2u<T: Real>(x: T) -> T {
    (T::ZERO - T::of(2.0 * SQRT_2_OVER_PI) * (x + T::of(0.044715) * x * x * x)).exp_fast()
}

fn elements<T: Real>(x: &FlexTensor) -> (FlexTensor, Vec<T>) {
    let x = x.to_contiguous();
    let n = x.shape().num_elements();
    (x, vec![T::ZERO; n])
}

/// `x · σ(2u)`. x: any shape → the same shape.
pub(super) fn gelu_tanh<T: Real>(x: &FlexTensor) -> FlexTensor {
    let (x, mut out) = elements::<T>(x);
    let xs = T::view(&x);
    out.par_chunks_mut(CHUNK)
        .zip(xs.par_chunks(CHUNK))
        .for_each(|(o, xc)| {
            vectorized(
                #[inline(always)]
                || {
                    for (o, &x) in o.iter_mut().zip(xc) {
                        *o = x / (T::ONE + exp_minus_2u(x));
                    }
                },
            )
        });
    tensor_like(out, &x)
}

/// dx = dy · (s + x · s(1 − s) · d(2u)/dx) with s = σ(2u) and s(1 − s) = 1 / (2 + e + 1/e),
/// e = e^(−2u): finite (0) in both tails, where e is 0 or ∞.
pub(super) fn gelu_tanh_backward<T: Real>([x, grad_out]: [&FlexTensor; 2]) -> FlexTensor {
    assert_eq!(x.shape(), grad_out.shape(), "fused GELU: grad vs x");
    let (x, mut dx) = elements::<T>(x);
    let grad_out = grad_out.to_contiguous();
    let (xs, grads) = (T::view(&x), T::view(&grad_out));
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
                        let slope =
                            T::of(2.0 * SQRT_2_OVER_PI) * (T::ONE + T::of(3.0 * 0.044715) * x * x);
                        *d = g * (s + x * ds * slope);
                    }
                },
            )
        });
    tensor_like(dx, &x)
}

fn tensor_like<T: Real>(values: Vec<T>, like: &FlexTensor) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, like.shape()))
}
