//! Helpers of the end-to-end tests: the `premier` CLI in process, paths as arguments, file hashes,
//! the reference fixtures and a tiny FLUX.1 model folder made of them.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};

use clap::Parser;
use premier_cli::{run, Cli};

/// Runs `premier ARGS…` in this process.
pub fn premier(args: &[&str]) -> anyhow::Result<()> {
    let mut full = vec!["premier"];
    full.extend_from_slice(args);
    run(Cli::try_parse_from(full)?)
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

pub fn sha(path: &Path) -> String {
    premier::train::cache::content_hash(&std::fs::read(path).unwrap())
}

pub fn synth_base() -> PathBuf {
    premier::synth::base::shipped_base_dir()
}

/// Exports a synthetic world (`train_users` + 1 new user, `images` each) into `root/world` and
/// encodes it with the shipped base into `root/cache`; returns (world, cache).
pub fn encoded_synth_world(root: &Path, train_users: usize, images: usize) -> (PathBuf, PathBuf) {
    let (world, cache) = (root.join("world"), root.join("cache"));
    let (users, images) = (train_users.to_string(), images.to_string());
    premier(&[
        "synth",
        "export",
        "--out",
        s(&world),
        "--train-users",
        &users,
        "--new-users",
        "1",
        "--images-per-user",
        &images,
    ])
    .unwrap();
    let all = world.join("manifest.jsonl");
    let base = synth_base();
    premier(&[
        "encode",
        "--synth-base",
        s(&base),
        "--data",
        s(&all),
        "--cache",
        s(&cache),
    ])
    .unwrap();
    (world, cache)
}

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn fixture_field(json: &str, field: &str) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture(json)).unwrap()).unwrap();
    v[field].clone()
}

/// A diffusers FLUX.1 folder on tiny sizes: a random transformer (BFL keys, which the loader
/// detects) fitting the reference VAE (16 latent channels), T5 (32) and CLIP (32) fixtures.
pub fn tiny_model_dir(root: &Path) -> PathBuf {
    use premier::mmdit::{Flux, FluxConfig};
    let dir = root.join("FLUX.1-tiny");
    let part = |sub: &str, config: serde_json::Value, weights: &str, name: &str| {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
        std::fs::write(dir.join(sub).join("config.json"), config.to_string()).unwrap();
        std::fs::copy(fixture(weights), dir.join(sub).join(name)).unwrap();
    };
    part(
        "vae",
        fixture_field("vae_tiny.json", "diffusers_config"),
        "vae_tiny_weights_diffusers.safetensors",
        "diffusion_pytorch_model.safetensors",
    );
    part(
        "text_encoder_2",
        fixture_field("t5_tiny.json", "config"),
        "t5_tiny_weights.safetensors",
        "model.safetensors",
    );
    part(
        "text_encoder",
        fixture_field("clip_text_tiny.json", "config"),
        "clip_text_tiny_weights.safetensors",
        "model.safetensors",
    );
    for (sub, file) in [("tokenizer_2", "t5.json"), ("tokenizer", "clip.json")] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
        std::fs::copy(
            fixture(&format!("tiny_tokenizers/{file}")),
            dir.join(sub).join("tokenizer.json"),
        )
        .unwrap();
    }
    let device = Default::default();
    let config = FluxConfig {
        in_channels: 64,
        out_channels: 64,
        vec_in_dim: 32,
        context_in_dim: 32,
        hidden_size: 32,
        mlp_ratio: 4.0,
        axes_dim: vec![4, 6, 6],
        ..FluxConfig::tiny()
    };
    let flux = Flux::<burn::backend::Flex>::init(&config, &device).unwrap();
    std::fs::create_dir_all(dir.join("transformer")).unwrap();
    flux.save(
        dir.join("transformer/diffusion_pytorch_model.safetensors"),
        premier::io::SaveDtype::F32,
    )
    .unwrap();
    let diffusers = serde_json::json!({
        "patch_size": 1, "in_channels": 64, "num_layers": config.depth,
        "num_single_layers": config.depth_single_blocks, "attention_head_dim": 32 / config.num_heads,
        "num_attention_heads": config.num_heads, "joint_attention_dim": 32,
        "pooled_projection_dim": 32, "guidance_embeds": config.guidance_embed,
        "axes_dims_rope": [4, 6, 6]
    });
    std::fs::write(dir.join("transformer/config.json"), diffusers.to_string()).unwrap();
    dir
}

/// A CLIP folder as Hugging Face lays it out, from the tiny fixture.
pub fn clip_folder(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("clip_model_tiny.json")).unwrap())
            .unwrap();
    std::fs::write(dir.join("config.json"), json["config"].to_string()).unwrap();
    std::fs::copy(
        fixture("clip_model_tiny_weights.safetensors"),
        dir.join("model.safetensors"),
    )
    .unwrap();
    std::fs::copy(
        fixture("tiny_tokenizers/clip.json"),
        dir.join("tokenizer.json"),
    )
    .unwrap();
    std::fs::write(
        dir.join("preprocessor_config.json"),
        r#"{"size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32},
            "image_mean": [0.48145466, 0.4578275, 0.40821073],
            "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3}"#,
    )
    .unwrap();
}

/// max |a − b| / max |a| over all the values of two safetensors files with the same keys (the
/// measure of the data-parallel tests: relative to the parameters' scale, so a tensor still near
/// zero does not divide by its own tiny size).
pub fn largest_relative_gap(a: &Path, b: &Path) -> f32 {
    let (a, b) = (
        premier::io::SafetensorsFile::open(a).unwrap(),
        premier::io::SafetensorsFile::open(b).unwrap(),
    );
    let keys: Vec<String> = a.keys().map(String::from).collect();
    let (mut gap, mut scale) = (0.0f32, 0.0f32);
    for key in &keys {
        let (x, y) = (a.read(key).unwrap().data, b.read(key).unwrap().data);
        assert_eq!(x.len(), y.len(), "{key}");
        for (p, q) in x.iter().zip(&y) {
            gap = gap.max((p - q).abs());
            scale = scale.max(p.abs());
        }
    }
    gap / scale
}
