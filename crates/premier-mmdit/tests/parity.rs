//! Parity with the reference fixtures `tiny_flux` (diffusers and BFL FLUX.1) and `tiny_flux_mod`
//! (the official Premier modulated forward). Tolerance: atol 2e-5 on outputs of magnitude ≤ 2.4,
//! as the fixtures' README recommends (observed BFL vs diffusers: 4.8e-7).

mod common;

use burn::prelude::*;
use common::{assert_close, fixture, Fixture, B};
use premier_mmdit::embed::Rope;
use premier_mmdit::{Flux, FluxConfig, FluxInput, TextModulation};

const ATOL: f32 = 2e-5;

fn tiny_config() -> FluxConfig {
    let json = std::fs::read_to_string(fixture("tiny_flux.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    serde_json::from_value(json["bfl_params"].clone()).expect("bfl_params is a FluxConfig")
}

/// The fixture inputs, with the 2-D ids batched as BFL takes them.
fn tiny_input(f: &Fixture) -> FluxInput<B> {
    FluxInput {
        img: f.tensor("hidden_states"),
        img_ids: f.tensor::<2>("img_ids").unsqueeze_dim(0),
        txt: f.tensor("encoder_hidden_states"),
        txt_ids: f.tensor::<2>("txt_ids").unsqueeze_dim(0),
        timesteps: f.tensor("timestep"),
        y: f.tensor("pooled_projections"),
        guidance: Some(f.tensor("guidance")),
    }
}

fn load(file: &str) -> Flux<B> {
    Flux::load(fixture(file), &tiny_config(), &Default::default()).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn bfl_file_matches_diffusers_reference() {
    let f = Fixture::open("tiny_flux.safetensors");
    let out = load("tiny_flux_weights_bfl.safetensors").forward(tiny_input(&f), None);
    assert_close("output vs diffusers", out.clone(), f.tensor("output"), ATOL);
    assert_close("output vs BFL", out, f.tensor("output_bfl"), ATOL);
}

#[test]
fn diffusers_file_matches_reference() {
    let f = Fixture::open("tiny_flux.safetensors");
    let out = load("tiny_flux_weights_diffusers.safetensors").forward(tiny_input(&f), None);
    assert_close("output", out, f.tensor("output"), ATOL);
}

#[test]
fn diffusers_config_json_reads_as_the_bfl_params() {
    let json = std::fs::read_to_string(fixture("tiny_flux.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    let config = FluxConfig::from_diffusers_json(&json["diffusers_config"].to_string()).unwrap();
    assert_eq!(config, tiny_config());
}

/// Walks the forward pass step by step and checks every stored intermediate.
#[test]
fn intermediates_match_reference() {
    let f = Fixture::open("tiny_flux.safetensors");
    let flux = load("tiny_flux_weights_diffusers.safetensors");
    let input = tiny_input(&f);
    let config = tiny_config();

    let vec = flux.conditioning_vector(input.timesteps, input.y, input.guidance);
    assert_close("temb", vec.clone(), f.tensor("temb"), ATOL);

    let ids = Tensor::cat(vec![input.txt_ids, input.img_ids], 1);
    let rope = Rope::new(ids, &config.axes_dim, config.theta);
    // Both store each pair's frequency twice, once per channel.
    let tokens = 32;
    let cos = rope.cos.clone().reshape([tokens, 16]);
    let sin = rope.sin.clone().reshape([tokens, 16]);
    assert_close("rope cos", cos, f.tensor("rope_cos"), 1e-6);
    assert_close("rope sin", sin, f.tensor("rope_sin"), 1e-6);

    let mut img = flux.img_in.forward(input.img);
    let mut txt = flux.txt_in.forward(input.txt);
    for (j, block) in flux.double_blocks.iter().enumerate() {
        (img, txt) = block.forward(img, txt, vec.clone(), None, &rope);
        assert_close(
            &format!("double{j}_img"),
            img.clone(),
            f.tensor(&format!("double{j}_img")),
            ATOL,
        );
        assert_close(
            &format!("double{j}_txt"),
            txt.clone(),
            f.tensor(&format!("double{j}_txt")),
            ATOL,
        );
    }
    let mut x = Tensor::cat(vec![txt, img], 1);
    for (j, block) in flux.single_blocks.iter().enumerate() {
        x = block.forward(x, vec.clone(), &rope);
        assert_close(
            &format!("single{j}_out"),
            x.clone(),
            f.tensor(&format!("single{j}_out")),
            ATOL,
        );
    }
}

fn fixture_modulation(m: &Fixture) -> TextModulation<B> {
    TextModulation::new(m.tensor("delta_shared"), m.tensor("delta_distinct"))
}

#[test]
fn modulated_forward_matches_official_premier() {
    let f = Fixture::open("tiny_flux.safetensors");
    let m = Fixture::open("tiny_flux_mod.safetensors");
    for file in [
        "tiny_flux_weights_bfl.safetensors",
        "tiny_flux_weights_diffusers.safetensors",
    ] {
        let out = load(file).forward(tiny_input(&f), Some(&fixture_modulation(&m)));
        assert_close(
            &format!("{file}: modulated output"),
            out.clone(),
            m.tensor("output"),
            ATOL,
        );
        assert_close("vs patched BFL", out, m.tensor("output_bfl_patched"), ATOL);
    }
}

#[test]
fn modulated_intermediates_match_official_premier() {
    let f = Fixture::open("tiny_flux.safetensors");
    let m = Fixture::open("tiny_flux_mod.safetensors");
    let flux = load("tiny_flux_weights_bfl.safetensors");
    let config = tiny_config();
    let input = tiny_input(&f);
    let modulation = fixture_modulation(&m);

    let vec = flux.conditioning_vector(input.timesteps, input.y, input.guidance);
    let rope = Rope::new(
        Tensor::cat(vec![input.txt_ids, input.img_ids], 1),
        &config.axes_dim,
        config.theta,
    );
    let mut img = flux.img_in.forward(input.img);
    let mut txt = flux.txt_in.forward(input.txt);
    for (j, block) in flux.double_blocks.iter().enumerate() {
        let delta = modulation.double_block_delta(j);
        // The per-token modulation vector: six chunks of [1, 8, 32] side by side = [1, 8, 192].
        let mods = block.txt_modulation(vec.clone(), delta.clone());
        let flat: Vec<Tensor<B, 3>> = mods
            .iter()
            .flat_map(|t| [t.shift.clone(), t.scale.clone(), t.gate.clone()])
            .collect();
        let flat = Tensor::cat(flat, 2);
        assert_close(
            &format!("txt_mod_block{j}"),
            flat,
            m.tensor(&format!("txt_mod_block{j}")),
            ATOL,
        );

        (img, txt) = block.forward(img, txt, vec.clone(), delta, &rope);
        assert_close(
            &format!("double{j}_img"),
            img.clone(),
            m.tensor(&format!("double{j}_img")),
            ATOL,
        );
        assert_close(
            &format!("double{j}_txt"),
            txt.clone(),
            m.tensor(&format!("double{j}_txt")),
            ATOL,
        );
    }
}
