//! A model written with `Flux::save` loads back with `Flux::load` and computes the same.

use burn::backend::Flex;
use burn::prelude::*;
use burn::tensor::Distribution;
use premier_io::SaveDtype;
use premier_mmdit::{img_ids, txt_ids, Flux, FluxConfig, FluxInput};

#[test]
fn saved_model_loads_back_identically() {
    let device = Default::default();
    let config = FluxConfig::tiny();
    let flux = Flux::<Flex>::init(&config, &device).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flux.safetensors");
    flux.save(&path, SaveDtype::F32).unwrap();
    // Strict load: every key written is one the loader asks for, and none is missing.
    let loaded = Flux::<Flex>::load(&path, &config, &device).unwrap();
    let n = Distribution::Normal(0.0, 1.0);
    let input = FluxInput {
        img: Tensor::random([1, 4, config.in_channels], n, &device),
        img_ids: img_ids(1, 4, 4, &device),
        txt: Tensor::random([1, 3, config.context_in_dim], n, &device),
        txt_ids: txt_ids(1, 3, &device),
        timesteps: Tensor::from_floats([0.4], &device),
        y: Tensor::random([1, config.vec_in_dim], n, &device),
        guidance: Some(Tensor::from_floats([2.0], &device)),
    };
    let a = flux.forward(input.clone(), None);
    let b = loaded.forward(input, None);
    let diff: f32 = (a - b).abs().max().into_scalar();
    assert_eq!(diff, 0.0, "round trip changed the output by {diff}");
}

#[test]
fn clones_of_a_fresh_model_are_the_same_model() {
    // burn's Linear init is lazy: without drawing at build time, each clone would draw its own.
    let device = Default::default();
    let flux = Flux::<Flex>::init(&FluxConfig::tiny(), &device).unwrap();
    let (a, b) = (flux.clone(), flux);
    let (ta, tb) = (a.to_tensors(), b.to_tensors());
    assert_eq!(ta.len(), tb.len());
    for ((ka, va), (kb, vb)) in ta.iter().zip(&tb) {
        assert_eq!(ka, kb);
        assert_eq!(va, vb, "{ka} differs between clones");
    }
}
