//! The fused attention of `FluxOps` on Flex against the composite (burn's attention, and the
//! composite backward), under Autodiff against burn's differentiated fallback, and against
//! finite differences in f64. Shapes cover T below, at and past the forward's 256-row query and
//! key blocks and the backward's 128-row tiles (several of each, with a ragged last one), and odd D.

use burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing;
use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use burn::tensor::DType;
use premier_mmdit::fused::{composite, flux_attention};
use premier_mmdit::FluxOps;

mod common;
use common::{
    assert_attention_gradients_match_finite_differences,
    attention_loss_and_grads as loss_and_grads, attention_qkv as qkv, attention_weights as weights,
    prim, random, rel, tensor, values,
};

type AB = Autodiff<Flex>;

const SHAPES: [[usize; 4]; 10] = [
    [1, 1, 1, 1],
    [2, 3, 7, 5],
    [1, 2, 63, 16],
    [1, 2, 64, 16],
    [2, 2, 65, 8],
    [1, 1, 130, 3],
    [1, 3, 200, 32],
    [1, 1, 256, 4],
    [1, 2, 300, 16],
    [1, 1, 520, 5],
];

fn scale_of(shape: [usize; 4]) -> f64 {
    1.0 / (shape[3] as f64).sqrt()
}

#[test]
fn forward_matches_burns_attention_in_f32_and_f64() {
    let mut shapes = SHAPES.to_vec();
    // The benchmark's shape: burn-flex's own flash branch (T² above its naive budget).
    shapes.push([1, 8, 1088, 64]);
    for shape in shapes {
        for (dtype, tol) in [(DType::F32, 1e-5), (DType::F64, 1e-12)] {
            let [q, k, v] = qkv::<Flex>(shape, dtype, 1);
            let scale = scale_of(shape);
            let fused = <Flex as FluxOps>::flux_attention(
                prim(q.clone()),
                prim(k.clone()),
                prim(v.clone()),
                scale,
            );
            let fused = tensor::<Flex, 3>(fused);
            assert_eq!(fused.dtype(), dtype);
            let reference = tensor::<Flex, 3>(composite::attention::<Flex>(
                prim(q),
                prim(k),
                prim(v),
                scale,
            ));
            let r = rel(&values(fused), &values(reference));
            assert!(r <= tol, "{shape:?} {dtype:?}: rel {r:e}");
        }
    }
}

#[test]
fn lse_matches_the_composite_and_large_logits_stay_finite() {
    for shape in SHAPES {
        for (dtype, tol) in [(DType::F32, 1e-5), (DType::F64, 1e-12)] {
            let [q, k, v] = qkv::<Flex>(shape, dtype, 2);
            // Scores of tens: a naive exp would overflow f32.
            let q = q * 30.0;
            let scale = scale_of(shape);
            let (out, lse) = <Flex as FluxOps>::flux_attention_fwd(
                prim(q.clone()),
                prim(k.clone()),
                prim(v.clone()),
                scale,
            );
            let (out_ref, lse_ref) =
                composite::attention_with_lse::<Flex>(prim(q), prim(k), prim(v), scale);
            let (out, out_ref) = (
                values(tensor::<Flex, 3>(out)),
                values(tensor::<Flex, 3>(out_ref)),
            );
            assert!(out.iter().all(|x| x.is_finite()), "{shape:?}");
            let r = rel(&out, &out_ref);
            assert!(r <= tol, "{shape:?} {dtype:?} out: rel {r:e}");
            let r = rel(
                &values(tensor::<Flex, 3>(lse)),
                &values(tensor::<Flex, 3>(lse_ref)),
            );
            assert!(r <= tol, "{shape:?} {dtype:?} lse: rel {r:e}");
        }
    }
}

#[test]
fn backward_kernel_matches_the_composite_backward() {
    for shape in SHAPES {
        for (dtype, tol) in [(DType::F32, 1e-4), (DType::F64, 1e-10)] {
            let [q, k, v] = qkv::<Flex>(shape, dtype, 3);
            let [b, h, n, d] = shape;
            let grad_out = random::<Flex, 4>([b, n, h, d], dtype, 99).reshape([b, n, h * d]);
            let scale = scale_of(shape);
            let (out, lse) = composite::attention_with_lse::<Flex>(
                prim(q.clone()),
                prim(k.clone()),
                prim(v.clone()),
                scale,
            );
            let args = || {
                (
                    prim(q.clone()),
                    prim(k.clone()),
                    prim(v.clone()),
                    out.clone(),
                    lse.clone(),
                    prim(grad_out.clone()),
                )
            };
            let (q1, k1, v1, o1, l1, g1) = args();
            let fused = <Flex as FluxOps>::flux_attention_bwd(q1, k1, v1, o1, l1, g1, scale);
            let (q2, k2, v2, o2, l2, g2) = args();
            let reference = composite::attention_backward::<Flex>(q2, k2, v2, o2, l2, g2, scale);
            for (name, a, b) in [
                ("dq", fused.0, reference.0),
                ("dk", fused.1, reference.1),
                ("dv", fused.2, reference.2),
            ] {
                let r = rel(&values(tensor::<Flex, 4>(a)), &values(tensor::<Flex, 4>(b)));
                assert!(r <= tol, "{shape:?} {dtype:?} {name}: rel {r:e}");
            }
        }
    }
}

#[test]
fn gradients_match_burns_differentiated_attention() {
    assert!(<AB as FluxOps>::FUSED_ATTENTION);
    for shape in SHAPES {
        for (dtype, tol) in [(DType::F32, 1e-4), (DType::F64, 1e-10)] {
            let inputs = qkv::<Flex>(shape, dtype, 4);
            let w = weights(shape, dtype);
            for tracked in [
                [true; 3],
                [false, false, true],
                [true, false, false],
                [false, true, false],
            ] {
                let (_, fused) = loss_and_grads::<AB>(inputs.clone(), w.clone(), tracked, true);
                let (_, reference) =
                    loss_and_grads::<AB>(inputs.clone(), w.clone(), tracked, false);
                for (i, (a, b)) in fused.iter().zip(&reference).enumerate() {
                    assert_eq!(a.is_some(), tracked[i], "{shape:?} input {i}");
                    if let (Some(a), Some(b)) = (a, b) {
                        let r = rel(a, b);
                        assert!(
                            r <= tol,
                            "{shape:?} {dtype:?} {tracked:?} input {i}: rel {r:e}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn gradients_match_finite_differences_in_f64() {
    for shape in [[2, 3, 7, 5], [2, 2, 65, 8], [1, 1, 130, 3], [1, 1, 300, 3]] {
        let inputs = qkv::<Flex>(shape, DType::F64, 5);
        let w = weights(shape, DType::F64);
        let (_, grads) = loss_and_grads::<AB>(inputs.clone(), w.clone(), [true; 3], true);
        assert_attention_gradients_match_finite_differences(&inputs, &grads, |x| {
            let out = flux_attention(x[0].clone(), x[1].clone(), x[2].clone());
            values((out * w.clone()).sum())[0]
        });
    }
}

#[test]
fn untracked_inputs_run_the_plain_kernel_bit_for_bit() {
    let shape = [2, 2, 65, 8];
    let [q, k, v] = qkv::<Flex>(shape, DType::F32, 6);
    let plain = values(flux_attention(q.clone(), k.clone(), v.clone()));
    let lifted = flux_attention::<AB>(
        Tensor::from_inner(q),
        Tensor::from_inner(k),
        Tensor::from_inner(v),
    );
    assert_eq!(values(lifted.inner()), plain);
}

#[test]
fn checkpointing_strategies_give_the_same_gradients() {
    type Balanced = Autodiff<Flex, BalancedCheckpointing>;
    let shape = [2, 2, 65, 8];
    let inputs = qkv::<Flex>(shape, DType::F32, 8);
    let w = weights(shape, DType::F32);
    // A memory-bound op before the attention, so the balanced strategy recomputes it.
    let run = |balanced: bool| {
        let pre = inputs.clone().map(|x| x * 1.5 + 0.1);
        if balanced {
            loss_and_grads::<Balanced>(pre, w.clone(), [true; 3], true).1
        } else {
            loss_and_grads::<AB>(pre, w.clone(), [true; 3], true).1
        }
    };
    assert_eq!(run(true), run(false));
}

#[test]
fn deterministic_across_runs() {
    let shape = [1, 3, 200, 32];
    let inputs = qkv::<Flex>(shape, DType::F32, 9);
    let w = weights(shape, DType::F32);
    let first = loss_and_grads::<AB>(inputs.clone(), w.clone(), [true; 3], true);
    let second = loss_and_grads::<AB>(inputs, w, [true; 3], true);
    assert_eq!(first, second);
}

#[test]
fn half_precision_is_computed_in_f32() {
    let shape = [1, 2, 65, 16];
    let [q, k, v] = qkv::<Flex>(shape, DType::F32, 10);
    let full = values(flux_attention(q.clone(), k.clone(), v.clone()));
    let half = flux_attention(
        q.cast(DType::BF16),
        k.cast(DType::BF16),
        v.cast(DType::BF16),
    );
    assert_eq!(half.dtype(), DType::BF16);
    let r = rel(&values(half), &full);
    assert!(r <= 2e-2, "rel {r:e}");
}

/// The composite (the GPU backends' attention) computes bf16 inputs in f32 like the kernel:
/// the same bits as the f32 composite on the widened inputs, the output and gradients rounded
/// to bf16, the log-sum-exp kept in f32 (rounded, it would scale every recomputed probability
/// row by up to e^±0.06 in the backward).
#[test]
fn the_composite_computes_half_precision_in_f32() {
    let shape = [1, 2, 65, 16];
    let scale = scale_of(shape);
    let half = qkv::<Flex>(shape, DType::F32, 14).map(|x| x.cast(DType::BF16));
    let wide = half.clone().map(|x| x.cast(DType::F32));
    let g = weights(shape, DType::BF16);
    let run = |[q, k, v]: [Tensor<Flex, 4>; 3], g: Tensor<Flex, 3>| {
        let (out, lse) = composite::attention_with_lse::<Flex>(
            prim(q.clone()),
            prim(k.clone()),
            prim(v.clone()),
            scale,
        );
        let grads = composite::attention_backward::<Flex>(
            prim(q),
            prim(k),
            prim(v),
            out.clone(),
            lse.clone(),
            prim(g),
            scale,
        );
        (
            tensor::<Flex, 3>(out),
            tensor::<Flex, 3>(lse),
            [grads.0, grads.1, grads.2].map(tensor::<Flex, 4>),
        )
    };
    let (out_h, lse_h, grads_h) = run(half, g.clone());
    // The reference backward takes the rounded output, as the node saves it.
    let (out_w, lse_w, _) = run(wide.clone(), g.clone().cast(DType::F32));
    assert_eq!(out_h.dtype(), DType::BF16);
    assert_eq!(lse_h.dtype(), DType::F32);
    assert_eq!(values(out_h.clone()), values(out_w.cast(DType::BF16)));
    assert_eq!(values(lse_h.clone()), values(lse_w));
    let [q, k, v] = wide;
    let reference = composite::attention_backward::<Flex>(
        prim(q),
        prim(k),
        prim(v),
        prim(out_h.cast(DType::F32)),
        prim(lse_h),
        prim(g.cast(DType::F32)),
        scale,
    );
    let reference = [reference.0, reference.1, reference.2].map(tensor::<Flex, 4>);
    for (h, w) in grads_h.into_iter().zip(reference) {
        assert_eq!(h.dtype(), DType::BF16);
        assert_eq!(values(h), values(w.cast(DType::BF16)));
    }
}
