//! Pretrains the synthetic world's base model (the one shipped in `crates/premier-synth/base/`)
//! and writes a sample grid and its prompt fidelity.
//!
//! ```text
//! cargo run --release --example synth_pretrain -- [--steps N] [--batch N] [--lr X] [--hidden N]
//!     [--heads N] [--seed 0] [--init-from DIR] [--ema 0.999] [--workers 2] [--out DIR]
//! ```
//!
//! `--init-from DIR` trains an existing base further (its width and heads; a fresh optimizer and
//! schedule); give it another `--seed` than the run that made it, so its images are new.

use std::path::PathBuf;
use std::time::Instant;

use burn::backend::{Autodiff, Flex};
use clap::Parser;
use premier::pipeline::image_io::{grid, save_png};
use premier::synth::base::{SynthBase, SynthBaseConfig};
use premier::synth::pretrain::{continue_pretraining, pretrain, PretrainConfig};
use premier::synth::quality::{base_quality, BaseQuality};
use premier::synth::sample::{sample, SAMPLING_STEPS};
use premier::synth::score::prompt_fidelity;
use premier::synth::text::{build_tokenizer, MAX_TOKENS};
use premier::synth::world::Content;
use premier::text::PromptTokenizer;

/// Pretrains the synthetic world's base model.
#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value_t = PretrainConfig::default().steps)]
    steps: usize,
    #[arg(long, default_value_t = PretrainConfig::default().batch_size)]
    batch: usize,
    #[arg(long, default_value_t = PretrainConfig::default().lr)]
    lr: f64,
    /// Transformer width (the shipped base's by default).
    #[arg(long, default_value_t = SynthBaseConfig::default().flux.hidden_size)]
    hidden: usize,
    /// Attention heads (head width = hidden / heads, split over the RoPE axes 1:3:3 as shipped).
    #[arg(long, default_value_t = SynthBaseConfig::default().flux.num_heads)]
    heads: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output folder (default: the shipped base folder, overwritten in place).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Start from the base in this folder instead of a fresh draw.
    #[arg(long)]
    init_from: Option<PathBuf>,
    /// Linear warmup steps before the cosine decay.
    #[arg(long, default_value_t = PretrainConfig::default().warmup_steps)]
    warmup: usize,
    /// Return an exponential moving average of the weights with this decay per step (e.g.
    /// 0.999) instead of the last weights.
    #[arg(long)]
    ema: Option<f64>,
    /// Threads each batch is split over (1, the default, is the path that made the shipped
    /// bases; more is the same step up to float rounding).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Seeds of the quality check's random styles and noise, comma-separated (one check each).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    check_seeds: Vec<u64>,
    /// Train nothing: print the quality check of the base already in the output folder.
    #[arg(long)]
    check_only: bool,
}

fn main() -> anyhow::Result<()> {
    premier::allocator::retain_freed_memory();
    let args = Args::parse();
    let config = PretrainConfig {
        steps: args.steps,
        batch_size: args.batch,
        lr: args.lr,
        seed: args.seed,
        warmup_steps: args.warmup,
        ema_decay: args.ema,
        workers: args.workers,
    };
    if let Some(decay) = args.ema {
        anyhow::ensure!(
            (0.0..1.0).contains(&decay),
            "--ema {decay}: must be in [0, 1)"
        );
    }
    anyhow::ensure!(args.workers >= 1, "--workers must be at least 1");
    let out = args
        .out
        .unwrap_or_else(premier::synth::base::shipped_base_dir);
    let device = Default::default();
    if args.check_only {
        let (model, _) = SynthBase::<Flex>::load(&out, &device)?;
        let tokenizer = premier::synth::text::load_tokenizer(&out)?;
        for &seed in &args.check_seeds {
            print_quality(seed, &base_quality(&model, &tokenizer, 8, seed)?);
        }
        return Ok(());
    }
    let (start_from, base_config) = match &args.init_from {
        Some(dir) => {
            let (model, config) = SynthBase::<Autodiff<Flex>>::load(dir, &device)?;
            (Some(model), config)
        }
        None => (None, SynthBaseConfig::with_width(args.hidden, args.heads)?),
    };

    // The tokenizer is written first so training reads the same file the shipped model uses.
    std::fs::create_dir_all(&out)?;
    let tokenizer_path = out.join("tokenizer.json");
    build_tokenizer()
        .map_err(anyhow::Error::msg)?
        .save(&tokenizer_path, true)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let tokenizer = PromptTokenizer::from_file(&tokenizer_path, MAX_TOKENS, 0, "[PAD]")?;

    let start = Instant::now();
    let mut recent = Vec::new();
    let log = |step: usize, loss: f64| {
        recent.push(loss);
        if step % 100 == 0 || step == config.steps {
            let mean = recent.iter().sum::<f64>() / recent.len() as f64;
            recent.clear();
            println!(
                "step {step:5}/{}  loss {mean:.4}  lr {:.2e}  {:.1} s",
                config.steps,
                config.lr_at(step - 1),
                start.elapsed().as_secs_f64()
            );
        }
    };
    let model = match start_from {
        Some(model) => continue_pretraining(model, &config, &tokenizer, &device, log)?,
        None => pretrain::<Autodiff<Flex>>(&base_config, &config, &tokenizer, &device, log)?,
    };
    let model: SynthBase<Flex> = burn::module::AutodiffModule::valid(&model);
    model.save(&base_config, &out)?;
    println!("wrote {}", out.display());

    // A grid: a row per seed, a column per content; fidelity over all 18 contents × 4 seeds.
    let contents = Content::all();
    let prompts: Vec<String> = contents.iter().map(|c| c.prompt()).collect();
    let mut rows = Vec::new();
    let mut fidelity = 0.0;
    for seed in 0..4u64 {
        let refs: Vec<&str> = prompts.iter().map(|s| s.as_str()).collect();
        let text = model.text.encode(&tokenizer, &refs)?;
        let seeds: Vec<u64> = (0..refs.len() as u64).map(|i| seed * 1000 + i).collect();
        let images = sample(&model.flux, &text, None, &seeds, SAMPLING_STEPS)?;
        for (image, content) in images.iter().zip(&contents) {
            fidelity += prompt_fidelity(image, content) as f64;
        }
        rows.push(images);
    }
    fidelity /= (4 * contents.len()) as f64;
    save_png(&grid(&rows, 2), out.join("samples.png"))?;
    println!("prompt fidelity of the base (18 prompts × 4 seeds): {fidelity:.3}");
    for &seed in &args.check_seeds {
        print_quality(seed, &base_quality(&model, &tokenizer, 8, seed)?);
    }
    println!("total {:.1} s", start.elapsed().as_secs_f64());
    Ok(())
}

fn print_quality(seed: u64, quality: &BaseQuality) {
    println!(
        "check seed {seed}: told the style in words ({} images): palette {:.3}, background \
         {:.3}, texture {:.3}, \
         pattern (no words) {:.3}; worded mean {:.3} (tokens only {:.3}, pooled only {:.3}); \
         prompt fidelity told {:.3}, plain {:.3}",
        quality.images,
        quality.told_factors[0],
        quality.told_factors[1],
        quality.told_factors[2],
        quality.told_factors[3],
        quality.told_worded,
        quality.tokens_only_worded,
        quality.pooled_only_worded,
        quality.told_fidelity,
        quality.fidelity
    );
}
