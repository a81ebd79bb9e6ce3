//! The quickstart experiment: the paper's claims in miniature on a drawn world.
//!
//! Stage 1 trains the adapters and the user table on the world's trained users through the
//! frozen base (and, with `ablations`, the paper's ablations; with `dispersions`, the other
//! dispersion losses);
//! stage 2 cold-starts all new users at once from 2, 4 and 8 images (linear combination and
//! direct embedding, with the same optimizer); every method generates the same prompts × noise
//! seeds and is scored from pixels only ([`crate::evaluate`]), and the claims are decided in
//! [`crate::report`]. Independent work runs on two threads.
//!
//! By concern: `config` (what runs), `train` (encoding, stage 1, cold starts), `results` (claims,
//! grid, files); this module runs them in order.

mod config;
mod results;
mod train;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use image::RgbImage;
use premier_mmdit::FluxAutodiffBackend;
use premier_pipeline::image_io::{grid, save_png};
use premier_train::stage1::Stage1Model;

use crate::base::{BaseError, SynthBase};
use crate::evaluate::{EvalSet, ImageScore, Method};
use crate::report::{Report, Row, RunEnd};
use crate::text::load_tokenizer;
use crate::world::{World, WorldConfig};

use config::stage1_variants;
pub use config::ExperimentConfig;
use results::{decide_claims, grid_tiles, upscale, write_atomic};
use train::{
    cold_start_config, cold_start_trainer, encode_world, fit_cold_start, select_rows, stage1_dir,
    train_variant, users_of,
};

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
    let encoded = encode_world(&world, &base_inner, &tokenizer)?;
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
    // The stage-1 runs and the methods that need no training share the two threads (a run's
    // initialisation does not depend on what the other thread draws).
    let (first_new, all) = (world.config.train_users, world.users.len());
    enum Done<B: AutodiffBackend> {
        Trained(Result<(Stage1Model<B>, RunEnd), ExperimentError>),
        Fixed(Result<([Vec<ImageScore>; 4], [Vec<ImageScore>; 4]), String>),
    }
    let mut jobs: Vec<Box<dyn FnOnce() -> Done<B> + Send + '_>> = vec![Box::new(|| {
        Done::Fixed(untrained(&train_users).and_then(|old| Ok((old, untrained(&new_users)?))))
    })];
    for variant in &variants {
        let dir = stage1_dir(out, variant);
        let data = users_of(&encoded, 0..first_new, usize::MAX);
        let (flux, tick) = (&base.flux, &tick);
        jobs.push(Box::new(move || {
            Done::Trained(train_variant(
                config, flux, data, *variant, &dir, tick, device,
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
        // A run folder `premier generate --synth-base` loads, as `premier train` writes it.
        for file in [
            "metrics.jsonl",
            "loss.png",
            "mod_adapter.safetensors",
            "user_embedding.safetensors",
            premier_train::run::TRAINED_MODEL_FILE,
        ] {
            files.push(dir.join(file));
        }
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
            let data = users_of(&encoded, first_new..all, shots);
            let cold = cold_start_config(config, shots, direct);
            let (world, eval, tokenizer, new_users) = (&world, &eval, &tokenizer, &new_users);
            let (base_inner, tick) = (&base_inner, &tick);
            let dir = out.join(format!(
                "cold-start-{}-{shots}",
                if direct { "direct" } else { "linear" }
            ));
            let job = move || -> Result<Vec<RgbImage>, String> {
                fit_cold_start(&mut trainer, data, &cold, &dir, device)?;
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

/// Where the quickstart writes seed `seed` under `out`.
pub fn seed_dir(out: &Path, seed: u64) -> PathBuf {
    out.join(format!("seed-{seed}"))
}
