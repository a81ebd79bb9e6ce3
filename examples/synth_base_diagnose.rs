//! Where the synthetic base loses the told palette (docs/synth.md, "The base model"): every
//! content × the four palettes named in words, scored per factor
//!
//! 1. sampled from noise with 12, 24 and 48 Euler steps, with each palette's mean foreground
//!    colour and the deciles of the per-image palette score;
//! 2. denoised from exact renders noised to t = 1/12 … 9/12 on the same 12-step grid.
//!
//! ```text
//! cargo run --release --example synth_base_diagnose -- [--base DIR]
//! ```

use std::path::PathBuf;

use burn::backend::Flex;
use clap::Parser;
use image::RgbImage;
use premier::mmdit::{img_ids, pack, txt_ids};
use premier::pipeline::{denoise, seeded_noise};
use premier::synth::base::{shipped_base_dir, SynthBase};
use premier::synth::codec::{decode, encode, PatchCodec, LATENT_HW};
use premier::synth::render::{render, Jitter};
use premier::synth::sample::sample;
use premier::synth::score::{analyse, factor_scores, prompt_fidelity};
use premier::synth::text::load_tokenizer;
use premier::synth::world::{Content, Style, Taste, FACTORS, PALETTE};

#[derive(Debug, Parser)]
struct Args {
    /// Base model folder (default: the one shipped with premier-synth).
    #[arg(long)]
    base: Option<PathBuf>,
}

/// Every content with each palette once; the other factors cycle.
fn styles() -> Vec<(Content, Style)> {
    let mut out = Vec::new();
    for (ci, content) in Content::all().into_iter().enumerate() {
        for palette in 0..PALETTE.len() {
            let h = ci * PALETTE.len() + palette;
            let style = Style {
                palette,
                background: (h / 4 + ci) % 3,
                texture: (h / 3) % 2,
                pattern: (h / 5) % 2,
            };
            out.push((content, style));
        }
    }
    out
}

/// Mean factor scores and prompt fidelity.
fn scores(images: &[RgbImage], cases: &[(Content, Style)]) -> ([f64; FACTORS], f64) {
    let n = images.len() as f64;
    let (mut factors, mut fidelity) = ([0.0f64; FACTORS], 0.0);
    for (image, (content, style)) in images.iter().zip(cases) {
        let s = factor_scores(image, &Taste::of(style));
        for f in 0..FACTORS {
            factors[f] += s[f] as f64 / n;
        }
        fidelity += prompt_fidelity(image, content) as f64 / n;
    }
    (factors, fidelity)
}

fn main() -> anyhow::Result<()> {
    premier::allocator::retain_freed_memory();
    let args = Args::parse();
    let dir = args.base.unwrap_or_else(shipped_base_dir);
    let device = Default::default();
    let (base, _) = SynthBase::<Flex>::load(&dir, &device)?;
    let tokenizer = load_tokenizer(&dir)?;
    let cases = styles();
    let n = cases.len();
    let prompts: Vec<String> = cases.iter().map(|(c, s)| c.prompt_with_style(s)).collect();
    let refs: Vec<&str> = prompts.iter().map(|s| s.as_str()).collect();
    let text = base.text.encode(&tokenizer, &refs)?;
    println!("factors: palette, background, texture, pattern");

    let seeds: Vec<u64> = (0..n as u64).map(|i| 1000 + i).collect();
    for steps in [12, 24, 48] {
        let images = sample(&base.flux, &text, None, &seeds, steps)?;
        let (factors, fidelity) = scores(&images, &cases);
        println!("from noise, {steps} steps: factors {factors:.3?}, fidelity {fidelity:.3}");
        let mut palette: Vec<f32> = images
            .iter()
            .zip(&cases)
            .map(|(image, (_, style))| factor_scores(image, &Taste::of(style))[0])
            .collect();
        palette.sort_by(f32::total_cmp);
        let deciles: Vec<f32> = (0..10).map(|d| palette[d * n / 10]).collect();
        println!("  palette score deciles {deciles:.2?}");
        for (p, (name, prototype)) in PALETTE.iter().enumerate() {
            let colours: Vec<[f32; 3]> = images
                .iter()
                .zip(&cases)
                .filter(|(_, (_, style))| style.palette == p)
                .filter_map(|(image, _)| analyse(image).foreground)
                .collect();
            let mean: [f32; 3] = std::array::from_fn(|c| {
                colours.iter().map(|v| v[c] * 255.0).sum::<f32>() / colours.len().max(1) as f32
            });
            println!("  {name:6} mean foreground {mean:.0?}, prototype {prototype:?}");
        }
    }

    let renders: Vec<RgbImage> = cases
        .iter()
        .map(|(c, s)| render(*c, *s, &Jitter::default()))
        .collect();
    let x0 = encode::<Flex>(&renders.iter().collect::<Vec<_>>(), &device);
    let noise_seeds: Vec<u64> = (0..n as u64).map(|i| 5000 + i).collect();
    let (h, w) = LATENT_HW;
    // The sampler's noise: drawn in the codec's latent space, then packed into tokens.
    let noise = pack(seeded_noise::<Flex>(
        &noise_seeds,
        PatchCodec::SPACE.channels,
        h,
        w,
        &device,
    ));
    for k in [1usize, 2, 3, 6, 9] {
        let t0 = k as f32 / 12.0;
        let grid: Vec<f32> = (0..=k).map(|i| t0 * (1.0 - i as f32 / k as f32)).collect();
        let noised = x0.clone() * (1.0 - t0) + noise.clone() * t0;
        let out = denoise(
            &base.flux,
            noised,
            img_ids(n, h, w, &device),
            text.tokens.clone(),
            txt_ids(n, text.tokens.dims()[1], &device),
            text.pooled.clone(),
            None,
            &grid,
            None,
            &mut (),
        )?;
        let (factors, fidelity) = scores(&decode(out), &cases);
        println!(
            "from renders noised to t = {k}/12: factors {factors:.3?}, fidelity {fidelity:.3}"
        );
    }
    Ok(())
}
