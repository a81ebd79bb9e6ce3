//! The linear layer for `Flex` as one gemm per call. burn's `linear` allocates its output through
//! burn-flex's `FlexTensor::empty` (a zeroed `Vec<u8>`, then a copy into a realigned buffer), adds
//! the bias in a second pass, and its input gradient copies the transposed weight on every call
//! (`reshape` of a strided view). Here the output starts as the bias rows and the product is
//! accumulated into it, the input gradient reads the weight through its transposed strides, and
//! the weight gradient is one product over all rows.

use burn::backend::flex::FlexTensor;
use burn::tensor::{Shape, TensorMetadata};

use super::{gemm, tensor, Real};

/// Products below this many multiply-adds run on one thread (burn-flex's own threshold).
const PARALLEL_MIN: usize = 192 * 192 * 192;

/// x `[…, K]` · weight `[K, N]` + bias `[N]` → `[…, N]`.
pub(super) fn forward<T: Real>(
    x: &FlexTensor,
    weight: &FlexTensor,
    bias: Option<&FlexTensor>,
) -> FlexTensor {
    let [k, n] = matrix_dims(weight);
    let x = x.to_contiguous();
    let xs = T::view(&x);
    assert_eq!(
        x.shape()[x.shape().num_dims() - 1],
        k,
        "fused linear: x vs weight"
    );
    let m = xs.len() / k.max(1);
    let mut out = Vec::with_capacity(m * n);
    match bias {
        Some(bias) => {
            let bias = bias.to_contiguous();
            let row = T::view(&bias);
            assert_eq!(row.len(), n, "fused linear: bias vs weight");
            (0..m).for_each(|_| out.extend_from_slice(row));
        }
        None => out.resize(m * n, T::ZERO),
    }
    let (ws, [w_rs, w_cs]) = strided(weight);
    gemm(
        [m, n, k],
        &mut out,
        [1, n],
        true,
        xs,
        [1, k],
        ws,
        [w_cs, w_rs],
        T::ONE,
        parallelism(m * n * k),
    );
    tensor(out, with_last(x.shape(), n))
}

/// dx = grad `[…, N]` · weightᵀ → `[…, K]`, weight `[K, N]`.
pub(super) fn x_backward<T: Real>(weight: &FlexTensor, grad: &FlexTensor) -> FlexTensor {
    let [k, n] = matrix_dims(weight);
    let grad = grad.to_contiguous();
    let gs = T::view(&grad);
    assert_eq!(
        grad.shape()[grad.shape().num_dims() - 1],
        n,
        "fused linear: grad vs weight"
    );
    let m = gs.len() / n.max(1);
    let mut dx = vec![T::ZERO; m * k];
    let (ws, [w_rs, w_cs]) = strided(weight);
    // weightᵀ as the right operand: its rows (the product's inner index) step by w_cs.
    gemm(
        [m, k, n],
        &mut dx,
        [1, k],
        false,
        gs,
        [1, n],
        ws,
        [w_rs, w_cs],
        T::ONE,
        parallelism(m * n * k),
    );
    tensor(dx, with_last(grad.shape(), k))
}

/// dW = xᵀ · grad → `[K, N]`, x `[…, K]`, grad `[…, N]`: every leading index is one row of the
/// product's inner dimension, so one gemm sums over them (burn's multiplies per batch entry and
/// then sums the `[B, K, N]` products).
pub(super) fn weight_backward<T: Real>(x: &FlexTensor, grad: &FlexTensor) -> FlexTensor {
    let (x, grad) = (x.to_contiguous(), grad.to_contiguous());
    let (xs, gs) = (T::view(&x), T::view(&grad));
    let k = x.shape()[x.shape().num_dims() - 1];
    let n = grad.shape()[grad.shape().num_dims() - 1];
    let m = xs.len() / k.max(1);
    assert_eq!(gs.len(), m * n, "fused linear: grad vs x");
    let mut dw = vec![T::ZERO; k * n];
    // xᵀ as the left operand: its rows (x's columns) step by 1, its columns (x's rows) by k.
    gemm(
        [k, n, m],
        &mut dw,
        [1, n],
        false,
        xs,
        [k, 1],
        gs,
        [1, n],
        T::ONE,
        parallelism(m * n * k),
    );
    tensor(dw, [k, n])
}

fn matrix_dims(weight: &FlexTensor) -> [usize; 2] {
    let shape = weight.shape();
    assert_eq!(shape.num_dims(), 2, "fused linear: weight must be [K, N]");
    [shape[0], shape[1]]
}

/// A matrix's elements from its first one, and its (row, column) strides; a copy only when a
/// stride is negative (a flipped view).
fn strided<T: Real>(x: &FlexTensor) -> (&[T], [usize; 2]) {
    let strides = x.layout().strides();
    let (rs, cs) = (strides[0], strides[1]);
    assert!(rs >= 0 && cs >= 0, "fused linear: negative weight strides");
    let start = x.layout().start_offset();
    (&T::storage(x)[start..], [rs as usize, cs as usize])
}

fn parallelism(multiply_adds: usize) -> gemm::Parallelism {
    if multiply_adds >= PARALLEL_MIN {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    }
}

fn with_last(mut shape: Shape, last: usize) -> Shape {
    let rank = shape.num_dims();
    shape[rank - 1] = last;
    shape
}
