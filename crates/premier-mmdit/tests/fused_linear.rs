//! The fused linear layer of `FluxOps` on Flex against burn's `linear` (forward, the input- and
//! weight-gradient kernels, and the gradients of x, weight and bias under Autodiff, also with a
//! frozen weight), and against central differences in f64. Shapes: one feature, odd widths, batch
//! 3, rank 2 and 3, and weights stored transposed (as a view of PyTorch's `[out, in]`).

use burn::backend::{Autodiff, Flex};
use burn::module::Param;
use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ops::ModuleOps;
use burn::tensor::DType;
use premier_mmdit::fused::flux_linear;
use premier_mmdit::FluxOps;

mod common;
use common::{prim, random, rel, tensor, values};

type AB = Autodiff<Flex>;

/// (x's leading dims, K, N).
/// The last is big enough for the multithreaded gemm.
const SHAPES: [(&[usize], usize, usize); 6] = [
    (&[1, 1], 1, 1),
    (&[3, 7], 5, 9),
    (&[2, 65], 33, 130),
    (&[1, 130], 64, 200),
    (&[17], 48, 3),
    (&[2, 300], 128, 192),
];

/// x `[lead…, K]`, rank 3 (a lead `[T]` gets a batch of 1).
fn input<B: Backend>(lead: &[usize], k: usize, dtype: DType, seed: u64) -> Tensor<B, 3> {
    match *lead {
        [b, t] => random::<B, 3>([b, t, k], dtype, seed),
        [t] => random::<B, 3>([1, t, k], dtype, seed),
        _ => unreachable!("leading dims of SHAPES"),
    }
}

/// A `[K, N]` weight, contiguous or as the transposed view of an `[N, K]` one.
fn weight<B: Backend>(
    k: usize,
    n: usize,
    dtype: DType,
    transposed: bool,
    seed: u64,
) -> Tensor<B, 2> {
    if transposed {
        random::<B, 2>([n, k], dtype, seed).swap_dims(0, 1)
    } else {
        random::<B, 2>([k, n], dtype, seed)
    }
}

fn check(what: &str, a: Vec<f64>, b: Vec<f64>, tol: f64) {
    let r = rel(&a, &b);
    assert!(r <= tol, "{what}: rel {r:e} > {tol:e}");
}

#[test]
fn forward_and_gradient_kernels_match_burns_linear() {
    for (lead, k, n) in SHAPES {
        for (dtype, tol) in [(DType::F32, 1e-6), (DType::F64, 1e-14)] {
            for transposed in [false, true] {
                let what = format!("{lead:?} K {k} N {n} {dtype:?} transposed {transposed}");
                let x = input::<Flex>(lead, k, dtype, 1);
                let w = weight::<Flex>(k, n, dtype, transposed, 2);
                let b = random::<Flex, 1>([n], dtype, 3);
                let fused = tensor::<Flex, 3>(<Flex as FluxOps>::flux_linear(
                    prim(x.clone()),
                    prim(w.clone()),
                    Some(prim(b.clone())),
                ));
                let reference = tensor::<Flex, 3>(<Flex as ModuleOps<Flex>>::linear(
                    prim(x.clone()),
                    prim(w.clone()),
                    Some(prim(b.clone())),
                ));
                assert_eq!(fused.dims(), reference.dims(), "{what}");
                assert_eq!(fused.dtype(), dtype, "{what}");
                check(&what, values(fused), values(reference), tol);

                let no_bias = tensor::<Flex, 3>(<Flex as FluxOps>::flux_linear(
                    prim(x.clone()),
                    prim(w.clone()),
                    None,
                ));
                let reference = x.clone().matmul(w.clone().unsqueeze_dim(0));
                check(
                    &format!("{what} no bias"),
                    values(no_bias),
                    values(reference),
                    tol,
                );

                let grad = random::<Flex, 3>([x.dims()[0], x.dims()[1], n], dtype, 4);
                let kernel = tensor::<Flex, 3>(<Flex as FluxOps>::flux_linear_x_bwd(
                    prim(w.clone()),
                    prim(grad.clone()),
                ));
                let reference = tensor::<Flex, 3>(<Flex as ModuleOps<Flex>>::linear_x_backward(
                    prim(w),
                    prim(grad.clone()),
                ));
                assert_eq!(kernel.dims(), x.dims(), "{what} backward");
                check(
                    &format!("{what} backward"),
                    values(kernel),
                    values(reference),
                    tol,
                );

                // The weight gradient, from x as it is and as a strided view.
                let [batch, tokens, _] = x.dims();
                let x_strided = random::<Flex, 3>([batch, k, tokens], dtype, 5).swap_dims(1, 2);
                for (layout, x) in [("contiguous", x.clone()), ("strided", x_strided)] {
                    let kernel = tensor::<Flex, 2>(<Flex as FluxOps>::flux_linear_weight_bwd(
                        prim(x.clone()),
                        prim(grad.clone()),
                    ));
                    let reference =
                        tensor::<Flex, 2>(<Flex as ModuleOps<Flex>>::linear_weight_backward(
                            prim(x),
                            prim(grad.clone()),
                        ));
                    assert_eq!(kernel.dims(), [k, n], "{what} weight backward");
                    check(
                        &format!("{what} weight backward, {layout} x"),
                        values(kernel),
                        values(reference),
                        tol,
                    );
                }
            }
        }
    }
}

#[test]
fn rank_two_inputs_keep_their_rank() {
    let x = random::<Flex, 2>([5, 7], DType::F32, 5);
    let w = weight::<Flex>(7, 4, DType::F32, false, 6);
    let b = random::<Flex, 1>([4], DType::F32, 7);
    let linear = Linear {
        weight: Param::from_tensor(w.clone()),
        bias: Some(Param::from_tensor(b.clone())),
    };
    let fused = flux_linear(&linear, x.clone());
    assert_eq!(fused.dims(), [5, 4]);
    check(
        "rank 2",
        values(fused),
        values(x.matmul(w) + b.unsqueeze()),
        1e-6,
    );
}

/// The operands of one gradient check.
#[derive(Clone)]
struct Operands<B: Backend> {
    x: Tensor<B, 3>,
    weight: Tensor<B, 2>,
    bias: Tensor<B, 1>,
    /// The loss is Σ linear(x) ∘ probe.
    probe: Tensor<B, 3>,
}

fn operands(lead: &[usize], k: usize, n: usize, dtype: DType, transposed: bool) -> Operands<Flex> {
    let x = input::<Flex>(lead, k, dtype, 8);
    let [bs, t] = [x.dims()[0], x.dims()[1]];
    Operands {
        x,
        weight: weight::<Flex>(k, n, dtype, transposed, 9),
        bias: random::<Flex, 1>([n], dtype, 10),
        probe: random::<Flex, 3>([bs, t, n], dtype, 11),
    }
}

/// Σ linear(x) ∘ probe and the gradients of (x, weight, bias); the weight is tracked only when
/// `train_weight` (a frozen FLUX layer otherwise), the bias is left out unless `with_bias`.
fn loss_and_grads<B: AutodiffBackend + FluxOps>(
    ops: Operands<B::InnerBackend>,
    train_weight: bool,
    with_bias: bool,
    fused: bool,
) -> (f64, [Option<Vec<f64>>; 3]) {
    let x = Tensor::<B, 3>::from_inner(ops.x).require_grad();
    let w = Tensor::<B, 2>::from_inner(ops.weight);
    let w = if train_weight { w.require_grad() } else { w };
    let b = Tensor::<B, 1>::from_inner(ops.bias).require_grad();
    let bias = with_bias.then(|| b.clone());
    let out = if fused {
        tensor::<B, 3>(B::flux_linear(
            prim(x.clone()),
            prim(w.clone()),
            bias.map(prim),
        ))
    } else {
        burn::tensor::module::linear(x.clone(), w.clone(), bias)
    };
    let loss = (out * Tensor::from_inner(ops.probe)).sum();
    let value = values(loss.clone().inner())[0];
    let grads = loss.backward();
    (
        value,
        [
            x.grad(&grads).map(values),
            w.grad(&grads).map(values),
            b.grad(&grads).map(values),
        ],
    )
}

#[test]
fn gradients_match_burns_differentiated_linear() {
    for (lead, k, n) in SHAPES {
        for (dtype, tol) in [(DType::F32, 1e-6), (DType::F64, 1e-14)] {
            for (transposed, train_weight, with_bias) in [
                (false, true, true),
                (true, true, true),
                (true, false, true),
                (false, true, false),
                (true, false, false),
            ] {
                let what = format!(
                    "{lead:?} K {k} N {n} {dtype:?} transposed {transposed} bias {with_bias}"
                );
                let ops = operands(lead, k, n, dtype, transposed);
                let (fused_loss, fused) =
                    loss_and_grads::<AB>(ops.clone(), train_weight, with_bias, true);
                let (loss, reference) = loss_and_grads::<AB>(ops, train_weight, with_bias, false);
                check(&format!("{what} loss"), vec![fused_loss], vec![loss], tol);
                let names = ["x", "weight", "bias"];
                for (name, (a, b)) in names.iter().zip(fused.into_iter().zip(reference)) {
                    match (a, b) {
                        (Some(a), Some(b)) => check(&format!("{what} d{name}"), a, b, tol),
                        (None, None) => assert!(
                            (!train_weight && *name == "weight") || (!with_bias && *name == "bias"),
                            "{what} d{name}"
                        ),
                        (a, b) => panic!(
                            "{what} d{name}: fused {} vs burn {}",
                            a.is_some(),
                            b.is_some()
                        ),
                    }
                }
            }
        }
    }
}

#[test]
fn gradients_match_central_differences_in_f64() {
    let ops = operands(&[2, 9], 6, 5, DType::F64, true);
    let (_, grads) = loss_and_grads::<AB>(ops.clone(), true, true, true);
    let step = 1e-3;
    for (i, grad) in grads.into_iter().enumerate() {
        let grad = grad.expect("all three are tracked");
        let seed = 20 + i as u64;
        // A random direction in operand i, and the operands moved along it by ±step.
        let (direction, shifted): (Vec<f64>, Box<dyn Fn(f64) -> Operands<Flex>>) = match i {
            0 => {
                let d = random::<Flex, 3>(ops.x.dims(), DType::F64, seed);
                let o = ops.clone();
                (
                    values(d.clone()),
                    Box::new(move |h| Operands {
                        x: o.x.clone() + d.clone() * h,
                        ..o.clone()
                    }),
                )
            }
            1 => {
                let d = random::<Flex, 2>(ops.weight.dims(), DType::F64, seed);
                let o = ops.clone();
                (
                    values(d.clone()),
                    Box::new(move |h| Operands {
                        weight: o.weight.clone() + d.clone() * h,
                        ..o.clone()
                    }),
                )
            }
            _ => {
                let d = random::<Flex, 1>(ops.bias.dims(), DType::F64, seed);
                let o = ops.clone();
                (
                    values(d.clone()),
                    Box::new(move |h| Operands {
                        bias: o.bias.clone() + d.clone() * h,
                        ..o.clone()
                    }),
                )
            }
        };
        let at = |sign: f64| loss_and_grads::<AB>(shifted(sign * step), true, true, true).0;
        let numeric = (at(1.0) - at(-1.0)) / (2.0 * step);
        let along: f64 = grad.iter().zip(&direction).map(|(g, v)| g * v).sum();
        assert!(
            (numeric - along).abs() <= 1e-9 * along.abs().max(1.0),
            "operand {i}: {numeric} vs {along}"
        );
    }
}

#[test]
fn half_weights_run_burns_linear() {
    let x = input::<Flex>(&[2, 5], 8, DType::BF16, 12);
    let w = weight::<Flex>(8, 3, DType::BF16, true, 13);
    let b = random::<Flex, 1>([3], DType::BF16, 14);
    let fused = tensor::<Flex, 3>(<Flex as FluxOps>::flux_linear(
        prim(x.clone()),
        prim(w.clone()),
        Some(prim(b.clone())),
    ));
    let reference = tensor::<Flex, 3>(<Flex as ModuleOps<Flex>>::linear(
        prim(x),
        prim(w),
        Some(prim(b)),
    ));
    assert_eq!(fused.dtype(), DType::BF16);
    assert_eq!(values(fused), values(reference));
}
