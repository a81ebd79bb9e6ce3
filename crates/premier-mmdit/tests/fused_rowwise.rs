//! The fused LayerNorm-modulation, gated residual and QK-norm with RoPE of `FluxOps` on Flex
//! against their composites (forward, the backward kernels, gradients under Autodiff against the
//! differentiated composite) and against finite differences in f64. Shapes cover a shared
//! (`[B, 1, D]`) and a per-token (`[B, T, D]`) modulation, T past one 64-row task, odd D, batch 3,
//! one head, and rotation tables that are a strided slice of longer ones.

use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::DType;
use premier_mmdit::embed::Rope;
use premier_mmdit::fused::{composite, flux_gated_residual, flux_modulate, flux_rms_norm_rope};
use premier_mmdit::FluxOps;

mod common;
use common::{prim, random, rel, tensor, values};

type AB = Autodiff<Flex>;

const EPS: f64 = 1e-6;

/// (x `[B, T, D]`, modulation rows S ∈ {1, T}).
const MODULATE: [([usize; 3], usize); 6] = [
    ([1, 1, 1], 1),
    ([2, 7, 5], 1),
    ([2, 7, 5], 7),
    ([3, 65, 16], 1),
    ([2, 130, 3], 130),
    ([1, 200, 64], 1),
];

/// x `[B, H, T, D]` of the QK-norm with RoPE (D even: channel pairs rotate).
const RMS: [[usize; 4]; 5] = [
    [1, 1, 1, 2],
    [2, 3, 7, 6],
    [2, 2, 65, 8],
    [3, 1, 70, 4],
    [1, 4, 130, 16],
];

/// x with a per-row offset and spread, as real activations have: LayerNorm's mean and scale matter.
fn activations<B: Backend>(shape: [usize; 3], dtype: DType, seed: u64) -> Tensor<B, 3> {
    let [b, t, _] = shape;
    random::<B, 3>(shape, dtype, seed) * random::<B, 3>([b, t, 1], dtype, seed + 1).exp()
        + random::<B, 3>([b, t, 1], dtype, seed + 2) * 3.0
}

fn modulation<B: Backend>(
    [b, _, d]: [usize; 3],
    s: usize,
    dtype: DType,
    seed: u64,
) -> [Tensor<B, 3>; 2] {
    [0, 1].map(|i| random::<B, 3>([b, s, d], dtype, seed * 2 + i) * 0.5)
}

/// RoPE tables `[B, T, D]` for x `[B, H, T, D]`: random angles in ±3 rad, each twice in a row
/// as `Rope` stores them, sliced out of tables 3 tokens longer (a strided view when B > 1, as a
/// double block's text or image stream uses them).
fn rope_tables<B: Backend>([b, _, t, d]: [usize; 4], dtype: DType, seed: u64) -> Rope<B> {
    let angles = (random::<B, 4>([b, t + 3, d / 2, 1], DType::F64, seed) * 3.0)
        .repeat_dim(3, 2)
        .reshape([b, t + 3, d]);
    Rope {
        cos: angles.clone().cos().cast(dtype),
        sin: angles.sin().cast(dtype),
    }
    .narrow(2, t)
}

fn check(what: &str, a: Vec<f64>, b: Vec<f64>, tol: f64) {
    let r = rel(&a, &b);
    assert!(r <= tol, "{what}: rel {r:e} > {tol:e}");
}

const DTYPES: [(DType, f64); 2] = [(DType::F32, 1e-5), (DType::F64, 1e-12)];

#[test]
fn modulate_forward_and_backward_kernels_match_the_composites() {
    assert!(<Flex as FluxOps>::FUSED_NORMS);
    for (shape, s) in MODULATE {
        for (dtype, tol) in DTYPES {
            let x = activations::<Flex>(shape, dtype, 1);
            let [shift, scale] = modulation::<Flex>(shape, s, dtype, 2);
            let fused = <Flex as FluxOps>::flux_modulate(
                prim(x.clone()),
                prim(shift.clone()),
                prim(scale.clone()),
                EPS,
            );
            let reference =
                composite::modulate::<Flex>(prim(x.clone()), prim(shift), prim(scale.clone()), EPS);
            let what = format!("{shape:?} S={s} {dtype:?}");
            let fused = tensor::<Flex, 3>(fused);
            assert_eq!(fused.dtype(), dtype);
            check(
                &what,
                values(fused),
                values(tensor::<Flex, 3>(reference)),
                tol,
            );

            let grad = random::<Flex, 3>(shape, dtype, 3);
            let (dx, dshift, dscale) = <Flex as FluxOps>::flux_modulate_bwd(
                prim(x.clone()),
                prim(scale.clone()),
                prim(grad.clone()),
                EPS,
            );
            let (rx, rshift, rscale) =
                composite::modulate_backward::<Flex>(prim(x), prim(scale), prim(grad), EPS);
            for (name, a, b) in [
                ("dx", dx, rx),
                ("dshift", dshift, rshift),
                ("dscale", dscale, rscale),
            ] {
                let (a, b) = (tensor::<Flex, 3>(a), tensor::<Flex, 3>(b));
                assert_eq!(a.dims(), b.dims(), "{what} {name}");
                check(&format!("{what} {name}"), values(a), values(b), tol);
            }
        }
    }
}

#[test]
fn rms_norm_rope_forward_and_backward_kernels_match_the_composites() {
    for shape in RMS {
        for (dtype, tol) in DTYPES {
            let x = random::<Flex, 4>(shape, dtype, 4) * 2.0;
            let weight = random::<Flex, 1>([shape[3]], dtype, 5);
            let rope = rope_tables::<Flex>(shape, dtype, 26);
            let (cos, sin) = (prim(rope.cos.clone()), prim(rope.sin.clone()));
            let what = format!("{shape:?} {dtype:?}");
            let fused = <Flex as FluxOps>::flux_rms_norm_rope(
                prim(x.clone()),
                prim(weight.clone()),
                cos.clone(),
                sin.clone(),
                EPS,
            );
            let reference = composite::rms_norm_rope::<Flex>(
                prim(x.clone()),
                prim(weight.clone()),
                cos.clone(),
                sin.clone(),
                EPS,
            );
            let fused = tensor::<Flex, 4>(fused);
            assert_eq!(fused.dtype(), dtype);
            check(
                &what,
                values(fused),
                values(tensor::<Flex, 4>(reference)),
                tol,
            );

            let grad = random::<Flex, 4>(shape, dtype, 6);
            let (dx, dw) = <Flex as FluxOps>::flux_rms_norm_rope_bwd(
                prim(x.clone()),
                prim(weight.clone()),
                cos.clone(),
                sin.clone(),
                prim(grad.clone()),
                EPS,
            );
            let (rx, rw) = composite::rms_norm_rope_backward::<Flex>(
                prim(x),
                prim(weight),
                cos,
                sin,
                prim(grad),
                EPS,
            );
            check(
                &format!("{what} dx"),
                values(tensor::<Flex, 4>(dx)),
                values(tensor::<Flex, 4>(rx)),
                tol,
            );
            check(
                &format!("{what} dweight"),
                values(tensor::<Flex, 1>(dw)),
                values(tensor::<Flex, 1>(rw)),
                tol,
            );
        }
    }
}

/// BFL's `apply_rope` written out pair by pair, against the composite every backend defaults to.
#[test]
fn the_rope_composite_is_bfls_pair_rotation() {
    let shape = [2, 3, 5, 6];
    let x = random::<Flex, 4>(shape, DType::F64, 27);
    let rope = rope_tables::<Flex>(shape, DType::F64, 28);
    let rotated = values(tensor::<Flex, 4>(composite::rope::<Flex>(
        prim(x.clone()),
        prim(rope.cos.clone()),
        prim(rope.sin.clone()),
    )));
    let (xs, cos, sin) = (values(x), values(rope.cos), values(rope.sin));
    let [b, h, t, d] = shape;
    for row in 0..b * h * t {
        let table = (row / (h * t)) * t + row % t;
        for k in 0..d / 2 {
            let (even, odd) = (xs[row * d + 2 * k], xs[row * d + 2 * k + 1]);
            let (c, s) = (cos[table * d + 2 * k], sin[table * d + 2 * k]);
            let want = [c * even - s * odd, s * even + c * odd];
            for (i, want) in want.into_iter().enumerate() {
                let got = rotated[row * d + 2 * k + i];
                assert!(
                    (got - want).abs() <= 1e-15,
                    "row {row} pair {k}: {got} vs {want}"
                );
            }
        }
    }
}

/// L = Σ modulate(x, shift, scale) ∘ w, and the gradients of x, shift and scale where tracked.
fn modulate_loss_and_grads<B: AutodiffBackend + FluxOps>(
    [x, shift, scale]: [Tensor<B::InnerBackend, 3>; 3],
    w: Tensor<B::InnerBackend, 3>,
    tracked: [bool; 3],
    fused: bool,
) -> (f64, [Option<Vec<f64>>; 3]) {
    let track = |x: Tensor<B::InnerBackend, 3>, t: bool| {
        let x = Tensor::<B, 3>::from_inner(x);
        if t {
            x.require_grad()
        } else {
            x
        }
    };
    let (x, shift, scale) = (
        track(x, tracked[0]),
        track(shift, tracked[1]),
        track(scale, tracked[2]),
    );
    let out = if fused {
        flux_modulate(x.clone(), shift.clone(), scale.clone(), EPS)
    } else {
        tensor::<B, 3>(composite::modulate::<B>(
            prim(x.clone()),
            prim(shift.clone()),
            prim(scale.clone()),
            EPS,
        ))
    };
    let loss = (out * Tensor::from_inner(w)).sum();
    let value = values(loss.clone().inner())[0];
    let grads = loss.backward();
    let grad = |x: &Tensor<B, 3>| x.grad(&grads).map(values);
    (value, [grad(&x), grad(&shift), grad(&scale)])
}

/// L = Σ rope(rms_norm(x, weight)) ∘ w, and the gradients of x and weight where tracked.
fn rms_loss_and_grads<B: AutodiffBackend + FluxOps>(
    x: Tensor<B::InnerBackend, 4>,
    weight: Tensor<B::InnerBackend, 1>,
    rope: &Rope<B::InnerBackend>,
    w: Tensor<B::InnerBackend, 4>,
    tracked: [bool; 2],
    fused: bool,
) -> (f64, [Option<Vec<f64>>; 2]) {
    let mut x = Tensor::<B, 4>::from_inner(x);
    let mut weight = Tensor::<B, 1>::from_inner(weight);
    if tracked[0] {
        x = x.require_grad();
    }
    if tracked[1] {
        weight = weight.require_grad();
    }
    let rope = Rope::<B> {
        cos: Tensor::from_inner(rope.cos.clone()),
        sin: Tensor::from_inner(rope.sin.clone()),
    };
    let out = if fused {
        flux_rms_norm_rope(x.clone(), weight.clone(), &rope, EPS)
    } else {
        tensor::<B, 4>(composite::rms_norm_rope::<B>(
            prim(x.clone()),
            prim(weight.clone()),
            prim(rope.cos),
            prim(rope.sin),
            EPS,
        ))
    };
    let loss = (out * Tensor::from_inner(w)).sum();
    let value = values(loss.clone().inner())[0];
    let grads = loss.backward();
    (
        value,
        [x.grad(&grads).map(values), weight.grad(&grads).map(values)],
    )
}

#[test]
fn gradients_match_the_differentiated_composites() {
    assert!(<AB as FluxOps>::FUSED_NORMS);
    for (shape, s) in MODULATE {
        for (dtype, tol) in [(DType::F32, 1e-5), (DType::F64, 1e-10)] {
            let x = activations::<Flex>(shape, dtype, 7);
            let [shift, scale] = modulation::<Flex>(shape, s, dtype, 8);
            let w = random::<Flex, 3>(shape, dtype, 9);
            for tracked in [[true; 3], [true, false, false], [false, true, true]] {
                let inputs = [x.clone(), shift.clone(), scale.clone()];
                let (lf, fused) =
                    modulate_loss_and_grads::<AB>(inputs.clone(), w.clone(), tracked, true);
                let (lr, reference) =
                    modulate_loss_and_grads::<AB>(inputs, w.clone(), tracked, false);
                let what = format!("{shape:?} S={s} {dtype:?} {tracked:?}");
                assert!((lf - lr).abs() <= tol * lr.abs().max(1.0), "{what}: loss");
                for (i, (a, b)) in fused.into_iter().zip(reference).enumerate() {
                    assert_eq!(a.is_some(), tracked[i], "{what} input {i}");
                    if let (Some(a), Some(b)) = (a, b) {
                        check(&format!("{what} input {i}"), a, b, tol);
                    }
                }
            }
        }
    }
    for shape in RMS {
        for (dtype, tol) in [(DType::F32, 1e-5), (DType::F64, 1e-10)] {
            let x = random::<Flex, 4>(shape, dtype, 10);
            let weight = random::<Flex, 1>([shape[3]], dtype, 11);
            let rope = rope_tables::<Flex>(shape, dtype, 29);
            let w = random::<Flex, 4>(shape, dtype, 12);
            for tracked in [[true, true], [true, false], [false, true]] {
                let (_, fused) = rms_loss_and_grads::<AB>(
                    x.clone(),
                    weight.clone(),
                    &rope,
                    w.clone(),
                    tracked,
                    true,
                );
                let (_, reference) = rms_loss_and_grads::<AB>(
                    x.clone(),
                    weight.clone(),
                    &rope,
                    w.clone(),
                    tracked,
                    false,
                );
                for (i, (a, b)) in fused.into_iter().zip(reference).enumerate() {
                    assert_eq!(a.is_some(), tracked[i], "{shape:?} input {i}");
                    if let (Some(a), Some(b)) = (a, b) {
                        check(
                            &format!("{shape:?} {dtype:?} {tracked:?} input {i}"),
                            a,
                            b,
                            tol,
                        );
                    }
                }
            }
        }
    }
}

/// (numeric, analytic) directional derivative of `loss` at `inputs` along random directions.
fn directional<const D: usize>(
    inputs: &[Tensor<Flex, D>],
    grads: &[Vec<f64>],
    loss: impl Fn(&[Tensor<Flex, D>]) -> f64,
    seed: u64,
) -> (f64, f64) {
    let h = 1e-5;
    let directions: Vec<Tensor<Flex, D>> = inputs
        .iter()
        .enumerate()
        .map(|(i, x)| random::<Flex, D>(x.dims(), DType::F64, seed + i as u64))
        .collect();
    let step = |sign: f64| -> Vec<Tensor<Flex, D>> {
        inputs
            .iter()
            .zip(&directions)
            .map(|(x, d)| x.clone() + d.clone() * (sign * h))
            .collect()
    };
    let numeric = (loss(&step(1.0)) - loss(&step(-1.0))) / (2.0 * h);
    let analytic = grads
        .iter()
        .zip(&directions)
        .map(|(g, d)| {
            g.iter()
                .zip(values(d.clone()))
                .map(|(a, b)| a * b)
                .sum::<f64>()
        })
        .sum();
    (numeric, analytic)
}

#[test]
fn gradients_match_finite_differences_in_f64() {
    for (shape, s) in [([2, 7, 5], 1), ([2, 7, 5], 7), ([1, 70, 6], 1)] {
        let x = activations::<Flex>(shape, DType::F64, 13);
        let [shift, scale] = modulation::<Flex>(shape, s, DType::F64, 14);
        let w = random::<Flex, 3>(shape, DType::F64, 15);
        let inputs = [x, shift, scale];
        let (_, grads) = modulate_loss_and_grads::<AB>(inputs.clone(), w.clone(), [true; 3], true);
        let grads: Vec<Vec<f64>> = grads.into_iter().map(Option::unwrap).collect();
        let loss = |v: &[Tensor<Flex, 3>]| {
            let out = flux_modulate(v[0].clone(), v[1].clone(), v[2].clone(), EPS);
            values((out * w.clone()).sum())[0]
        };
        let (numeric, analytic) = directional(&inputs, &grads, loss, 60);
        let r = (numeric - analytic).abs() / analytic.abs().max(1e-12);
        assert!(
            r <= 1e-6,
            "modulate {shape:?} S={s}: {numeric} vs {analytic}, rel {r:e}"
        );
    }
    for shape in [[2, 3, 7, 6], [1, 2, 70, 4], [3, 1, 5, 2]] {
        let x = random::<Flex, 4>(shape, DType::F64, 16);
        let weight = random::<Flex, 1>([shape[3]], DType::F64, 17);
        let rope = rope_tables::<Flex>(shape, DType::F64, 30);
        let w = random::<Flex, 4>(shape, DType::F64, 18);
        let (_, [gx, gw]) =
            rms_loss_and_grads::<AB>(x.clone(), weight.clone(), &rope, w.clone(), [true; 2], true);
        let loss_x = |v: &[Tensor<Flex, 4>]| {
            let out = flux_rms_norm_rope(v[0].clone(), weight.clone(), &rope, EPS);
            values((out * w.clone()).sum())[0]
        };
        let (numeric, analytic) = directional(&[x.clone()], &[gx.unwrap()], loss_x, 70);
        let r = (numeric - analytic).abs() / analytic.abs().max(1e-12);
        assert!(
            r <= 1e-6,
            "rms dx {shape:?}: {numeric} vs {analytic}, rel {r:e}"
        );
        let loss_w = |v: &[Tensor<Flex, 1>]| {
            let out = flux_rms_norm_rope(x.clone(), v[0].clone(), &rope, EPS);
            values((out * w.clone()).sum())[0]
        };
        let (numeric, analytic) = directional(&[weight], &[gw.unwrap()], loss_w, 80);
        let r = (numeric - analytic).abs() / analytic.abs().max(1e-12);
        assert!(
            r <= 1e-6,
            "rms dweight {shape:?}: {numeric} vs {analytic}, rel {r:e}"
        );
    }
}

#[test]
fn untracked_and_half_inputs_run_the_plain_kernels() {
    let shape = [2, 65, 8];
    let x = activations::<Flex>(shape, DType::F32, 19);
    let [shift, scale] = modulation::<Flex>(shape, 1, DType::F32, 20);
    let plain = values(flux_modulate(x.clone(), shift.clone(), scale.clone(), EPS));
    let lifted = flux_modulate::<AB>(
        Tensor::from_inner(x.clone()),
        Tensor::from_inner(shift.clone()),
        Tensor::from_inner(scale.clone()),
        EPS,
    );
    assert_eq!(values(lifted.inner()), plain);
    // bf16 in, bf16 out, computed in f32: within bf16's rounding of the f32 result.
    let half = flux_modulate(
        x.clone().cast(DType::BF16),
        shift.clone().cast(DType::BF16),
        scale.clone().cast(DType::BF16),
        EPS,
    );
    assert_eq!(half.dtype(), DType::BF16);
    let reference = values(flux_modulate(
        x.cast(DType::BF16).cast(DType::F32),
        shift.cast(DType::BF16).cast(DType::F32),
        scale.cast(DType::BF16).cast(DType::F32),
        EPS,
    ));
    check("bf16", values(half), reference, 1e-2);
}

/// L = Σ (x + gate · y) ∘ w, and the gradients of x, gate and y where tracked.
fn gated_loss_and_grads<B: AutodiffBackend + FluxOps>(
    inputs: [Tensor<B::InnerBackend, 3>; 3],
    w: Tensor<B::InnerBackend, 3>,
    tracked: [bool; 3],
    fused: bool,
) -> [Option<Vec<f64>>; 3] {
    let [x, gate, y] = inputs.map(Tensor::<B, 3>::from_inner);
    let track = |x: Tensor<B, 3>, t: bool| if t { x.require_grad() } else { x };
    let (x, gate, y) = (
        track(x, tracked[0]),
        track(gate, tracked[1]),
        track(y, tracked[2]),
    );
    let out = if fused {
        flux_gated_residual(x.clone(), gate.clone(), y.clone())
    } else {
        tensor::<B, 3>(composite::gated_residual::<B>(
            prim(x.clone()),
            prim(gate.clone()),
            prim(y.clone()),
        ))
    };
    let grads = (out * Tensor::from_inner(w)).sum().backward();
    let grad = |x: &Tensor<B, 3>| x.grad(&grads).map(values);
    [grad(&x), grad(&gate), grad(&y)]
}

#[test]
fn gated_residual_matches_its_composite_and_finite_differences() {
    for (shape, s) in MODULATE {
        for (dtype, tol) in DTYPES {
            let what = format!("{shape:?} S={s} {dtype:?}");
            let x = random::<Flex, 3>(shape, dtype, 21);
            let [gate, _] = modulation::<Flex>(shape, s, dtype, 22);
            let y = random::<Flex, 3>(shape, dtype, 23);
            let fused = flux_gated_residual(x.clone(), gate.clone(), y.clone());
            let reference = composite::gated_residual::<Flex>(
                prim(x.clone()),
                prim(gate.clone()),
                prim(y.clone()),
            );
            check(
                &what,
                values(fused),
                values(tensor::<Flex, 3>(reference)),
                tol,
            );

            let grad = random::<Flex, 3>(shape, dtype, 24);
            let kernel = <Flex as FluxOps>::flux_gated_residual_bwd(
                prim(gate.clone()),
                prim(y.clone()),
                prim(grad.clone()),
            );
            let composite = composite::gated_residual_backward::<Flex>(
                prim(gate.clone()),
                prim(y.clone()),
                prim(grad),
            );
            for (name, a, b) in [
                ("dx", kernel.0, composite.0),
                ("dgate", kernel.1, composite.1),
                ("dy", kernel.2, composite.2),
            ] {
                let (a, b) = (tensor::<Flex, 3>(a), tensor::<Flex, 3>(b));
                assert_eq!(a.dims(), b.dims(), "{what} {name}");
                check(&format!("{what} {name}"), values(a), values(b), tol);
            }

            let w = random::<Flex, 3>(shape, dtype, 25);
            let inputs = [x, gate, y];
            for tracked in [[true; 3], [false, true, false], [true, false, true]] {
                let fused = gated_loss_and_grads::<AB>(inputs.clone(), w.clone(), tracked, true);
                let reference =
                    gated_loss_and_grads::<AB>(inputs.clone(), w.clone(), tracked, false);
                for (i, (a, b)) in fused.into_iter().zip(reference).enumerate() {
                    assert_eq!(a.is_some(), tracked[i], "{what} input {i}");
                    if let (Some(a), Some(b)) = (a, b) {
                        check(&format!("{what} {tracked:?} input {i}"), a, b, tol);
                    }
                }
            }
            if dtype == DType::F64 {
                let grads = gated_loss_and_grads::<AB>(inputs.clone(), w.clone(), [true; 3], true);
                let grads: Vec<Vec<f64>> = grads.into_iter().map(Option::unwrap).collect();
                let loss = |v: &[Tensor<Flex, 3>]| {
                    let out = flux_gated_residual(v[0].clone(), v[1].clone(), v[2].clone());
                    values((out * w.clone()).sum())[0]
                };
                let (numeric, analytic) = directional(&inputs, &grads, loss, 90);
                let r = (numeric - analytic).abs() / analytic.abs().max(1e-12);
                assert!(r <= 1e-6, "{what}: {numeric} vs {analytic}, rel {r:e}");
            }
        }
    }
}

/// bf16 rounding of an f32 (round to nearest even), as a host reference.
fn bf16(v: f32) -> f32 {
    half::bf16::from_f32(v).to_f32()
}

#[test]
fn half_precision_qk_norm_and_rope_round_where_bfl_does() {
    // BFL: `(x.float() * rrms).to(bf16) * scale` (the scale product rounded in bf16), then
    // `apply_rope` rotates `.float()` copies with f32 tables and rounds back to bf16.
    let shape = [1, 2, 5, 8];
    let x = random::<Flex, 4>(shape, DType::F32, 31).cast(DType::BF16);
    let weight = (random::<Flex, 1>([8], DType::F32, 32) + 1.0).cast(DType::BF16);
    let rope = rope_tables::<Flex>(shape, DType::F32, 33);
    let (x32, weight32) = (x.clone().cast(DType::F32), weight.clone().cast(DType::F32));
    let got = flux_rms_norm_rope(x.clone(), weight.clone(), &rope, EPS);
    assert_eq!(got.dtype(), DType::BF16);
    let composite = tensor::<Flex, 4>(composite::rms_norm_rope::<Flex>(
        prim(x.clone()),
        prim(weight.clone()),
        prim(rope.cos.clone()),
        prim(rope.sin.clone()),
        EPS,
    ));
    let (xs, ws) = (values(x), values(weight));
    let (cos, sin) = (values(rope.cos.clone()), values(rope.sin.clone()));
    let mut want = vec![0.0f64; xs.len()];
    for (r, row) in xs.chunks(8).enumerate() {
        let mean = row.iter().map(|v| (*v as f32) * (*v as f32)).sum::<f32>() / 8.0;
        let rrms = 1.0 / (mean + EPS as f32).sqrt();
        let scaled: Vec<f32> = row
            .iter()
            .zip(&ws)
            .map(|(v, w)| bf16(bf16(*v as f32 * rrms) * *w as f32))
            .collect();
        let token = r % 5;
        for k in 0..4 {
            let (c, s) = (cos[token * 8 + 2 * k] as f32, sin[token * 8 + 2 * k] as f32);
            let (e, o) = (scaled[2 * k], scaled[2 * k + 1]);
            want[r * 8 + 2 * k] = bf16(c * e - s * o) as f64;
            want[r * 8 + 2 * k + 1] = bf16(s * e + c * o) as f64;
        }
    }
    // Bit for bit (these 80 values; the mean of squares is summed in the loop's order here).
    assert_eq!(values(got), want, "the kernel");
    assert_eq!(values(composite), want, "the composite");
    // The check sees the difference: computing all in f32 and rounding once is 5e-3 away.
    let once = flux_rms_norm_rope(x32, weight32, &rope, EPS).cast(DType::BF16);
    assert!(rel(&values(once), &want) > 1e-3);
}
