//! Parity with prodigyopt 1.1.2 on Premier's settings (fixture `prodigy`): 60 steps of softmax
//! regression, with and without clip_grad_norm_(0.5). Parameters and d (f64) rtol 1e-5 (the
//! README allows 1e-4 from step 40 on; observed ≤ 3.2e-7).

use std::path::PathBuf;

use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use premier_mmdit::load::SafetensorsFile;
use premier_train::clip::clip_grad_norm;
use premier_train::prodigy::{Prodigy, ProdigyConfig};

type AB = Autodiff<Flex>;

fn fixture() -> SafetensorsFile {
    SafetensorsFile::open(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/prodigy.safetensors"),
    )
    .unwrap()
}

fn f64s(f: &SafetensorsFile, key: &str) -> Vec<f64> {
    f.read_f64(key).unwrap().1
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-30)
}

fn run(clip: bool) {
    let f = fixture();
    let device = Default::default();
    let x: Tensor<AB, 2> = f.read("X").unwrap().into_tensor(&device);
    let (_, labels) = f.read_ids("y").unwrap();
    let one_hot: Vec<f32> = labels
        .iter()
        .flat_map(|&l| (0..3).map(move |c| if c as i64 == l { 1.0 } else { 0.0 }))
        .collect();
    let one_hot = Tensor::<AB, 2>::from_data(TensorData::new(one_hot, [16, 3]), &device);
    let mut params: Vec<Tensor<Flex, 1>> = vec![
        f.read("W_init")
            .unwrap()
            .into_tensor::<Flex, 2>(&device)
            .reshape([18]),
        f.read("b_init").unwrap().into_tensor(&device),
    ];
    let mut opt = Prodigy::<Flex>::new(ProdigyConfig::premier());
    let run = if clip { "premier_clip05" } else { "premier" };
    let d_ref = f64s(&f, &format!("{run}_d_f64"));
    let loss_ref = f64s(&f, &format!("{run}_loss_f64"));
    let mut worst_d: f64 = 0.0;
    for step in 1..=60 {
        let w = Tensor::<AB, 1>::from_inner(params[0].clone()).require_grad();
        let b = Tensor::<AB, 1>::from_inner(params[1].clone()).require_grad();
        let logits = x.clone().matmul(w.clone().reshape([6, 3])) + b.clone().reshape([1, 3]);
        let loss = (log_softmax(logits, 1) * one_hot.clone())
            .sum_dim(1)
            .mean()
            .neg();
        let loss_value = loss.clone().into_scalar() as f64;
        assert!(
            rel(loss_value, loss_ref[step - 1]) < 1e-5,
            "step {step}: loss {loss_value} vs {}",
            loss_ref[step - 1]
        );
        let grads = loss.backward();
        let mut g = vec![w.grad(&grads).unwrap(), b.grad(&grads).unwrap()];
        if clip {
            g = clip_grad_norm(g, 0.5).0;
        }
        params = opt.step(params, g);
        worst_d = worst_d.max(rel(opt.d(), d_ref[step - 1]));
        assert!(
            rel(opt.d(), d_ref[step - 1]) < 1e-5,
            "step {step}: d {} vs {}",
            opt.d(),
            d_ref[step - 1]
        );
        if [1, 5, 20, 40, 60].contains(&step) {
            for (name, p) in [("W", &params[0]), ("b", &params[1])] {
                let want = f.read(&format!("{run}_{name}_step{step}")).unwrap().data;
                let got = p.clone().into_data().to_vec::<f32>().unwrap();
                let worst = got
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| rel(*a as f64, *b as f64))
                    .fold(0.0, f64::max);
                eprintln!("{run} step {step} {name}: max rel diff {worst:e}");
                assert!(worst < 1e-5, "{run} step {step} {name}: {worst:e}");
            }
        }
    }
    eprintln!("{run}: max rel diff of d over 60 steps {worst_d:e}");
}

#[test]
fn matches_prodigyopt_with_premier_settings() {
    run(false);
}

#[test]
fn matches_prodigyopt_with_gradient_clipping() {
    run(true);
}
