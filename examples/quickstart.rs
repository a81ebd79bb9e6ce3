//! Quickstart: Premier end to end on the synthetic preference world, on the CPU.
//!
//! Loads the shipped base model, trains stage 1 (adapters + user table) on the world's users and
//! the three ablations, cold-starts new users from 2, 4 and 8 images (linear combination and
//! direct embedding), generates a grid (the base, then a row per user; a column per prompt) and
//! writes a report of the paper's claims in miniature.
//!
//! ```text
//! cargo run --release --example quickstart -- [--seed N] [--out DIR] [--quick] [--base DIR]
//! ```

use std::path::PathBuf;
use std::time::Duration;

use burn::backend::{Autodiff, Flex};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use premier::synth::base::shipped_base_dir;
use premier::synth::experiment::{run, ExperimentConfig, Progress};

/// One indicatif bar per phase, with ETA.
struct Bars {
    bar: Option<ProgressBar>,
}

impl Progress for Bars {
    fn phase(&mut self, name: &str, total: u64) {
        if let Some(bar) = self.bar.take() {
            bar.finish();
        }
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:>34} [{bar:30}] {pos}/{len} {elapsed_precise} ETA {eta} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(name.to_string());
        bar.enable_steady_tick(Duration::from_millis(500));
        self.bar = Some(bar);
    }

    fn tick(&mut self, message: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(message.to_string());
            bar.inc(1);
        }
    }
}

/// Premier end to end on the synthetic preference world, on the CPU.
#[derive(Debug, Parser)]
struct Args {
    /// Draws the world (users, tastes, held-out images) and all training randomness.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where files go (default: premier-quickstart/seed-N).
    #[arg(long)]
    out: Option<PathBuf>,
    /// A few steps of everything (a smoke run, seconds).
    #[arg(long)]
    quick: bool,
    /// Base model folder (default: the one shipped with premier-synth).
    #[arg(long)]
    base: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut config = if args.quick {
        ExperimentConfig::smoke()
    } else {
        ExperimentConfig::default()
    };
    config.seed = args.seed;
    let out = args
        .out
        .unwrap_or_else(|| PathBuf::from(format!("premier-quickstart/seed-{}", config.seed)));
    println!(
        "Premier quickstart: synthetic preference world, seed {}, on the CPU (burn Flex)",
        config.seed
    );
    let mut bars = Bars { bar: None };
    let device = Default::default();
    let base = args.base.unwrap_or_else(shipped_base_dir);
    let report = run::<Autodiff<Flex>>(&config, &base, &out, &device, &mut bars)?;
    if let Some(bar) = bars.bar.take() {
        bar.finish();
    }
    println!("\n{}", report.markdown());
    println!("Files written:");
    for file in &report.files {
        println!("  {}", file.display());
    }
    Ok(())
}
