//! Behaviour the formulas promise: values against a direct f64 evaluation, B = 1, saturation,
//! identical users, and the timestep samplers.

use burn::backend::Flex;
use burn::prelude::*;
use burn::tensor::Distribution;
use premier_losses::{dispersion_loss, shift_timesteps, DispersionVariant, TimestepSampler};

type B = Flex;

fn rows(z: &Tensor<B, 2>) -> Vec<Vec<f64>> {
    let [b, f] = z.dims();
    let v = z.clone().into_data().to_vec::<f32>().unwrap();
    (0..b)
        .map(|i| v[i * f..(i + 1) * f].iter().map(|&x| x as f64).collect())
        .collect()
}

fn sq(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum()
}

fn scalar(t: Tensor<B, 1>) -> f64 {
    t.into_scalar() as f64
}

#[test]
fn variants_match_a_direct_evaluation() {
    let device = Default::default();
    B::seed(&device, 5);
    let z = Tensor::<B, 2>::random([4, 9], Distribution::Normal(0.0, 0.4), &device);
    let r = rows(&z);
    let n = r.len();
    let stable: f64 = (0..n)
        .map(|i| {
            let s: f64 = (0..n)
                .filter(|&j| j != i)
                .map(|j| (-sq(&r[i], &r[j]).sqrt()).exp())
                .sum();
            s.ln() - ((n - 1) as f64).ln()
        })
        .sum::<f64>()
        / n as f64;
    let released = {
        let s: f64 = (0..n)
            .flat_map(|i| (0..n).map(move |j| (i, j)))
            .filter(|(i, j)| i != j)
            .map(|(i, j)| (-sq(&r[i], &r[j])).exp())
            .sum();
        (s / (n * (n - 1)) as f64 + 1e-10).ln()
    };
    let dispersive = {
        let s: f64 = (0..n)
            .flat_map(|i| (0..n).map(move |j| (i, j)))
            .map(|(i, j)| (-sq(&r[i], &r[j]) / 9.0).exp())
            .sum();
        (s / (n * n) as f64).ln()
    };
    let hinge = {
        let s: f64 = (0..n)
            .flat_map(|i| (0..n).map(move |j| (i, j)))
            .filter(|(i, j)| i != j)
            .map(|(i, j)| (1.0 - sq(&r[i], &r[j]) / 9.0).max(0.0))
            .sum();
        s / (n * (n - 1)) as f64
    };
    for (variant, want) in [
        (DispersionVariant::Stable, stable),
        (DispersionVariant::Released, released),
        (DispersionVariant::Dispersive, dispersive),
        (DispersionVariant::Hinge, hinge),
    ] {
        let got = scalar(dispersion_loss(z.clone(), variant));
        assert!(
            ((got - want) / want).abs() < 1e-5,
            "{variant:?}: {got} vs {want}"
        );
    }
}

#[test]
fn single_user_batch_is_zero_and_far_users_saturate_the_released_variant() {
    let device = Default::default();
    let one = Tensor::<B, 2>::ones([1, 10], &device);
    for variant in [
        DispersionVariant::Stable,
        DispersionVariant::Released,
        DispersionVariant::Dispersive,
        DispersionVariant::Hinge,
    ] {
        assert_eq!(scalar(dispersion_loss(one.clone(), variant)), 0.0);
    }
    // Squared distances of ~1e4: the released loss sits at log(1e-10), finite, as SPEC §4.3 warns.
    let far = Tensor::<B, 2>::from_floats([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0]], &device);
    let released = scalar(dispersion_loss(far.clone(), DispersionVariant::Released));
    assert!((released - 1e-10f64.ln()).abs() < 1e-4, "{released}");
    let stable = scalar(dispersion_loss(far, DispersionVariant::Stable));
    assert!(stable.is_finite() && stable < -99.0, "{stable}");
}

#[test]
fn identical_users_give_finite_gradients() {
    use burn::backend::Autodiff;
    let device = Default::default();
    let z = Tensor::<Autodiff<B>, 2>::from_floats([[1.0, 2.0], [1.0, 2.0], [0.0, 1.0]], &device)
        .require_grad();
    let grads = dispersion_loss(z.clone(), DispersionVariant::Stable).backward();
    let g = z.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap();
    assert!(g.iter().all(|v| v.is_finite()), "{g:?}");
}

#[test]
fn timestep_samplers_stay_in_range_with_the_expected_centre() {
    let device = Default::default();
    B::seed(&device, 9);
    let n = 20_000;
    let mean = |t: Tensor<B, 1>| {
        let v = t.into_data().to_vec::<f32>().unwrap();
        assert!(v.iter().all(|&x| x > 0.0 && x < 1.0));
        v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64
    };
    // sigmoid(N(1, 1)) has mean ≈ 0.6967 (numerical integral); uniform 0.5.
    let logit = mean(TimestepSampler::default().sample::<B>(n, &device));
    assert!((logit - 0.6967).abs() < 0.01, "{logit}");
    let uniform = mean(TimestepSampler::Uniform.sample::<B>(n, &device));
    assert!((uniform - 0.5).abs() < 0.01, "{uniform}");
    let shifted = mean(TimestepSampler::FluxShifted { mu: 1.15 }.sample::<B>(n, &device));
    assert!(shifted > 0.6, "shift pushes t towards noise: {shifted}");
    // The shift is BFL's time_shift: e^mu / (e^mu + 1/t - 1).
    let t = Tensor::<B, 1>::from_floats([0.0, 0.25, 0.5, 1.0], &device);
    let got = shift_timesteps(t, 0.5).into_data().to_vec::<f32>().unwrap();
    let e = 0.5f64.exp();
    let want = [0.0, e / (e + 3.0), e / (e + 1.0), 1.0];
    for (g, w) in got.iter().zip(want) {
        assert!((*g as f64 - w).abs() < 1e-6, "{got:?}");
    }
}

#[test]
fn hinge_is_bounded_and_silent_once_users_are_apart() {
    use burn::backend::Autodiff;
    let device = Default::default();
    // Identical users: the full cost 1; RMS distance beyond √τ: nothing and no gradient.
    let same = Tensor::<B, 2>::ones([3, 4], &device);
    assert!((scalar(dispersion_loss(same, DispersionVariant::Hinge)) - 1.0).abs() < 1e-6);
    let far = Tensor::<Autodiff<B>, 2>::from_floats([[0.0, 0.0], [3.0, 0.0], [0.0, 3.0]], &device)
        .require_grad();
    let loss = dispersion_loss(far.clone(), DispersionVariant::Hinge);
    assert_eq!(loss.clone().into_scalar(), 0.0);
    let g = far
        .grad(&loss.backward())
        .unwrap()
        .into_data()
        .to_vec::<f32>()
        .unwrap();
    assert!(g.iter().all(|&v| v == 0.0), "{g:?}");
    // Half the margin apart in RMS: 1 − 1/4 per pair.
    let half = Tensor::<B, 2>::from_floats([[0.0, 0.0], [0.5, 0.5]], &device);
    let v = scalar(dispersion_loss(half, DispersionVariant::Hinge));
    assert!((v - 0.75).abs() < 1e-6, "{v}");
}

#[test]
fn dispersion_names_round_trip_with_their_serde_names_and_bad_names_are_named() {
    for (name, variant) in DispersionVariant::ALL {
        assert_eq!(name.parse::<DispersionVariant>(), Ok(variant));
        // The config-file (serde) name and the flag name are one and the same.
        let serde_name = serde_json::to_value(variant).unwrap();
        assert_eq!(serde_name, serde_json::Value::String(name.into()));
    }
    assert_eq!(DispersionVariant::parse_choice("None"), Ok(None));
    assert_eq!(
        DispersionVariant::parse_choice("Hinge"),
        Ok(Some(DispersionVariant::Hinge))
    );
    let err = DispersionVariant::parse_choice("hinge").unwrap_err();
    assert!(err.to_string().contains("`hinge`"), "{err}");
    assert!("None".parse::<DispersionVariant>().is_err());
}
