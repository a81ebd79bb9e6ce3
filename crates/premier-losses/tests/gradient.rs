//! Finite-difference gradient checks of every dispersion variant and of flow matching, in f64
//! (this binary sets Flex's default float to f64 before any tensor exists). Tolerance 1e-6 relative.

use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use burn::tensor::{set_default_dtypes, Distribution, FloatDType, IntDType};
use premier_losses::{
    dispersion_loss, dispersion_loss_with_tau, flow_matching_loss, DispersionVariant,
};

type AB = Autodiff<Flex>;

fn value(t: Tensor<AB, 1>) -> f64 {
    t.into_data().to_vec::<f64>().unwrap()[0]
}

/// Directional derivative by autodiff vs central differences along random directions.
fn check<const D: usize>(name: &str, x: Tensor<AB, D>, f: impl Fn(Tensor<AB, D>) -> Tensor<AB, 1>) {
    let device = x.device();
    let xg = x.clone().require_grad();
    let grads = f(xg.clone()).backward();
    let grad = xg.grad(&grads).unwrap();
    for trial in 0..3 {
        let dir = Tensor::<AB, D>::random(x.dims(), Distribution::Normal(0.0, 1.0), &device);
        let analytic = (grad.clone() * dir.clone().inner())
            .sum()
            .into_data()
            .to_vec::<f64>()
            .unwrap()[0];
        let h = 1e-5;
        let numeric =
            (value(f(x.clone() + dir.clone() * h)) - value(f(x.clone() - dir * h))) / (2.0 * h);
        let rel = (analytic - numeric).abs() / analytic.abs().max(1e-12);
        eprintln!("{name} #{trial}: autodiff {analytic:.10}, FD {numeric:.10}, rel {rel:.1e}");
        assert!(rel < 1e-6, "{name} #{trial}: {analytic} vs {numeric}");
    }
}

#[test]
fn losses_have_exact_gradients() {
    let device = Default::default();
    set_default_dtypes::<AB>(&device, FloatDType::F64, IntDType::I32).unwrap();
    <AB as Backend>::seed(&device, 3);
    // Spread so that no variant saturates: squared distances of order 1.
    let z = Tensor::<AB, 2>::random([5, 7], Distribution::Normal(0.0, 0.3), &device);
    for variant in [
        DispersionVariant::Stable,
        DispersionVariant::Released,
        DispersionVariant::Dispersive,
        DispersionVariant::Hinge,
    ] {
        check(&format!("{variant:?}"), z.clone(), |z| {
            dispersion_loss(z, variant)
        });
        check(&format!("{variant:?} tau 0.5"), z.clone(), |z| {
            dispersion_loss_with_tau(z, variant, 0.5)
        });
    }
    let x0 = Tensor::<AB, 3>::random([2, 6, 4], Distribution::Normal(0.0, 1.0), &device);
    let noise = Tensor::<AB, 3>::random([2, 6, 4], Distribution::Normal(0.0, 1.0), &device);
    let pred = Tensor::<AB, 3>::random([2, 6, 4], Distribution::Normal(0.0, 1.0), &device);
    check("flow matching", pred, |p| {
        flow_matching_loss(p, x0.clone(), noise.clone())
    });
}
