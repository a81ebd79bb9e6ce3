//! The quickstart experiment: the paper's claims in miniature on a drawn world.
//!
//! Stage 1 trains the adapters and the user table on the world's trained users through the
//! frozen base (and, with `ablations`, the paper's ablations; with `dispersions`, the other
//! dispersion losses);
//! stage 2 cold-starts all new users at once from 2, 4 and 8 images (linear combination and
//! direct embedding, with the same optimizer); every method generates the same prompts × noise
//! seeds and is scored from pixels only ([`crate::evaluate`]), and the claims are decided in
//! [`crate::report`]. Independent work runs on two threads.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use image::RgbImage;
use premier_adapter::{AdapterConfig, AdapterInit, PreferenceAdapter};
use premier_io::write_via_temp;
use premier_losses::DispersionVariant;
use premier_mmdit::{Flux, FluxAutodiffBackend, FluxOps};
use premier_pipeline::image_io::{grid, save_png};
use premier_text::{PromptTokenizer, TextConditioning};
use premier_train::metrics::{write_loss_curve, MetricRecord, MetricsLog};
use premier_train::prodigy::ProdigyConfig;
use premier_train::sampler::UserBatchSampler;
use premier_train::schedule::StepDecay;
use premier_train::stage1::{Stage1Batch, Stage1Config, Stage1Model, Stage1Trainer};
use premier_train::stage2::{
    ColdStartOptimizer, NewUser, Stage2Batch, Stage2Config, Stage2Trainer,
};
use premier_users::{LinearCombination, UserEmbedding, UserShape, UserTable};
use serde::{Deserialize, Serialize};

use crate::base::{BaseError, SynthBase};
use crate::codec::{encode, LATENT_HW};
use crate::evaluate::{EvalSet, ImageScore, Method};
use crate::render::{render, Jitter};
use crate::report::{Claim, Report, Row, RunEnd};
use crate::text::load_tokenizer;
use crate::world::{Content, World, WorldConfig};

/// What the experiment runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperimentConfig {
    /// Draws the world (users, tastes, images) and all training randomness.
    pub seed: u64,
    /// How the world is drawn (users, images per user).
    pub world: WorldConfig,
    /// Stage-1 optimizer steps.
    pub stage1_steps: usize,
    /// Stage-1 samples per step (distinct users).
    pub batch_size: usize,
    /// Prodigy's initial step size estimate in stage 1 (the paper's 1e-6 spends most of a short
    /// run warming up; see docs/synth.md).
    pub stage1_d0: f64,
    /// Prodigy's bound on d's growth per step in stage 1 (`None`: unbounded, as released; 1
    /// freezes d at d0, which makes Prodigy Adam with learning rate d0).
    #[serde(default)]
    pub stage1_growth_rate: Option<f64>,
    /// How stage 1's step ends: constant (released) or a cosine decay (docs/synth.md, fourth
    /// amendment). Reports written before the field existed ran a constant step.
    #[serde(default)]
    pub stage1_decay: StepDecay,
    /// Threads each stage-1 batch is split over (the same step up to float rounding; reports
    /// written before the field existed ran on one).
    #[serde(default = "one")]
    pub stage1_workers: usize,
    /// How the adapters are drawn (`FanInMatched`: the released per-layer gain at this width;
    /// the released N(0, 0.01²) starves the user path at width 64, docs/synth.md). Reports
    /// written before the field existed used the released draw, hence the serde default.
    #[serde(default)]
    pub adapter_init: AdapterInit,
    /// The dispersion loss of the full model (`None`: without).
    pub dispersion: Option<DispersionVariant>,
    /// Cold-start optimizer steps.
    pub cold_start_steps: usize,
    /// Images of each new user per cold-start step.
    pub cold_start_batch: usize,
    /// The cold start's optimizer, the same for linear and direct.
    pub cold_start_optimizer: ColdStartOptimizer,
    /// Images a new user gives, one cold start each.
    pub shots: Vec<usize>,
    /// Prompts evaluated (spread over all contents).
    pub eval_prompts: usize,
    /// Noise seeds per prompt.
    pub eval_seeds: usize,
    /// User embedding: tokens × width.
    pub user_tokens: usize,
    /// Width of a user token.
    pub user_dim: usize,
    /// Also run the paper's stage-1 ablations (w/o Δ_shared, w/o Δ_distinct, the dispersion
    /// loss on or off).
    pub ablations: bool,
    /// Also run the other dispersion losses (paper L2, released squared L2, Wang & He).
    #[serde(default)]
    pub dispersions: bool,
}

impl Default for ExperimentConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            world: WorldConfig::default(),
            // The plateau of seed 0's training-image loss curves (third amendment,
            // docs/synth.md): 90 % of the best gain of 4800 steps is reached by step 4000.
            stage1_steps: 4000,
            batch_size: 8,
            stage1_d0: 1e-4,
            stage1_growth_rate: None,
            stage1_decay: StepDecay::None,
            // Both cores of the 2-core machine the quickstart is timed on.
            stage1_workers: 2,
            adapter_init: AdapterInit::FanInMatched,
            // No dispersion loss, by the rule of docs/synth.md's fourth amendment: on the five
            // seeds that trained both at 4000 steps it gained 0.079 more than the hinge
            // (≥ 4 pooled s.e.), and its Δ passed the runaway cut. The library's default
            // (`Stage1Config::default()`, for real FLUX) stays the bounded hinge.
            dispersion: None,
            cold_start_steps: 150,
            cold_start_batch: 2,
            cold_start_optimizer: ColdStartOptimizer::AdamW(
                premier_train::adamw::AdamWConfig::premier_cold_start(),
            ),
            shots: vec![2, 4, 8],
            eval_prompts: 6,
            eval_seeds: 2,
            user_tokens: 4,
            user_dim: 32,
            ablations: false,
            dispersions: false,
        }
    }
}

fn one() -> usize {
    1
}

impl ExperimentConfig {
    /// A few steps of everything, for tests.
    pub fn smoke() -> Self {
        Self {
            world: WorldConfig {
                train_users: 4,
                new_users: 2,
                images_per_user: 8,
                ..WorldConfig::default()
            },
            stage1_steps: 3,
            batch_size: 4,
            cold_start_steps: 2,
            shots: vec![2],
            eval_prompts: 2,
            eval_seeds: 1,
            ..Self::default()
        }
    }
}

/// Errors of the experiment.
#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    #[error(transparent)]
    /// Loading or running the base model.
    Base(#[from] BaseError),
    #[error("{0}")]
    /// A training run or a file write (what went wrong is said).
    Run(String),
}

fn run_err(e: impl std::fmt::Display) -> ExperimentError {
    ExperimentError::Run(e.to_string())
}

/// Told what the experiment is doing (from any of its threads).
pub trait Progress: Send {
    /// A new phase of `total` units.
    fn phase(&mut self, name: &str, total: u64);
    /// One unit done.
    fn tick(&mut self, message: &str);
}

impl Progress for () {
    fn phase(&mut self, _: &str, _: u64) {}
    fn tick(&mut self, _: &str) {}
}

/// Encoded prompts and images, shared by all runs.
struct Encoded<B: Backend> {
    /// Conditioning of every content's prompt, in `Content::all()` order.
    prompts: TextConditioning<B>,
    /// Empty prompt `[1, tokens, dim]`.
    null: Tensor<B, 3>,
    /// Per user: packed images `[images, tokens, channels]` and their content indices.
    images: Vec<(Tensor<B, 3>, Vec<usize>)>,
}

/// A stage-1 run.
#[derive(Debug, Clone, Copy)]
struct Variant {
    name: &'static str,
    shared: bool,
    distinct: bool,
    dispersion: Option<DispersionVariant>,
}

/// Runs `jobs` on two threads (each thread takes every other job, in order) and returns their
/// results in the jobs' order.
fn on_two_threads<T: Send>(jobs: Vec<Box<dyn FnOnce() -> T + Send + '_>>) -> Vec<T> {
    let mut slots: Vec<Option<T>> = jobs.iter().map(|_| None).collect();
    let (mut even, mut odd): (Vec<_>, Vec<_>) = (Vec::new(), Vec::new());
    for (i, job) in jobs.into_iter().enumerate() {
        if i % 2 == 0 {
            even.push((i, job));
        } else {
            odd.push((i, job));
        }
    }
    let results = std::thread::scope(|scope| {
        let other = scope.spawn(move || {
            odd.into_iter()
                .map(|(i, job)| (i, job()))
                .collect::<Vec<_>>()
        });
        let mut mine: Vec<(usize, T)> = even.into_iter().map(|(i, job)| (i, job())).collect();
        match other.join() {
            Ok(theirs) => mine.extend(theirs),
            Err(panic) => std::panic::resume_unwind(panic),
        }
        mine
    });
    for (i, r) in results {
        slots[i] = Some(r);
    }
    slots.into_iter().flatten().collect()
}

/// Runs the experiment with the base model in `base_dir`, writing into `out`.
pub fn run<B: FluxAutodiffBackend>(
    config: &ExperimentConfig,
    base_dir: &Path,
    out: &Path,
    device: &B::Device,
    progress: &mut impl Progress,
) -> Result<Report, ExperimentError>
where
    B::Device: Sync,
{
    let start = Instant::now();
    std::fs::create_dir_all(out).map_err(run_err)?;
    let world = World::new(WorldConfig {
        seed: config.seed,
        ..config.world.clone()
    });
    let (base, _) = SynthBase::<B>::load(base_dir, device)?;
    let tokenizer = load_tokenizer(base_dir).map_err(run_err)?;
    let base_inner = base.valid();
    let encoded = encode_world::<B>(&world, &base_inner, &tokenizer)?;
    let eval = EvalSet::new(config.eval_prompts, config.eval_seeds, config.seed);
    let train_users: Vec<usize> = (0..world.config.train_users).collect();
    let new_users: Vec<usize> = (world.config.train_users..world.users.len()).collect();
    let progress = Mutex::new(progress);
    let tick = |message: &str| {
        if let Ok(mut p) = progress.lock() {
            p.tick(message);
        }
    };
    let phase = |name: &str, total: u64| {
        if let Ok(mut p) = progress.lock() {
            p.phase(name, total);
        }
    };

    let variants = stage1_variants(config);
    let mut files = Vec::new();
    // Stage 1 on one thread while the other draws and scores the methods without training.
    let steps: u64 = variants.len() as u64 * config.stage1_steps as u64;
    phase("stage 1 (and the base's images)", steps);
    let untrained = |users: &[usize]| -> Result<[Vec<ImageScore>; 4], String> {
        let draw = |method| eval.generate(&world, &base_inner, &tokenizer, users, method);
        Ok([
            eval.score(&world, users, &draw(Method::Base)?),
            eval.score(&world, users, &draw(Method::TasteInPrompt)?),
            eval.score(&world, users, &eval.references(&world, users, true)),
            eval.score(&world, users, &eval.references(&world, users, false)),
        ])
    };
    // Models are initialised here, in order (the device RNG is shared); then the stage-1 runs
    // and the methods that need no training share the two threads.
    let fresh: Vec<Stage1Model<B>> = variants
        .iter()
        .map(|v| init_stage1(config, &world, &base.flux, &encoded, *v, device))
        .collect::<Result<_, _>>()?;
    enum Done<B: AutodiffBackend> {
        Trained(Result<(Stage1Model<B>, RunEnd), ExperimentError>),
        Fixed(Result<([Vec<ImageScore>; 4], [Vec<ImageScore>; 4]), String>),
    }
    let mut jobs: Vec<Box<dyn FnOnce() -> Done<B> + Send + '_>> = vec![Box::new(|| {
        Done::Fixed(untrained(&train_users).and_then(|old| Ok((old, untrained(&new_users)?))))
    })];
    for (variant, model) in variants.iter().zip(fresh) {
        let dir = stage1_dir(out, variant);
        let (world, flux, encoded, tick) = (&world, &base.flux, &encoded, &tick);
        jobs.push(Box::new(move || {
            Done::Trained(train_stage1(
                config, world, flux, encoded, model, *variant, &dir, tick,
            ))
        }));
    }
    let mut fixed = None;
    let mut trained = Vec::new();
    for done in on_two_threads(jobs) {
        match done {
            Done::Fixed(f) => fixed = Some(f),
            Done::Trained(t) => trained.push(t),
        }
    }
    let ([base_old, told_old, held_old, random_old], [base_new, told_new, held_new, random_new]) =
        fixed
            .ok_or_else(|| run_err("the untrained methods were not drawn"))?
            .map_err(run_err)?;
    let mut stage1 = Vec::new();
    let mut models = Vec::new();
    for (variant, result) in variants.iter().zip(trained) {
        let (model, end) = result?;
        let dir = stage1_dir(out, variant);
        files.push(dir.join("metrics.jsonl"));
        files.push(dir.join("loss.png"));
        stage1.push(RunEnd {
            name: variant.name.into(),
            ..end
        });
        models.push(model);
    }

    // Every stage-1 model's images of the trained users, two at a time.
    phase("images of the trained models", models.len() as u64);
    let inner: Vec<Stage1Model<B::InnerBackend>> = models.iter().map(|m| m.valid()).collect();
    let jobs: Vec<Box<dyn FnOnce() -> Result<Vec<RgbImage>, String> + Send + '_>> = inner
        .iter()
        .map(|model| {
            let job = || {
                let lookup = |users: &[usize]| model.users.lookup(users).map_err(|e| e.to_string());
                let images = eval.generate(
                    &world,
                    &base_inner,
                    &tokenizer,
                    &train_users,
                    Method::Premier(&model.adapter, &lookup),
                );
                tick("images");
                images
            };
            Box::new(job) as Box<dyn FnOnce() -> _ + Send + '_>
        })
        .collect();
    let trained_images = on_two_threads(jobs)
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(run_err)?;

    let mut main = vec![
        Row::new(
            "Base (FLUX, no personalization)",
            base_old.clone(),
            &base_old,
        ),
        Row::new(
            "Taste in the prompt (style words added)",
            told_old,
            &base_old,
        ),
    ];
    let mut ablations = Vec::new();
    for (variant, images) in variants.iter().zip(&trained_images) {
        let row = Row::new(
            variant.name,
            eval.score(&world, &train_users, images),
            &base_old,
        );
        if variant.name == "Premier" {
            main.push(row);
        } else {
            ablations.push(row);
        }
    }
    main.push(Row::new(
        "Reference: held-out images in the user's taste",
        held_old,
        &base_old,
    ));
    main.push(Row::new(
        "Reference: the prompt in a random style",
        random_old,
        &base_old,
    ));

    // The grid: the base, then a row per trained user (up to 8), all from the same noise per
    // column; a column per prompt.
    let premier_inner = inner
        .first()
        .ok_or_else(|| run_err("the full model was not trained"))?;
    let (grid_rows, rows) =
        grid_tiles(&world, &eval, &base_inner, &tokenizer, premier_inner).map_err(run_err)?;
    let grid_path = out.join("grid.png");
    save_png(&upscale(&grid(&rows, 2), 4), &grid_path).map_err(run_err)?;
    files.push(grid_path);

    // Cold start: every (shots, kind) fits all new users in one batch; two runs at a time.
    let premier = models
        .into_iter()
        .next()
        .ok_or_else(|| run_err("the full model was not trained"))?;
    let runs: Vec<(usize, bool)> = config
        .shots
        .iter()
        .flat_map(|&s| [(s, false), (s, true)])
        .collect();
    phase("cold start (all new users at once)", runs.len() as u64);
    let trainers: Vec<_> = runs
        .iter()
        .map(|&(shots, direct)| {
            cold_start_trainer(config, &base.flux, &premier, &world, shots, direct, device)
        })
        .collect();
    let jobs: Vec<Box<dyn FnOnce() -> Result<Vec<RgbImage>, String> + Send + '_>> = trainers
        .into_iter()
        .zip(&runs)
        .map(|(mut trainer, &(shots, direct))| {
            let (world, encoded, eval, tokenizer, new_users) =
                (&world, &encoded, &eval, &tokenizer, &new_users);
            let (base_inner, config, tick) = (&base_inner, config, &tick);
            let dir = out.join(format!(
                "cold-start-{}-{shots}",
                if direct { "direct" } else { "linear" }
            ));
            let job = move || -> Result<Vec<RgbImage>, String> {
                let picks = cold_start_picks(world, shots, config.cold_start_batch);
                std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
                let metrics = dir.join("metrics.jsonl");
                let _ = std::fs::remove_file(&metrics);
                let mut log = MetricsLog::append(&metrics).map_err(|e| e.to_string())?;
                let mut records = Vec::new();
                let started = Instant::now();
                for step in 0..config.cold_start_steps {
                    let batch = cold_start_batch(encoded, &picks, step);
                    let t0 = Instant::now();
                    let report = trainer.step(&batch).map_err(|e| e.to_string())?;
                    let record = MetricRecord {
                        report,
                        it_per_s: 1.0 / t0.elapsed().as_secs_f64().max(1e-9),
                        elapsed_s: started.elapsed().as_secs_f64(),
                    };
                    log.write(&record).map_err(|e| e.to_string())?;
                    records.push(record);
                }
                write_loss_curve(&records, &dir.join("loss.png")).map_err(|e| e.to_string())?;
                let embeddings = trainer.embedding().map_err(|e| e.to_string())?.inner();
                let adapter = trainer.adapter.valid();
                let first = world.config.train_users;
                let lookup = |users: &[usize]| {
                    let ids: Vec<usize> = users.iter().map(|u| u - first).collect();
                    Ok(select_rows(&embeddings, &ids))
                };
                let images = eval.generate(
                    world,
                    base_inner,
                    tokenizer,
                    new_users,
                    Method::Premier(&adapter, &lookup),
                );
                tick(&format!(
                    "{} from {shots} images",
                    if direct { "direct" } else { "linear" }
                ));
                images
            };
            Box::new(job) as Box<dyn FnOnce() -> _ + Send + '_>
        })
        .collect();
    let cold_images = on_two_threads(jobs)
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(run_err)?;
    let mut cold_start = vec![
        Row::new("Base (new users)", base_new.clone(), &base_new),
        Row::new("Taste in the prompt (new users)", told_new, &base_new),
    ];
    for (&(shots, direct), images) in runs.iter().zip(&cold_images) {
        let kind = if direct {
            "Direct embedding"
        } else {
            "Linear combination"
        };
        cold_start.push(Row::new(
            format!("{kind} from {shots} images"),
            eval.score(&world, &new_users, images),
            &base_new,
        ));
    }
    cold_start.push(Row::new(
        "Reference: held-out images in the user's taste",
        held_new,
        &base_new,
    ));
    cold_start.push(Row::new(
        "Reference: the prompt in a random style",
        random_new,
        &base_new,
    ));

    let claims = decide_claims(config, &main, &ablations, &cold_start);
    let find = |name: &str| main.iter().find(|r| r.name.starts_with(name));
    let gap_closed = match (find("Base"), find("Taste in the prompt"), find("Premier")) {
        (Some(b), Some(t), Some(p)) => {
            (p.scores.preference - b.scores.preference)
                / (t.scores.preference - b.scores.preference)
        }
        _ => f64::NAN,
    };
    let report = Report {
        config: config.clone(),
        main,
        ablations,
        cold_start,
        stage1,
        claims,
        gap_closed,
        grid_rows,
        seconds: start.elapsed().as_secs_f64(),
        files: Vec::new(),
    };
    let md = out.join("report.md");
    write_atomic(&md, &report.markdown())?;
    let json = out.join("report.json");
    write_atomic(
        &json,
        &serde_json::to_string_pretty(&report).map_err(run_err)?,
    )?;
    files.push(md);
    files.push(json);
    Ok(Report { files, ..report })
}

/// The full model first, then (with `ablations`) the paper's ablations, then (with
/// `dispersions`) the other dispersion losses.
fn stage1_variants(config: &ExperimentConfig) -> Vec<Variant> {
    let full = Variant {
        name: "Premier",
        shared: true,
        distinct: true,
        dispersion: config.dispersion,
    };
    let with = |name, dispersion| Variant {
        name,
        dispersion: Some(dispersion),
        ..full
    };
    let mut variants = vec![full];
    if config.ablations {
        variants.extend([
            Variant {
                name: "w/o Δ_shared",
                shared: false,
                ..full
            },
            Variant {
                name: "w/o Δ_distinct",
                distinct: false,
                ..full
            },
        ]);
        // The paper's dispersion ablation, whichever side the default is on.
        variants.push(match full.dispersion {
            Some(_) => Variant {
                name: "w/o dispersion loss",
                dispersion: None,
                ..full
            },
            None => with("with the hinge dispersion", DispersionVariant::Hinge),
        });
    }
    if config.dispersions {
        // Every other loss, except the one the model already has and the hinge when the
        // ablation above already trains it.
        let hinge_done = config.ablations && full.dispersion.is_none();
        for (name, loss) in [
            ("the hinge dispersion", DispersionVariant::Hinge),
            (
                "paper dispersion (L2; runs away)",
                DispersionVariant::Stable,
            ),
            (
                "released dispersion (squared L2)",
                DispersionVariant::Released,
            ),
            (
                "Wang & He dispersive loss (τ = 1)",
                DispersionVariant::Dispersive,
            ),
        ] {
            let skip =
                Some(loss) == full.dispersion || (hinge_done && loss == DispersionVariant::Hinge);
            if !skip {
                variants.push(with(name, loss));
            }
        }
    }
    variants
}

/// The paper's claims on this seed.
fn decide_claims(
    config: &ExperimentConfig,
    main: &[Row],
    ablations: &[Row],
    cold_start: &[Row],
) -> Vec<Claim> {
    let find = |rows: &[Row], name: &str| rows.iter().find(|r| r.name.starts_with(name)).cloned();
    let mut out = Vec::new();
    let (Some(base), Some(premier)) = (find(main, "Base"), find(main, "Premier")) else {
        return out;
    };
    out.push(Claim::higher(
        "premier-beats-base",
        "Premier raises preference over the base".into(),
        &premier,
        &base,
    ));
    out.push(Claim::keeps_fidelity(
        "premier-keeps-fidelity",
        "Premier keeps prompt fidelity within 0.05 of the base".into(),
        &premier,
        &base,
    ));
    if let Some(told) = find(main, "Taste in the prompt") {
        out.push(Claim::higher(
            "premier-beats-prompt",
            "Premier beats the taste written in the prompt on preference".into(),
            &premier,
            &told,
        ));
    }
    if let Some(with) = find(ablations, "with the hinge dispersion") {
        out.push(Claim::higher(
            "dispersion-helps",
            "The model with the (hinge) dispersion loss beats the one without on preference".into(),
            &with,
            &premier,
        ));
    }
    for (id, name) in [
        ("shared-helps", "w/o Δ_shared"),
        ("distinct-helps", "w/o Δ_distinct"),
        ("dispersion-helps", "w/o dispersion loss"),
    ] {
        if let Some(ablation) = find(ablations, name) {
            out.push(Claim::higher(
                id,
                format!("The full model beats {name} on preference"),
                &premier,
                &ablation,
            ));
        }
    }
    if let Some(new_base) = find(cold_start, "Base (new users)") {
        for &shots in &config.shots {
            let lin = find(cold_start, &format!("Linear combination from {shots} "));
            let dir = find(cold_start, &format!("Direct embedding from {shots} "));
            if let (Some(lin), Some(dir)) = (lin, dir) {
                out.push(Claim::higher(
                    &format!("linear-beats-direct-{shots}"),
                    format!("With {shots} images the linear combination beats direct training"),
                    &lin,
                    &dir,
                ));
                out.push(Claim::higher(
                    &format!("linear-beats-base-{shots}"),
                    format!("Linear cold start from {shots} images beats the new users' base"),
                    &lin,
                    &new_base,
                ));
            }
        }
    }
    out
}

fn write_atomic(path: &Path, text: &str) -> Result<(), ExperimentError> {
    write_via_temp(path, |tmp| {
        std::fs::write(tmp, text).map_err(|e| e.to_string())
    })
    .map_err(|e| run_err(format!("{}: {e}", path.display())))
}

/// grid.png's tiles and a line per row: the base, then Premier for the first trained users
/// (up to 8); each row starts with a tile of its taste, then a column per prompt, every row from
/// the same noise.
fn grid_tiles<B: FluxOps>(
    world: &World,
    eval: &EvalSet,
    base: &SynthBase<B>,
    tokenizer: &PromptTokenizer,
    premier: &Stage1Model<B>,
) -> Result<(Vec<String>, Vec<Vec<RgbImage>>), String> {
    let shared = EvalSet {
        seeds_per_prompt: 1,
        shared_noise: true,
        ..eval.clone()
    };
    let shown: Vec<usize> = (0..world.config.train_users.min(8)).collect();
    let lookup = |users: &[usize]| premier.users.lookup(users).map_err(|e| e.to_string());
    let base_images = shared.generate(world, base, tokenizer, &shown[..1], Method::Base)?;
    let images = shared.generate(
        world,
        base,
        tokenizer,
        &shown,
        Method::Premier(&premier.adapter, &lookup),
    )?;
    let mut lines = vec!["the base model (no personalization; blank first tile)".to_string()];
    let mut rows = vec![std::iter::once(blank_tile()).chain(base_images).collect()];
    // The taste tile: a large square in the centre in the user's favourite style.
    let swatch = Content {
        shape: 1,
        position: 1,
        size: 1,
    };
    for (&u, tiles) in shown.iter().zip(images.chunks(shared.contents.len())) {
        let taste = world.users[u].taste.mode();
        let label = render(swatch, taste, &Jitter::default());
        rows.push(
            std::iter::once(label)
                .chain(tiles.iter().cloned())
                .collect(),
        );
        let mixed = if world.users[u].taste.is_mixed() {
            " (likes two values of one factor; the tile shows one)"
        } else {
            ""
        };
        lines.push(format!(
            "Premier for {}: {}{mixed}",
            world.users[u].id,
            taste.describe()
        ));
    }
    Ok((lines, rows))
}

/// The base row's first tile: no taste to show.
fn blank_tile() -> RgbImage {
    let n = crate::world::IMAGE_SIZE as u32;
    RgbImage::from_pixel(n, n, image::Rgb([255, 255, 255]))
}

/// Nearest-neighbour upscaling, so 32-pixel tiles are visible.
fn upscale(image: &RgbImage, factor: u32) -> RgbImage {
    image::imageops::resize(
        image,
        image.width() * factor,
        image.height() * factor,
        image::imageops::FilterType::Nearest,
    )
}

fn content_index(c: &Content) -> usize {
    Content::all().iter().position(|x| x == c).unwrap_or(0)
}

fn encode_world<B: AutodiffBackend>(
    world: &World,
    base: &SynthBase<B::InnerBackend>,
    tokenizer: &PromptTokenizer,
) -> Result<Encoded<B>, ExperimentError> {
    let device = base.text.embedding.device();
    let prompts: Vec<String> = Content::all().iter().map(|c| c.prompt()).collect();
    let refs: Vec<&str> = prompts.iter().map(|s| s.as_str()).collect();
    let text = base.text.encode(tokenizer, &refs).map_err(run_err)?;
    let null = base.text.encode(tokenizer, &[""]).map_err(run_err)?;
    let images = (0..world.users.len())
        .map(|u| {
            let liked = world.liked_images(u);
            let rgb: Vec<&RgbImage> = liked.iter().map(|i| &i.rgb).collect();
            (
                Tensor::from_inner(encode::<B::InnerBackend>(&rgb, &device)),
                liked.iter().map(|i| content_index(&i.content)).collect(),
            )
        })
        .collect();
    Ok(Encoded {
        prompts: TextConditioning {
            tokens: Tensor::from_inner(text.tokens),
            pooled: Tensor::from_inner(text.pooled),
        },
        null: Tensor::from_inner(null.tokens),
        images,
    })
}

fn select_rows<B: Backend, const D: usize>(t: &Tensor<B, D>, rows: &[usize]) -> Tensor<B, D> {
    let device = t.device();
    let idx: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
    t.clone().select(
        0,
        Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [rows.len()]), &device),
    )
}

/// Where a stage-1 run writes its metrics and loss curve.
fn stage1_dir(out: &Path, variant: &Variant) -> PathBuf {
    out.join(format!(
        "stage1-{}",
        variant
            .name
            .replace(['/', ' ', '.', '(', ')', '&', ',', ';', '='], "_")
            .replace("Δ_", "")
    ))
}

/// A fresh adapter and user table for `variant` (the same draw for every variant).
fn init_stage1<B: AutodiffBackend>(
    config: &ExperimentConfig,
    world: &World,
    flux: &Flux<B>,
    encoded: &Encoded<B>,
    variant: Variant,
    device: &B::Device,
) -> Result<Stage1Model<B>, ExperimentError> {
    B::seed(device, config.seed.wrapping_add(1));
    let adapter_config = AdapterConfig {
        shared: variant.shared,
        distinct: variant.distinct,
        ..AdapterConfig::small(
            encoded.prompts.tokens.dims()[2],
            config.user_dim,
            flux.hidden_size(),
            flux.depth(),
        )
    };
    let adapter = PreferenceAdapter::<B>::init_with(&adapter_config, config.adapter_init, device)
        .map_err(run_err)?;
    let users = UserTable::<B>::init(
        UserShape {
            users: world.config.train_users,
            tokens: config.user_tokens,
            dim: config.user_dim,
        },
        device,
    );
    Ok(Stage1Model { adapter, users })
}

#[allow(clippy::too_many_arguments)]
fn train_stage1<B: FluxAutodiffBackend>(
    config: &ExperimentConfig,
    world: &World,
    flux: &Flux<B>,
    encoded: &Encoded<B>,
    model: Stage1Model<B>,
    variant: Variant,
    dir: &Path,
    tick: &dyn Fn(&str),
) -> Result<(Stage1Model<B>, RunEnd), ExperimentError> {
    let stage1 = Stage1Config {
        dispersion: variant.dispersion,
        optimizer: ProdigyConfig {
            d0: config.stage1_d0,
            growth_rate: config.stage1_growth_rate.unwrap_or(f64::INFINITY),
            ..ProdigyConfig::premier()
        },
        lr_schedule: config.stage1_decay.schedule(config.stage1_steps as u64),
        seed: config.seed,
        ..Stage1Config::default()
    };
    let mut trainer =
        Stage1Trainer::new(flux.clone(), model, stage1).with_workers(config.stage1_workers);
    let counts: Vec<usize> = (0..world.config.train_users)
        .map(|u| encoded.images[u].1.len())
        .collect();
    let sampler = UserBatchSampler::new(counts, config.batch_size, config.seed).map_err(run_err)?;
    std::fs::create_dir_all(dir).map_err(run_err)?;
    let metrics_path = dir.join("metrics.jsonl");
    let _ = std::fs::remove_file(&metrics_path);
    let mut log = MetricsLog::append(&metrics_path).map_err(run_err)?;
    let mut records = Vec::new();
    let started = Instant::now();
    for step in 0..config.stage1_steps {
        let picks = sampler.batch(step as u64);
        let users: Vec<usize> = picks.iter().map(|p| p.0).collect();
        let x0 = Tensor::cat(
            picks
                .iter()
                .map(|&(u, i)| select_rows(&encoded.images[u].0, &[i]))
                .collect(),
            0,
        );
        let prompt_rows: Vec<usize> = picks.iter().map(|&(u, i)| encoded.images[u].1[i]).collect();
        let batch = Stage1Batch {
            x0,
            latent_hw: LATENT_HW,
            text: select_rows(&encoded.prompts.tokens, &prompt_rows),
            pooled: select_rows(&encoded.prompts.pooled, &prompt_rows),
            users,
            null_text: Some(encoded.null.clone()),
        };
        let t0 = Instant::now();
        let report = trainer.step(&batch).map_err(run_err)?;
        let record = MetricRecord {
            report,
            it_per_s: 1.0 / t0.elapsed().as_secs_f64().max(1e-9),
            elapsed_s: started.elapsed().as_secs_f64(),
        };
        log.write(&record).map_err(run_err)?;
        records.push(record);
        tick(&format!(
            "{}: loss {:.4} Δ/y {:.3} d {:.2e}",
            variant.name, report.loss, report.delta_to_y, report.d
        ));
    }
    write_loss_curve(&records, &dir.join("loss.png")).map_err(run_err)?;
    let tail: Vec<&MetricRecord> = records.iter().rev().take(20).collect();
    let mean = |f: &dyn Fn(&MetricRecord) -> f64| {
        tail.iter().map(|r| f(r)).sum::<f64>() / tail.len().max(1) as f64
    };
    let end = RunEnd {
        name: variant.name.into(),
        flow: mean(&|r| r.report.flow),
        delta_to_y: mean(&|r| r.report.delta_to_y),
        d: records.last().map_or(f64::NAN, |r| r.report.d),
    };
    Ok((trainer.model, end))
}

/// For every new user, the (user, image) pairs it trains on: its first `shots` liked images.
fn cold_start_picks(world: &World, shots: usize, per_step: usize) -> (Vec<Vec<usize>>, usize) {
    let shots = shots.min(world.config.images_per_user).max(1);
    let picks = (world.config.train_users..world.users.len())
        .map(|_| (0..shots).collect())
        .collect();
    (picks, per_step.clamp(1, shots))
}

/// Step `step`'s batch: `per_step` images of every new user, cycling through its shots.
fn cold_start_batch<B: Backend>(
    encoded: &Encoded<B>,
    (picks, per_step): &(Vec<Vec<usize>>, usize),
    step: usize,
) -> Stage2Batch<B> {
    let first_new = encoded.images.len() - picks.len();
    let mut x0 = Vec::new();
    let mut prompt_rows = Vec::new();
    let mut owners = Vec::new();
    for (k, images) in picks.iter().enumerate() {
        let (latents, contents) = &encoded.images[first_new + k];
        for j in 0..*per_step {
            let i = images[(step * per_step + j) % images.len()];
            x0.push(select_rows(latents, &[i]));
            prompt_rows.push(contents[i]);
            owners.push(k);
        }
    }
    Stage2Batch {
        x0: Tensor::cat(x0, 0),
        latent_hw: LATENT_HW,
        text: select_rows(&encoded.prompts.tokens, &prompt_rows),
        pooled: select_rows(&encoded.prompts.pooled, &prompt_rows),
        owners,
    }
}

/// A trainer fitting every new user from `shots` images, initialised here (the device RNG is
/// shared, so inits stay on one thread and in a fixed order).
fn cold_start_trainer<B: AutodiffBackend>(
    config: &ExperimentConfig,
    flux: &Flux<B>,
    model: &Stage1Model<B>,
    world: &World,
    shots: usize,
    direct: bool,
    device: &B::Device,
) -> Stage2Trainer<B> {
    B::seed(
        device,
        config
            .seed
            .wrapping_add(1000 + shots as u64 * 2 + direct as u64),
    );
    let shape = model.users.shape();
    let users = (world.config.train_users..world.users.len())
        .map(|_| {
            if direct {
                NewUser::Direct(UserEmbedding::init_direct(shape.tokens, shape.dim, device))
            } else {
                NewUser::Linear(LinearCombination::init(shape.users, device))
            }
        })
        .collect();
    let stage2 = Stage2Config {
        optimizer: config.cold_start_optimizer.clone(),
        seed: config.seed.wrapping_add(2000 + shots as u64),
        ..Stage2Config::default()
    };
    Stage2Trainer::new_batch(
        flux.clone(),
        model.adapter.clone(),
        model.users.clone(),
        users,
        stage2,
    )
}

/// Where the quickstart writes seed `seed` under `out`.
pub fn seed_dir(out: &Path, seed: u64) -> PathBuf {
    out.join(format!("seed-{seed}"))
}
