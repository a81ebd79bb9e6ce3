//! The fused q/k/v split of `FluxOps` on Flex against its composite (a pure copy, so exactly),
//! forward, the backward kernel, and gradients under Autodiff; and a central-difference check in
//! f64. Shapes: one head, odd widths, batch 3, tokens past one task.

use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{DType, Distribution};
use premier_mmdit::fused::{composite, flux_qkv_part};
use premier_mmdit::FluxOps;

mod common;
use common::{prim, tensor, values};

type AB = Autodiff<Flex>;

/// (batch, tokens, heads, head dim).
const SHAPES: [[usize; 4]; 4] = [[1, 1, 1, 1], [3, 7, 2, 5], [2, 65, 3, 8], [1, 130, 1, 64]];

fn random<Bk: Backend, const D: usize>(
    shape: [usize; D],
    dtype: DType,
    seed: u64,
) -> Tensor<Bk, D> {
    let device = Default::default();
    Bk::seed(&device, seed);
    Tensor::<Bk, D>::random(shape, Distribution::Normal(0.0, 1.0), &device).cast(dtype)
}

/// Σ over the three parts of Σ part ∘ w_part, and the gradient of qkv.
fn loss_and_grad<Bk: AutodiffBackend + FluxOps>(
    qkv: Tensor<Bk::InnerBackend, 3>,
    weights: &[Tensor<Bk::InnerBackend, 4>; 3],
    heads: usize,
    fused: bool,
) -> (f64, Vec<f64>) {
    let qkv = Tensor::<Bk, 3>::from_inner(qkv).require_grad();
    let mut loss = None;
    for (part, w) in weights.iter().enumerate() {
        let x = if fused {
            flux_qkv_part(qkv.clone(), heads, part)
        } else {
            tensor::<Bk, 4>(composite::qkv_part::<Bk>(prim(qkv.clone()), heads, part))
        };
        let term = (x * Tensor::from_inner(w.clone())).sum();
        loss = Some(match loss {
            None => term,
            Some(l) => l + term,
        });
    }
    let loss = loss.expect("three parts");
    let value = values(loss.clone().inner())[0];
    let grads = loss.backward();
    (value, values(qkv.grad(&grads).expect("qkv is tracked")))
}

#[test]
fn the_split_and_its_gradient_are_exactly_the_composites() {
    for [b, t, h, d] in SHAPES {
        for dtype in [DType::F32, DType::F64, DType::BF16] {
            let what = format!("{:?} {dtype:?}", [b, t, h, d]);
            let qkv = random::<Flex, 3>([b, t, 3 * h * d], dtype, 1);
            for part in 0..3 {
                let fused =
                    tensor::<Flex, 4>(<Flex as FluxOps>::flux_qkv_part(prim(qkv.clone()), h, part));
                let reference =
                    tensor::<Flex, 4>(composite::qkv_part::<Flex>(prim(qkv.clone()), h, part));
                assert_eq!(fused.dims(), [b, h, t, d], "{what}");
                assert_eq!(fused.dtype(), dtype, "{what}");
                assert_eq!(values(fused), values(reference), "{what} part {part}");

                let grad = random::<Flex, 4>([b, h, t, d], dtype, 2 + part as u64);
                let kernel = tensor::<Flex, 3>(<Flex as FluxOps>::flux_qkv_part_bwd(
                    prim(grad.clone()),
                    part,
                ));
                let reference =
                    tensor::<Flex, 3>(composite::qkv_part_backward::<Flex>(prim(grad), part));
                assert_eq!(kernel.dims(), [b, t, 3 * h * d], "{what}");
                assert_eq!(
                    values(kernel),
                    values(reference),
                    "{what} part {part} backward"
                );
            }
            if dtype != DType::BF16 {
                let weights = [5, 6, 7].map(|s| random::<Flex, 4>([b, h, t, d], dtype, s));
                let fused = loss_and_grad::<AB>(qkv.clone(), &weights, h, true);
                let reference = loss_and_grad::<AB>(qkv, &weights, h, false);
                assert_eq!(fused, reference, "{what} autodiff");
            }
        }
    }
}

#[test]
fn the_split_gradient_matches_central_differences_in_f64() {
    let [b, t, h, d] = [2, 9, 2, 3];
    let qkv = random::<Flex, 3>([b, t, 3 * h * d], DType::F64, 8);
    let weights = [9, 10, 11].map(|s| random::<Flex, 4>([b, h, t, d], DType::F64, s));
    let (_, analytic) = loss_and_grad::<AB>(qkv.clone(), &weights, h, true);
    let direction = random::<Flex, 3>([b, t, 3 * h * d], DType::F64, 12);
    let step = 1e-3;
    let at = |sign: f64| {
        loss_and_grad::<AB>(
            qkv.clone() + direction.clone() * (sign * step),
            &weights,
            h,
            true,
        )
        .0
    };
    let numeric = (at(1.0) - at(-1.0)) / (2.0 * step);
    let along: f64 = analytic
        .iter()
        .zip(values(direction))
        .map(|(g, v)| g * v)
        .sum();
    assert!(
        (numeric - along).abs() <= 1e-9 * along.abs().max(1.0),
        "{numeric} vs {along}"
    );
}
