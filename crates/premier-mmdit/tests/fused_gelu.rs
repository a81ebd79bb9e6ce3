//! The fused GELU(tanh) of `FluxOps` on Flex against its composite (forward, the backward
//! kernel, gradients under Autodiff against the differentiated composite) and against finite
//! differences in f64. Inputs span the tails (|x| up to 40, where σ(2u) saturates and an
//! exp-based form would overflow) and lengths that are not a multiple of a task or a vector.

use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::DType;
use premier_mmdit::fused::{composite, flux_gelu_tanh};
use premier_mmdit::FluxOps;

mod common;
use common::{prim, rel, tensor, values};

type AB = Autodiff<Flex>;

/// Shapes: a single element, odd sizes, one past a 16K-element task, rank 4.
const SHAPES: [&[usize]; 4] = [&[1], &[3, 7, 5], &[2, 8193], &[2, 3, 5, 11]];

/// Values from −40 to 40 (and a dense middle), in a fixed pseudo-random order.
fn inputs(n: usize, dtype: DType) -> Vec<f64> {
    (0..n)
        .map(|i| {
            let u = ((i * 7919 + 13) % 1000) as f64 / 999.0 * 2.0 - 1.0;
            if i % 5 == 0 {
                u * 40.0
            } else {
                u * 6.0
            }
        })
        .map(|v| {
            if dtype == DType::F32 {
                v as f32 as f64
            } else {
                v
            }
        })
        .collect()
}

fn tensor_of<B: Backend, const D: usize>(
    values: Vec<f64>,
    shape: [usize; D],
    dtype: DType,
) -> Tensor<B, D> {
    // The dtype at creation: a cast after it would first round f64 values to the default f32.
    Tensor::<B, D>::from_data(TensorData::new(values, shape), (&Default::default(), dtype))
}

fn check(what: &str, a: Vec<f64>, b: Vec<f64>, tol: f64) {
    let r = rel(&a, &b);
    assert!(r <= tol, "{what}: rel {r:e} > {tol:e}");
}

const DTYPES: [(DType, f64); 2] = [(DType::F32, 1e-5), (DType::F64, 1e-12)];

fn run_shape<const D: usize>(shape: [usize; D]) {
    let n: usize = shape.iter().product();
    for (dtype, tol) in DTYPES {
        let what = format!("{shape:?} {dtype:?}");
        let x = tensor_of::<Flex, D>(inputs(n, dtype), shape, dtype);
        let fused = flux_gelu_tanh(x.clone());
        assert_eq!(fused.dims(), shape, "{what}");
        assert_eq!(fused.dtype(), dtype, "{what}");
        check(
            &format!("{what} forward"),
            values(fused),
            values(composite::gelu_tanh(x.clone())),
            tol,
        );

        // A tensor no one else holds: the kernel writes over its buffer.
        let owned = tensor_of::<Flex, D>(inputs(n, dtype), shape, dtype);
        check(
            &format!("{what} forward in place"),
            values(flux_gelu_tanh(owned)),
            values(composite::gelu_tanh(x.clone())),
            tol,
        );
        // A view of a buffer someone else holds: it must not be written over.
        let wide = tensor_of::<Flex, 1>(inputs(n + 3, dtype), [n + 3], dtype);
        let view = wide.clone().narrow(0, 0, n);
        let before = values(wide.clone());
        check(
            &format!("{what} forward of a view"),
            values(flux_gelu_tanh(view.clone())),
            values(composite::gelu_tanh(view)),
            tol,
        );
        assert_eq!(
            values(wide),
            before,
            "{what}: the view's buffer was written"
        );

        let grad = tensor_of::<Flex, D>(
            inputs(n, dtype).iter().map(|v| v.sin()).collect(),
            shape,
            dtype,
        );
        let kernel = <Flex as FluxOps>::flux_gelu_tanh_bwd(prim(x.clone()), prim(grad.clone()));
        let reference = composite::gelu_tanh_backward::<Flex>(prim(x.clone()), prim(grad.clone()));
        let (kernel, reference) = (tensor::<Flex, D>(kernel), tensor::<Flex, D>(reference));
        assert_eq!(kernel.dims(), shape, "{what} backward shape");
        let kernel = values(kernel);
        assert!(
            kernel.iter().all(|g| g.is_finite()),
            "{what}: non-finite gradient"
        );
        check(
            &format!("{what} backward kernel"),
            kernel,
            values(reference),
            tol,
        );

        let fused = loss_and_grad::<AB, D>(x.clone(), grad.clone(), true);
        let differentiated = loss_and_grad::<AB, D>(x, grad, false);
        check(&format!("{what} autodiff"), fused, differentiated, tol);
    }
}

/// The gradient of Σ gelu(x) ∘ w, through the fused node or the differentiated composite.
fn loss_and_grad<B: AutodiffBackend + FluxOps, const D: usize>(
    x: Tensor<B::InnerBackend, D>,
    w: Tensor<B::InnerBackend, D>,
    fused: bool,
) -> Vec<f64> {
    let x = Tensor::<B, D>::from_inner(x).require_grad();
    let out = if fused {
        flux_gelu_tanh(x.clone())
    } else {
        composite::gelu_tanh(x.clone())
    };
    let grads = (out * Tensor::from_inner(w)).sum().backward();
    values(x.grad(&grads).expect("x is tracked"))
}

#[test]
fn gelu_kernels_match_the_composite_forward_backward_and_under_autodiff() {
    for shape in SHAPES {
        match *shape {
            [a] => run_shape([a]),
            [a, b] => run_shape([a, b]),
            [a, b, c] => run_shape([a, b, c]),
            [a, b, c, d] => run_shape([a, b, c, d]),
            _ => unreachable!(),
        }
    }
}

#[test]
fn gelu_gradient_matches_central_differences_in_f64() {
    let n = 257;
    let x = tensor_of::<Flex, 1>(inputs(n, DType::F64), [n], DType::F64);
    let w = tensor_of::<Flex, 1>(
        (0..n).map(|i| (i as f64 * 0.37).cos()).collect(),
        [n],
        DType::F64,
    );
    let analytic = loss_and_grad::<AB, 1>(x.clone(), w.clone(), true);
    let loss = |x: Tensor<Flex, 1>| values((flux_gelu_tanh(x) * w.clone()).sum())[0];
    let h = 1e-5;
    let xs = values(x.clone());
    for i in (0..n).step_by(16) {
        let nudged = |sign: f64| {
            let mut v = xs.clone();
            v[i] += sign * h;
            tensor_of::<Flex, 1>(v, [n], DType::F64)
        };
        let numeric = (loss(nudged(1.0)) - loss(nudged(-1.0))) / (2.0 * h);
        let err = (numeric - analytic[i]).abs();
        assert!(
            err <= 1e-7 * analytic[i].abs().max(1.0),
            "x = {}: numeric {numeric} vs analytic {}",
            xs[i],
            analytic[i]
        );
    }
}

#[test]
fn half_inputs_run_the_f32_kernel() {
    let n = 300;
    let x = tensor_of::<Flex, 1>(inputs(n, DType::F32), [n], DType::F32);
    let half = flux_gelu_tanh(x.clone().cast(DType::BF16));
    assert_eq!(half.dtype(), DType::BF16);
    let reference = values(flux_gelu_tanh(x.cast(DType::BF16).cast(DType::F32)));
    check("bf16", values(half), reference, 1e-2);
}
