//! Quickstart: Premier end to end on the synthetic preference world, on the CPU.
//!
//! Loads the shipped base model, trains stage 1 (adapters + user table) on the world's users,
//! cold-starts all new users at once from 2, 4 and 8 images (linear combination and direct
//! embedding), draws a grid (the base, then a row per user labelled with its taste; a column per
//! prompt) and writes a report of the paper's claims in miniature.
//!
//! ```text
//! cargo run --release --example quickstart -- [--seeds 0,1,2] [--ablations] [--dispersions] [--out DIR]
//!     [--quick] [--base DIR] [--merge] [--adapter-init released] [--dispersion NAME]
//! ```

use std::path::PathBuf;

use burn::backend::{Autodiff, Flex};
use clap::Parser;
use premier::adapter::AdapterInit;
use premier::losses::DispersionVariant;
use premier::synth::base::shipped_base_dir;
use premier::synth::experiment::{run, seed_dir, ExperimentConfig, Progress as ProgressReport};
use premier::synth::report::{summary, Report};
use premier::train::adamw::AdamWConfig;
use premier::train::prodigy::ProdigyConfig;
use premier::train::schedule::StepDecay;
use premier::train::stage2::ColdStartOptimizer;
use premier_cli::progress::Progress;

/// One progress bar per phase, with ETA (plain lines when stderr is not a terminal).
#[derive(Default)]
struct Bars {
    bar: Option<Progress>,
    phase: String,
    done: u64,
}

impl ProgressReport for Bars {
    fn phase(&mut self, name: &str, total: u64) {
        if let Some(bar) = self.bar.take() {
            bar.finish();
        }
        let bar = Progress::new(total, "steps");
        bar.set_message(name);
        (self.phase, self.done) = (name.to_string(), 0);
        self.bar = Some(bar);
    }

    fn tick(&mut self, message: &str) {
        if let Some(bar) = &self.bar {
            self.done += 1;
            bar.set_message(format!("{}: {message}", self.phase));
            bar.set_position(self.done);
        }
    }
}

/// Premier end to end on the synthetic preference world, on the CPU.
#[derive(Debug, Parser)]
struct Args {
    /// World seeds, comma-separated: each draws the users, tastes, held-out images and all
    /// training randomness; with several, a summary of every claim over the seeds is written.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    seeds: Vec<u64>,
    /// Where files go: OUT/seed-N for each seed, OUT/summary.md for several seeds.
    #[arg(long, default_value = "premier-quickstart")]
    out: PathBuf,
    /// Also run the paper's stage-1 ablations (w/o Δ_shared, w/o Δ_distinct, the dispersion loss
    /// on or off; about 8 more minutes per seed).
    #[arg(long)]
    ablations: bool,
    /// Also run the other dispersion losses (paper L2, released squared L2, Wang & He; about 6
    /// more minutes per seed).
    #[arg(long)]
    dispersions: bool,
    /// A few steps of everything (a smoke run, seconds).
    #[arg(long)]
    quick: bool,
    /// Base model folder (default: the one shipped with premier-synth).
    #[arg(long)]
    base: Option<PathBuf>,
    /// Run nothing: read OUT/seed-N/report.json for the given seeds and write the summary.
    #[arg(long)]
    merge: bool,
    /// Replace the reports of seeds that already have one.
    #[arg(long)]
    overwrite: bool,
    /// Stage-1 steps (default: the quickstart's, chosen from measured curves; docs/synth.md).
    #[arg(long)]
    stage1_steps: Option<usize>,
    /// Prodigy's initial d in stage 1 (the paper's is 1e-6).
    #[arg(long)]
    stage1_d0: Option<f64>,
    /// Prodigy's bound on d's growth per step in stage 1 (1 freezes d at d0).
    #[arg(long)]
    stage1_growth_rate: Option<f64>,
    /// How stage 1's step ends: constant, cosine (over the whole run) or cosine-tail:N (the
    /// last N steps).
    #[arg(long)]
    stage1_lr_schedule: Option<StepDecay>,
    /// Threads each stage-1 batch is split over (default 2, both cores; the same step up to
    /// float rounding).
    #[arg(long)]
    stage1_workers: Option<usize>,
    /// Cold-start steps.
    #[arg(long)]
    cold_start_steps: Option<usize>,
    /// Cold-start optimizer for both linear and direct: "adamw" (lr 0.01, the released linear
    /// config) or "prodigy" (the released direct config, with the stage-1 d0).
    #[arg(long)]
    cold_start_optimizer: Option<String>,
    /// Adapter init: "fan-in-matched" (default: the released per-layer gain at this width) or
    /// "released" (N(0, 0.01²), the official settings).
    #[arg(long)]
    adapter_init: Option<String>,
    /// The full model's dispersion loss: Hinge, Stable, Released, Dispersive or None.
    #[arg(long)]
    dispersion: Option<String>,
}

fn main() -> anyhow::Result<()> {
    premier::allocator::retain_freed_memory();
    let args = Args::parse();
    let base = args.base.clone().unwrap_or_else(shipped_base_dir);
    let mut reports = Vec::new();
    for &seed in &args.seeds {
        let dir = seed_dir(&args.out, seed);
        let json = dir.join("report.json");
        if args.merge {
            let text = std::fs::read_to_string(&json)
                .map_err(|e| anyhow::anyhow!("{}: {e}", json.display()))?;
            reports.push(
                serde_json::from_str::<Report>(&text)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", json.display()))?,
            );
            continue;
        }
        if json.exists() && !args.overwrite {
            anyhow::bail!(
                "{} exists: pass --overwrite to replace it, --merge to summarise it, or --out \
                 for another folder",
                json.display()
            );
        }
        let mut config = if args.quick {
            ExperimentConfig::smoke()
        } else {
            ExperimentConfig::default()
        };
        config.seed = seed;
        config.ablations = args.ablations;
        config.dispersions = args.dispersions;
        if let Some(steps) = args.stage1_steps {
            config.stage1_steps = steps;
        }
        if let Some(d0) = args.stage1_d0 {
            anyhow::ensure!(d0.is_finite() && d0 > 0.0, "--stage1-d0 must be positive");
            config.stage1_d0 = d0;
        }
        if let Some(rate) = args.stage1_growth_rate {
            anyhow::ensure!(rate >= 1.0, "--stage1-growth-rate must be at least 1");
            config.stage1_growth_rate = Some(rate);
        }
        if let Some(decay) = args.stage1_lr_schedule {
            config.stage1_decay = decay;
        }
        if let Some(workers) = args.stage1_workers {
            anyhow::ensure!(workers >= 1, "--stage1-workers must be at least 1");
            config.stage1_workers = workers;
        }
        if let Some(steps) = args.cold_start_steps {
            config.cold_start_steps = steps;
        }
        if let Some(name) = &args.cold_start_optimizer {
            config.cold_start_optimizer = match name.as_str() {
                "adamw" => ColdStartOptimizer::AdamW(AdamWConfig::premier_cold_start()),
                "prodigy" => ColdStartOptimizer::Prodigy(ProdigyConfig {
                    d0: config.stage1_d0,
                    ..ProdigyConfig::premier()
                }),
                other => anyhow::bail!("--cold-start-optimizer {other}: expected adamw or prodigy"),
            };
        }
        if let Some(name) = &args.adapter_init {
            config.adapter_init = name
                .parse::<AdapterInit>()
                .map_err(|e| anyhow::anyhow!("--adapter-init: {e}"))?;
        }
        if let Some(name) = &args.dispersion {
            config.dispersion = DispersionVariant::parse_choice(name)
                .map_err(|e| anyhow::anyhow!("--dispersion: {e}"))?;
        }
        println!(
            "Premier quickstart: synthetic preference world, seed {seed}, on the CPU (burn Flex)"
        );
        let mut bars = Bars::default();
        let report = run::<Autodiff<Flex>>(&config, &base, &dir, &Default::default(), &mut bars)?;
        if let Some(bar) = bars.bar.take() {
            bar.finish();
        }
        println!("\n{}", report.markdown());
        println!("Files written:");
        for file in &report.files {
            println!("  {}", file.display());
        }
        reports.push(report);
    }
    if reports.len() > 1 {
        let text = summary(&reports);
        let path = args.out.join("summary.md");
        std::fs::create_dir_all(&args.out)?;
        premier::io::write_via_temp(&path, |tmp| {
            std::fs::write(tmp, &text).map_err(|e| e.to_string())
        })
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        println!("{text}\nwrote {}", path.display());
    }
    Ok(())
}
