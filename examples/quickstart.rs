//! Quickstart: build a tiny FLUX.1 transformer on the CPU and run one plain and one personalized
//! (modulated) forward, showing that a per-token Δ on the text tokens steers the prediction.
//!
//! ```text
//! cargo run --release --example quickstart
//! ```

use std::time::Instant;

use burn::backend::Flex;
use burn::prelude::*;
use burn::tensor::Distribution;
use premier::mmdit::{img_ids, pack, txt_ids, Flux, FluxConfig, FluxInput, TextModulation};

fn main() -> anyhow::Result<()> {
    let device = Default::default();
    Flex::seed(&device, 0);

    // A FLUX.1-shaped model, small enough for any CPU.
    let config = FluxConfig {
        in_channels: 64,
        out_channels: 64,
        vec_in_dim: 64,
        context_in_dim: 128,
        hidden_size: 128,
        mlp_ratio: 4.0,
        num_heads: 4,
        depth: 2,
        depth_single_blocks: 2,
        axes_dim: vec![4, 14, 14],
        theta: 10_000,
        qkv_bias: true,
        guidance_embed: true,
    };
    let flux = Flux::<Flex>::init(&config, &device)?;

    // A 32×32 latent (a 256×256 image) with 16 channels, packed into 256 tokens of 64 channels.
    let normal = Distribution::Normal(0.0, 1.0);
    let (h, w, txt_tokens) = (32, 32, 16);
    let latent = Tensor::<Flex, 4>::random([1, 16, h, w], normal, &device);
    let input = FluxInput {
        img: pack(latent),
        img_ids: img_ids(1, h, w, &device),
        txt: Tensor::random([1, txt_tokens, config.context_in_dim], normal, &device),
        txt_ids: txt_ids(1, txt_tokens, &device),
        timesteps: Tensor::from_floats([0.7], &device),
        y: Tensor::random([1, config.vec_in_dim], normal, &device),
        guidance: Some(Tensor::from_floats([3.5], &device)),
    };

    // Premier's Δ: one direction per text token, shared by all double blocks, plus one per block.
    let delta = TextModulation::new(
        Tensor::random(
            [1, txt_tokens, config.hidden_size],
            Distribution::Normal(0.0, 0.5),
            &device,
        ),
        Tensor::random(
            [1, txt_tokens, config.depth, config.hidden_size],
            Distribution::Normal(0.0, 0.5),
            &device,
        ),
    );

    let start = Instant::now();
    let plain = flux.forward(input.clone(), None);
    let plain_time = start.elapsed();
    let start = Instant::now();
    let personal = flux.forward(input.clone(), Some(&delta));
    let personal_time = start.elapsed();
    let zero = flux.forward(input, Some(&delta.clone().scaled(0.0)));

    let max_abs = |t: Tensor<Flex, 3>| t.abs().max().into_scalar();
    println!(
        "premier quickstart: tiny FLUX.1 ({} parameters) on Flex (CPU)",
        flux.num_params()
    );
    println!("  velocity shape                 {:?}", plain.dims());
    println!("  plain forward                  {plain_time:.1?}");
    println!("  personalized forward           {personal_time:.1?}");
    println!(
        "  max |personalized - plain|     {:.4}",
        max_abs(personal - plain.clone())
    );
    println!(
        "  max |Δ scaled by 0 - plain|    {:.4}",
        max_abs(zero - plain)
    );
    Ok(())
}
