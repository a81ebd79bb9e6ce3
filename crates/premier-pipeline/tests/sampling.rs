//! Schedules and the Euler sampler against BFL (fixture `sampling`): schedules atol 1e-6,
//! latents atol 2e-5 (fixture README).

use std::path::PathBuf;

use burn::backend::Flex;
use burn::prelude::*;
use premier_io::SafetensorsFile;
use premier_mmdit::{Flux, FluxConfig};
use premier_pipeline::{denoise, schedule};

type B = Flex;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

fn tensor<const D: usize>(f: &SafetensorsFile, key: &str) -> Tensor<B, D> {
    f.read(key).unwrap().into_tensor(&Default::default())
}

#[test]
fn schedules_match_bfl_get_schedule() {
    let f = SafetensorsFile::open(&fixture("sampling.safetensors")).unwrap();
    for (key, steps, len, shift) in [
        ("schedule_4_256", 4, 256, true),
        ("schedule_28_1024", 28, 1024, true),
        ("schedule_50_4096", 50, 4096, true),
        ("schedule_4_256_noshift", 4, 256, false),
    ] {
        let want = f.read(key).unwrap().data;
        let got = schedule(steps, len, shift);
        assert_eq!(got.len(), want.len(), "{key}");
        let diff = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(diff <= 1e-6, "{key}: {diff:e}");
        assert_eq!(*got.last().unwrap(), 0.0, "{key} ends at the image");
    }
    let want = f.read("denoise_timesteps").unwrap().data;
    let got = schedule(3, 24, true);
    assert!(
        got.iter().zip(&want).all(|(a, b)| (a - b).abs() <= 1e-6),
        "{got:?} vs {want:?}"
    );
}

#[test]
fn euler_denoise_matches_bfl() {
    let f = SafetensorsFile::open(&fixture("sampling.safetensors")).unwrap();
    let inputs = SafetensorsFile::open(&fixture("tiny_flux.safetensors")).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("tiny_flux.json")).unwrap()).unwrap();
    let config: FluxConfig = serde_json::from_value(json["bfl_params"].clone()).unwrap();
    let flux = Flux::<B>::load(
        fixture("tiny_flux_weights_bfl.safetensors"),
        &config,
        &Default::default(),
    )
    .unwrap();
    let timesteps = f.read("denoise_timesteps").unwrap().data;
    let run = |steps: usize| {
        denoise(
            &flux,
            tensor(&f, "denoise_img_packed"),
            tensor::<2>(&f, "denoise_img_ids").unsqueeze_dim(0),
            tensor(&inputs, "encoder_hidden_states"),
            tensor::<2>(&f, "denoise_txt_ids").unsqueeze_dim(0),
            tensor(&inputs, "pooled_projections"),
            Some(Tensor::from_floats([3.5], &Default::default())),
            &timesteps[..=steps],
            None,
            &mut (),
        )
        .unwrap()
    };
    for step in 1..=3 {
        let want: Tensor<B, 3> = tensor(&f, &format!("denoise_latent_step{step}"));
        let diff = (run(step) - want).abs().max().into_scalar();
        eprintln!("latent after step {step}: max |diff| = {diff:e}");
        assert!(diff <= 2e-5, "step {step}: {diff:e}");
    }
}
