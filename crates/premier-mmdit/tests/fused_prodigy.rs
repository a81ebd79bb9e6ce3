//! The fused Prodigy passes of `FluxOps` on Flex against their composites: the moments and the
//! updated parameters bit for bit (each element sees the same operations in the same order), the
//! two sums to rounding (their order differs), in f32 and f64, over lengths below, at and past a
//! 16K-element task, with and without p0, β1 and weight decay; moments that are shared (another
//! owner keeps its values) and a bf16 fallback.

use burn::backend::Flex;
use burn::prelude::*;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, TensorData};
use premier_mmdit::fused::{composite, ProdigyCoefs, ProdigyMoments, ProdigyUpdate};
use premier_mmdit::FluxOps;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

mod common;
use common::{prim, tensor, values};

const LENGTHS: [usize; 5] = [1, 17, 16_384, 16_385, 40_001];

/// n normal draws × scale, the same for a seed on every call. Drawn on the host rather than with
/// `Flex::seed` + `random`: Flex's generator is one for the process, so tests running beside
/// each other would interleave their draws, and the two runs compared below would start from
/// different moments.
fn random(n: usize, dtype: DType, seed: u64, scale: f64) -> Tensor<Flex, 1> {
    let mut rng = StdRng::seed_from_u64(seed);
    let values: Vec<f64> = (0..n)
        .map(|_| StandardNormal.sample(&mut rng))
        .map(|x: f64| x * scale)
        .collect();
    Tensor::<Flex, 1>::from_data(TensorData::new(values, [n]), &Default::default()).cast(dtype)
}

fn coefs(beta1: f64) -> ProdigyCoefs {
    let d = 3e-4;
    ProdigyCoefs {
        beta1,
        avg: d * (1.0 - beta1),
        beta2: 0.999,
        avg_sq: d * d * (1.0 - 0.999),
        beta3: 0.999f64.sqrt(),
        s_coef: d / 1e-6 * d,
    }
}

/// Fresh moments (nonzero, as after a few steps); the same values on every call.
fn moments(n: usize, dtype: DType) -> ProdigyMoments<Flex> {
    ProdigyMoments {
        exp_avg: prim(random(n, dtype, 11, 1e-4)),
        exp_avg_sq: prim(random(n, dtype, 12, 1e-8).abs()),
        s: prim(random(n, dtype, 13, 1e-3)),
    }
}

fn bits(x: FloatTensor<Flex>) -> Vec<u64> {
    values(tensor::<Flex, 1>(x))
        .into_iter()
        .map(f64::to_bits)
        .collect()
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-30)
}

#[test]
fn moments_match_the_composite() {
    for n in LENGTHS {
        for (dtype, tol) in [(DType::F32, 1e-5), (DType::F64, 1e-12)] {
            let (p, g) = (random(n, dtype, 1, 1.0), random(n, dtype, 2, 1e-2));
            let p0 = random(n, dtype, 3, 1.0);
            for (beta1, p0) in [(0.9, Some(p0)), (0.0, None)] {
                let run = |fused: bool| {
                    let args = (prim(p.clone()), prim(g.clone()), p0.clone().map(prim));
                    if fused {
                        Flex::flux_prodigy_moments(
                            args.0,
                            args.1,
                            args.2,
                            moments(n, dtype),
                            coefs(beta1),
                        )
                    } else {
                        composite::prodigy_moments::<Flex>(
                            args.0,
                            args.1,
                            args.2,
                            moments(n, dtype),
                            coefs(beta1),
                        )
                    }
                };
                let ((m, sums), (m_ref, sums_ref)) = (run(true), run(false));
                let what = format!("n {n} {dtype:?} β1 {beta1}");
                assert_eq!(bits(m.exp_avg), bits(m_ref.exp_avg), "{what}: exp_avg");
                assert_eq!(
                    bits(m.exp_avg_sq),
                    bits(m_ref.exp_avg_sq),
                    "{what}: exp_avg_sq"
                );
                assert_eq!(bits(m.s), bits(m_ref.s), "{what}: s");
                let r = rel(sums.g_dot_delta, sums_ref.g_dot_delta);
                assert!(
                    r <= tol,
                    "{what}: Σ g·δ {} vs {} (rel {r:e})",
                    sums.g_dot_delta,
                    sums_ref.g_dot_delta
                );
                let r = rel(sums.s_abs, sums_ref.s_abs);
                assert!(
                    r <= tol,
                    "{what}: Σ|s| {} vs {} (rel {r:e})",
                    sums.s_abs,
                    sums_ref.s_abs
                );
            }
        }
    }
}

#[test]
fn update_matches_the_composite() {
    for n in LENGTHS {
        for dtype in [DType::F32, DType::F64] {
            let p = random(n, dtype, 4, 1.0);
            let direction = random(n, dtype, 5, 1e-4);
            let exp_avg_sq = random(n, dtype, 6, 1e-8).abs();
            for decay in [0.0, -1e-4 * 3e-4] {
                let update = ProdigyUpdate {
                    decay,
                    step: -3e-4,
                    eps: 3e-4 * 1e-8,
                };
                let args = || {
                    (
                        prim(p.clone()),
                        prim(direction.clone()),
                        prim(exp_avg_sq.clone()),
                    )
                };
                let (a, b, c) = args();
                let fused = Flex::flux_prodigy_update(a, b, c, update);
                let (a, b, c) = args();
                let reference = composite::prodigy_update::<Flex>(a, b, c, update);
                assert_eq!(
                    bits(fused),
                    bits(reference),
                    "n {n} {dtype:?} decay {decay}"
                );
            }
        }
    }
}

#[test]
fn shared_inputs_keep_their_values() {
    let n = 20_000;
    let (p, g) = (
        random(n, DType::F32, 1, 1.0),
        random(n, DType::F32, 2, 1e-2),
    );
    let kept = moments(n, DType::F32);
    let before = bits(kept.s.clone());
    let (m, _) =
        Flex::flux_prodigy_moments(prim(p.clone()), prim(g), None, kept.clone(), coefs(0.9));
    assert_eq!(
        bits(kept.s),
        before,
        "a moment another owner holds is not written over"
    );
    assert_ne!(bits(m.s), before, "the returned moment is updated");
    let p_before = bits(prim(p.clone()));
    let update = ProdigyUpdate {
        decay: -1e-4,
        step: -1e-2,
        eps: 1e-8,
    };
    let updated = Flex::flux_prodigy_update(prim(p.clone()), m.exp_avg, m.exp_avg_sq, update);
    assert_eq!(
        bits(prim(p)),
        p_before,
        "the parameter the model holds is not written over"
    );
    assert_ne!(bits(updated), p_before);
}

#[test]
fn half_precision_falls_back_to_the_composite() {
    let n = 100;
    let dtype = DType::BF16;
    let (p, g) = (random(n, dtype, 1, 1.0), random(n, dtype, 2, 1e-2));
    let (m, sums) = Flex::flux_prodigy_moments(
        prim(p.clone()),
        prim(g.clone()),
        None,
        moments(n, dtype),
        coefs(0.9),
    );
    let (m_ref, sums_ref) =
        composite::prodigy_moments::<Flex>(prim(p), prim(g), None, moments(n, dtype), coefs(0.9));
    assert_eq!(tensor::<Flex, 1>(m.s.clone()).dtype(), DType::BF16);
    assert_eq!(bits(m.s), bits(m_ref.s));
    assert_eq!(sums, sums_ref);
}
