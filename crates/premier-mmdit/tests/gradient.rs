//! Gradients flow through the frozen backbone into Δ: autodiff against central finite differences.
//!
//! This binary runs Flex in f64 (set once, before any tensor exists, so it has its own test file),
//! which makes the finite differences accurate enough for a tight tolerance: 1e-6 relative.

use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use burn::tensor::{set_default_dtypes, Distribution, FloatDType, IntDType};
use premier_mmdit::{img_ids, txt_ids, Flux, FluxInput, TextModulation};

mod common;
use common::{small_config, TXT};

type AB = Autodiff<Flex>;

#[test]
fn gradient_wrt_delta_matches_finite_differences() {
    let device = Default::default();
    set_default_dtypes::<AB>(&device, FloatDType::F64, IntDType::I32).unwrap();
    <AB as Backend>::seed(&device, 11);

    let config = small_config();
    let flux = Flux::<AB>::init(&config, &device).unwrap();
    let normal = Distribution::Normal(0.0, 1.0);
    let input = FluxInput {
        img: Tensor::random([2, 6, 16], normal, &device),
        img_ids: img_ids(2, 4, 6, &device),
        txt: Tensor::random([2, TXT, 20], normal, &device),
        txt_ids: txt_ids(2, TXT, &device),
        timesteps: Tensor::from_floats([0.3, 0.8], &device),
        y: Tensor::random([2, 24], normal, &device),
        guidance: Some(Tensor::from_floats([1.0, 3.5], &device)),
    };
    let weights = Tensor::<AB, 3>::random([2, 6, 16], normal, &device);
    let shared = Tensor::<AB, 3>::random([2, TXT, 32], Distribution::Normal(0.0, 0.3), &device);
    let distinct =
        Tensor::<AB, 4>::random([2, TXT, 2, 32], Distribution::Normal(0.0, 0.3), &device);
    assert_eq!(shared.dtype(), burn::tensor::DType::F64);

    let objective = |s: Tensor<AB, 3>, d: Tensor<AB, 4>| {
        let out = flux.forward(input.clone(), Some(&TextModulation::new(s, d)));
        (out * weights.clone()).sum()
    };
    let s = shared.clone().require_grad();
    let d = distinct.clone().require_grad();
    let grads = objective(s.clone(), d.clone()).backward();
    let grad_s = s.grad(&grads).unwrap();
    let grad_d = d.grad(&grads).unwrap();

    // Read back as f64: `into_scalar` would round through the backend's f32 FloatElem.
    let value = |t: Tensor<AB, 1>| t.into_data().to_vec::<f64>().unwrap()[0];
    let inner_value = |t: Tensor<Flex, 1>| t.into_data().to_vec::<f64>().unwrap()[0];
    for trial in 0..4 {
        // Directions: random over both parts, or only one part.
        let mut dir_s = Tensor::<AB, 3>::random([2, TXT, 32], normal, &device);
        let mut dir_d = Tensor::<AB, 4>::random([2, TXT, 2, 32], normal, &device);
        match trial {
            1 => dir_d = dir_d * 0.0,
            2 => dir_s = dir_s * 0.0,
            _ => {}
        }
        let analytic = inner_value((grad_s.clone() * dir_s.clone().inner()).sum())
            + inner_value((grad_d.clone() * dir_d.clone().inner()).sum());
        let h = 1e-4;
        let at = |sign: f64| {
            value(objective(
                shared.clone() + dir_s.clone() * (sign * h),
                distinct.clone() + dir_d.clone() * (sign * h),
            ))
        };
        let numeric = (at(1.0) - at(-1.0)) / (2.0 * h);
        let rel = (analytic - numeric).abs() / analytic.abs();
        eprintln!("direction {trial}: autodiff {analytic:.9}, finite differences {numeric:.9}, rel {rel:.1e}");
        assert!(
            rel < 1e-6,
            "direction {trial}: autodiff {analytic} vs FD {numeric} (rel {rel:e})"
        );
    }
}
