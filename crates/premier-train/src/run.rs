//! Whole training runs over an encoder cache, as `premier train` and `premier cold-start` do them:
//! the step loop with batches of distinct users, gradient accumulation, checkpoints every N steps
//! (keep K, resume), metrics each step, validation every M steps, and the final files.
//!
//! Layout of a stage-1 run folder:
//! - `config.toml`: the resolved [`TrainConfig`];
//! - `checkpoints/step-NNNNNNNN/` (see [`crate::checkpoint`]);
//! - `metrics.jsonl` and `loss.png`;
//! - `mod_adapter.safetensors` and `user_embedding.safetensors`: the final weights, in the
//!   released layouts, and `premier.json` ([`TrainedModel`]: their sizes and the user ids in
//!   table-row order).

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;
use premier_adapter::{AdapterConfig, AdapterInit, PreferenceAdapter};
use premier_io::{write_via_temp, SaveDtype};
use premier_mmdit::{Flux, FluxAutodiffBackend};
use premier_users::{UserShape, UserTable};
use serde::{Deserialize, Serialize};

use crate::batches::{CachedUsers, SampleDims};
use crate::cache::CacheError;
use crate::checkpoint::{
    drop_checkpoints_after, latest_checkpoint, load_stage1, load_stage2, read_stage1_state,
    read_stage2_state, save_stage1, save_stage2, CheckpointError, CheckpointState,
    ColdStartSettings, RunSettings,
};
pub use crate::config_file::config_from_toml;
use crate::config_file::first_difference;
use crate::metrics::{read_metrics, write_loss_curve, MetricRecord, MetricsError, MetricsLog};
use crate::new_user::{fit_new_user, fresh_new_user};
use crate::sampler::UserBatchSampler;
use crate::stage1::{Stage1Batch, Stage1Config, Stage1Model, Stage1Trainer, TrainError};
use crate::stage2::{Stage2Config, Stage2Trainer};

/// Everything a stage-1 run is configured by (the TOML file of `premier train`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Optimizer steps of the whole run (a resumed run stops at the same step).
    pub steps: u64,
    /// Samples per micro-batch, of distinct users while there are enough users.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Write a checkpoint every this many steps (and at the end); 0: only at the end.
    pub checkpoint_every: u64,
    /// Checkpoints kept (the newest; at least 1).
    pub keep_checkpoints: usize,
    /// Validation images every this many steps; 0: never.
    pub validate_every: u64,
    /// Users shown in validation grids (the first ones of the table).
    pub validation_users: usize,
    /// Prompts of the validation grid; empty: the first captions of the dataset.
    pub validation_prompts: Vec<String>,
    /// Distilled guidance of the validation images (Premier's evaluation: 2.5; models without
    /// guidance embedding ignore it).
    pub validation_guidance: f32,
    /// Tokens per user embedding (released: 30).
    pub user_tokens: usize,
    /// Width of a user token (released: 1024).
    pub user_dim: usize,
    /// Width inside the resamplers (released: 3072).
    pub adapter_width: usize,
    /// Attention heads of the resamplers (released: 8).
    pub adapter_heads: usize,
    /// Layers of each resampler (released: 3).
    pub adapter_layers: usize,
    /// Build Δ_shared (false: the "w/o Δ_shared" ablation).
    pub shared: bool,
    /// Build Δ_distinct (false: the "w/o Δ_distinct" ablation).
    pub distinct: bool,
    /// How a fresh adapter is drawn: `Released` (N(0, 0.01²)), or `FanInMatched` (the released
    /// per-layer gain at any size; the same as `Released` at the released sizes).
    pub adapter_init: AdapterInit,
    /// Threads each micro-batch's rows are split over on one device (useful on CPUs; the same
    /// step up to the order of float additions, `Stage1Trainer::with_workers`).
    pub workers: usize,
    /// The objective, optimizer and seed (`[stage1]`).
    pub stage1: Stage1Config,
}

impl Default for TrainConfig {
    /// The released run's sizes and settings.
    fn default() -> Self {
        Self {
            steps: 260_000,
            batch_size: 2,
            grad_accum: 1,
            checkpoint_every: 1000,
            keep_checkpoints: 3,
            validate_every: 5000,
            validation_users: 4,
            validation_prompts: Vec::new(),
            validation_guidance: 2.5,
            user_tokens: 30,
            user_dim: 1024,
            adapter_width: 3072,
            adapter_heads: 8,
            adapter_layers: 3,
            shared: true,
            distinct: true,
            adapter_init: AdapterInit::Released,
            workers: 1,
            stage1: Stage1Config::default(),
        }
    }
}

impl TrainConfig {
    /// Sizes of the quickstart experiment on the synthetic world (tiny base model).
    pub fn synth() -> Self {
        Self {
            steps: 300,
            batch_size: 8,
            checkpoint_every: 100,
            validate_every: 100,
            user_tokens: 4,
            user_dim: 32,
            adapter_heads: 2,
            adapter_layers: 2,
            // 0: the backbone's width.
            adapter_width: 0,
            // At width 64 the released 0.01 starves the user path (docs/synth.md).
            adapter_init: AdapterInit::FanInMatched,
            ..Self::default()
        }
    }

    /// `text` (TOML) over `defaults` (see [`config_from_toml`]).
    pub fn from_toml(text: &str, defaults: &Self) -> Result<Self, String> {
        config_from_toml(text, defaults)
    }

    /// The config as TOML (as written to a run's `config.toml`).
    pub fn to_toml(&self) -> Result<String, String> {
        toml::to_string_pretty(self).map_err(|e| e.to_string())
    }

    /// The adapter for a backbone of width `hidden` with `blocks` double blocks, reading T5
    /// tokens of width `text_dim`.
    pub fn adapter(&self, text_dim: usize, hidden: usize, blocks: usize) -> AdapterConfig {
        AdapterConfig {
            text_dim,
            user_dim: self.user_dim,
            width: if self.adapter_width == 0 {
                hidden
            } else {
                self.adapter_width
            },
            heads: self.adapter_heads,
            layers: self.adapter_layers,
            hidden,
            blocks,
            shared: self.shared,
            distinct: self.distinct,
        }
    }
}

/// `premier.json` beside a run's final weights: the sizes needed to load them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainedModel {
    /// The adapters' sizes.
    pub adapter: AdapterConfig,
    /// The user table's shape.
    pub users: UserShape,
    /// User ids in table-row order.
    pub ids: Vec<String>,
}

/// File name of [`TrainedModel`].
pub const TRAINED_MODEL_FILE: &str = "premier.json";

impl TrainedModel {
    /// Reads `<dir>/premier.json`.
    pub fn read(dir: &Path) -> Result<Self, RunError> {
        let path = dir.join(TRAINED_MODEL_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| io(&path, e))?;
        serde_json::from_str(&text).map_err(|e| io(&path, e))
    }

    /// Writes `<dir>/premier.json` atomically.
    pub fn write(&self, dir: &Path) -> Result<(), RunError> {
        let path = dir.join(TRAINED_MODEL_FILE);
        write_text(
            &path,
            &serde_json::to_string_pretty(self).map_err(|e| io(&path, e))?,
        )
    }

    /// The row of user `id`.
    pub fn row(&self, id: &str) -> Option<usize> {
        self.ids.iter().position(|i| i == id)
    }
}

/// Errors of a run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Reading the encoder cache failed.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// A training step failed.
    #[error(transparent)]
    Train(#[from] TrainError),
    /// Writing or reading a checkpoint failed.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// Writing or reading the metrics failed.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// A file or folder could not be read, written or removed.
    #[error("{path}: {reason}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The run cannot go on as set up (data, folder, resume point or settings); the message says
    /// why.
    #[error("{0}")]
    Config(String),
    /// A config value is out of range.
    #[error("config: {0}")]
    Invalid(#[from] crate::validate::InvalidValue),
    /// The observer's validation failed; the message says why.
    #[error("validation: {0}")]
    Validation(String),
}

fn io(path: &Path, e: impl std::fmt::Display) -> RunError {
    RunError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

fn write_text(path: &Path, text: &str) -> Result<(), RunError> {
    write_via_temp(path, |tmp| {
        std::fs::write(tmp, text).map_err(|e| e.to_string())
    })
    .map_err(|e| io(path, e))
}

/// What a run reports as it goes (progress bars, validation images).
pub trait RunObserver<B: AutodiffBackend> {
    /// Something the run does that the user may not expect (it goes on).
    fn warn(&mut self, _message: &str) {}
    /// Before the first step: the step it starts from and the last step.
    fn started(&mut self, _from: u64, _to: u64) {}
    /// After each step.
    fn step(&mut self, _record: &MetricRecord) {}
    /// Every `validate_every` steps, with the current adapters and table.
    fn validate(
        &mut self,
        _flux: &Flux<B>,
        _model: &Stage1Model<B>,
        _step: u64,
    ) -> Result<(), String> {
        Ok(())
    }
    /// After a checkpoint is written.
    fn checkpoint(&mut self, _path: &Path) {}
}

/// An observer that does nothing.
impl<B: AutodiffBackend> RunObserver<B> for () {}

/// Where a stage-1 run starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// New adapters and table (or a new user), initialised from the backend's RNG seeded with the
    /// run's seed (for a new user: the seed and its id). Refused when the folder already holds
    /// checkpoints.
    Fresh,
    /// The newest checkpoint under `<out>/checkpoints`; an error when there is none. The run's
    /// settings must be the checkpoint's.
    Latest,
    /// As [`Start::Latest`], but a fresh start when there is no checkpoint yet (a job that may
    /// or may not have run before).
    LatestOrFresh,
    /// A fresh start into a folder that may hold an earlier run: its checkpoints, results,
    /// metrics, loss curve and validation images are deleted first (`--overwrite`).
    Replace,
    /// A checkpoint folder; checkpoints after it in the run's folder are dropped.
    From(PathBuf),
}

/// The summary of a finished run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSummary {
    /// Step the run started from (0 when fresh).
    pub resumed_from: u64,
    /// Step the run ended at.
    pub steps: u64,
    /// Metrics of the last step taken in this run (`None` when it took none).
    pub last: Option<MetricRecord>,
    /// The final adapters file (`mod_adapter.safetensors`).
    pub adapter: PathBuf,
    /// The final user table file (`user_embedding.safetensors`).
    pub table: PathBuf,
    /// Wall-clock seconds the run took.
    pub seconds: f64,
}

/// The sampler's batch index of micro-batch `micro` of step `step`.
fn batch_index(step: u64, micro: usize, accum: usize) -> u64 {
    step * accum as u64 + micro as u64
}

/// Seed of the posterior noise of one micro-batch.
pub(crate) fn posterior_seed(seed: u64, index: u64) -> u64 {
    seed ^ (index + 1).wrapping_mul(0xA076_1D64_78BD_642F)
}

/// Trains stage 1 on `data` into `out`: fresh or resumed (`start`), `config.steps` steps in all.
/// Returns the trainer at the last step and the summary.
pub fn train_stage1<B: FluxAutodiffBackend>(
    flux: Flux<B>,
    data: &mut CachedUsers,
    config: &TrainConfig,
    out: &Path,
    start: Start,
    observer: &mut dyn RunObserver<B>,
    device: &B::Device,
) -> Result<(Stage1Trainer<B>, RunSummary), RunError> {
    let started = Instant::now();
    config.validate()?;
    std::fs::create_dir_all(out).map_err(|e| io(out, e))?;
    let checkpoints = out.join("checkpoints");
    let or_fresh = matches!(start, Start::LatestOrFresh);
    match start {
        Start::Fresh => refuse_earlier_results(out)?,
        Start::Replace => remove_earlier_run(out)?,
        _ => {}
    }
    let resume_from = resume_point(&checkpoints, start)?;
    if or_fresh && resume_from.is_none() {
        // Nothing to resume: a run killed before its first checkpoint starts again, but the
        // weights of a finished run (whose checkpoints are gone) are never written over.
        refuse_results(out, &FINISHED_RESULTS)?;
    }
    // Writes that died before a checkpoint was committed are never resumed.
    crate::checkpoint::remove_abandoned_writes(&checkpoints)?;
    if let Some(u) = data.counts().iter().position(|&c| c == 0) {
        return Err(RunError::Config(format!(
            "user {:?} has no images",
            data.ids[u]
        )));
    }
    let Some(dims) = data.sample_dims()? else {
        return Err(RunError::Config("the dataset has no images".into()));
    };
    if let Some(warning) = config.batch_warning(data.ids.len()) {
        observer.warn(&warning);
    }
    let settings = RunSettings {
        batch_size: config.batch_size,
        grad_accum: config.grad_accum,
        data: data.fingerprint(),
    };
    check_cache_fits_backbone(&flux, data.cache_dir(), &dims)?;
    let text_dim = dims.text_dim;
    let (mut trainer, adapter_config) = match &resume_from {
        Some(path) => {
            let meta = read_stage1_state(path)?;
            check_resume(path, &meta, config, &settings, data.ids.len())?;
            let expected = config.adapter(text_dim, flux.hidden_size(), flux.depth());
            check_resumed_sizes(path, &meta, config, &expected)?;
            check_run_config(out, config)?;
            // Load before deleting anything: a checkpoint that fails to load keeps the newer ones.
            let trainer = load_stage1(path, flux, device)?;
            drop_checkpoints_after(&checkpoints, meta.step)?;
            (trainer, meta.adapter)
        }
        None => {
            // A fresh run's initialisation depends on its seed alone.
            B::seed(device, config.stage1.seed);
            let adapter_config = config.adapter(text_dim, flux.hidden_size(), flux.depth());
            let adapter =
                PreferenceAdapter::<B>::init_with(&adapter_config, config.adapter_init, device)
                    .map_err(|e| RunError::Config(e.to_string()))?;
            let users = UserTable::<B>::init(
                UserShape {
                    users: data.ids.len(),
                    tokens: config.user_tokens,
                    dim: config.user_dim,
                },
                device,
            );
            let model = Stage1Model { adapter, users };
            let trainer = Stage1Trainer::new(flux, model, config.stage1.clone());
            (trainer, adapter_config)
        }
    };
    trainer.workers = config.workers.max(1);
    write_text(
        &out.join("config.toml"),
        &config.to_toml().map_err(RunError::Config)?,
    )?;

    let metrics_path = out.join("metrics.jsonl");
    let mut log = metrics_from(&metrics_path, trainer.step)?;

    let seed = trainer.config.seed;
    let sampler =
        UserBatchSampler::new(data.counts(), config.batch_size, seed).map_err(RunError::Config)?;
    let null_text = trainer
        .config
        .dispersion
        .map(|_| data.text::<B>("", device).map(|t| t.0))
        .transpose()?;
    let resumed_from = trainer.step;
    observer.started(resumed_from, config.steps);
    let mut last = None;
    while trainer.step < config.steps {
        let tick = Instant::now();
        // One micro-batch at a time: memory does not grow with `grad_accum`.
        let step = trainer.step;
        let report = trainer.step_streamed(config.grad_accum, |i| {
            let index = batch_index(step, i, config.grad_accum);
            let picks = sampler.batch(index);
            let encoded = data.batch::<B>(&picks, posterior_seed(seed, index), device)?;
            Ok::<_, RunError>(Stage1Batch {
                x0: encoded.x0,
                latent_hw: encoded.latent_hw,
                text: encoded.text,
                pooled: encoded.pooled,
                users: picks.iter().map(|p| p.0).collect(),
                null_text: null_text.clone(),
            })
        })?;
        let record = MetricRecord {
            report,
            it_per_s: 1.0 / tick.elapsed().as_secs_f64().max(1e-9),
            elapsed_s: started.elapsed().as_secs_f64(),
        };
        log.write(&record)?;
        observer.step(&record);
        last = Some(record);
        let step = trainer.step;
        if config.validate_every > 0 && step % config.validate_every == 0 {
            observer
                .validate(&trainer.flux, &trainer.model, step)
                .map_err(RunError::Validation)?;
        }
        let every = config.checkpoint_every;
        if (every > 0 && step % every == 0) || step == config.steps {
            let path = save_stage1(
                &trainer,
                &adapter_config,
                Some(&settings),
                &checkpoints,
                config.keep_checkpoints,
            )?;
            observer.checkpoint(&path);
        }
    }

    let adapter = out.join("mod_adapter.safetensors");
    let table = out.join("user_embedding.safetensors");
    trainer
        .model
        .adapter
        .save(&adapter, SaveDtype::F32)
        .map_err(|e| io(&adapter, e))?;
    trainer
        .model
        .users
        .save(&table, SaveDtype::F32)
        .map_err(|e| io(&table, e))?;
    TrainedModel {
        adapter: adapter_config,
        users: trainer.model.users.shape(),
        ids: data.ids.clone(),
    }
    .write(out)?;
    let records = read_metrics(&metrics_path)?;
    if !records.is_empty() {
        write_loss_curve(&records, &out.join("loss.png"))?;
    }
    let summary = RunSummary {
        resumed_from,
        steps: trainer.step,
        last,
        adapter,
        table,
        seconds: started.elapsed().as_secs_f64(),
    };
    Ok((trainer, summary))
}

/// The cache's samples must be what the backbone reads: packed latent tokens of its input width,
/// T5 tokens and pooled vectors of its widths (a cache encoded for another model — FLUX latents
/// for the synth base, say — fails here, named, instead of deep inside the first step).
fn check_cache_fits_backbone<B: FluxAutodiffBackend>(
    flux: &Flux<B>,
    cache: &Path,
    dims: &SampleDims,
) -> Result<(), RunError> {
    let wants = (
        flux.img_in.weight.dims()[0],
        flux.txt_in.weight.dims()[0],
        flux.vector_in.in_layer.weight.dims()[0],
    );
    let has = (4 * dims.latent_channels, dims.text_dim, dims.pooled_dim);
    if has != wants {
        return Err(RunError::Config(format!(
            "{}: its samples hold {} latent channels ({} per packed token), {}-wide text tokens \
             and {}-wide pooled vectors, but the backbone reads {} per token, {}-wide text and \
             {}-wide pooled vectors: the cache was encoded for another model",
            cache.display(),
            dims.latent_channels,
            has.0,
            has.1,
            has.2,
            wants.0,
            wants.1,
            wants.2
        )));
    }
    Ok(())
}

/// The checkpoint a run starts from. A fresh start refuses a folder that already holds
/// checkpoints (they would be pruned in favour of the old run's, or resumed by mistake later).
fn resume_point(checkpoints: &Path, start: Start) -> Result<Option<PathBuf>, RunError> {
    match start {
        Start::Fresh => match latest_checkpoint(checkpoints) {
            Some(old) => Err(RunError::Config(format!(
                "{} holds checkpoints of an earlier run: resume it (`--resume latest`) or train \
                 into another folder",
                old.display()
            ))),
            None => Ok(None),
        },
        Start::Latest => match latest_checkpoint(checkpoints) {
            Some(latest) => Ok(Some(latest)),
            None => Err(RunError::Config(format!(
                "nothing to resume: {} holds no checkpoint (start without `--resume`, or pass \
                 `--resume-or-start` to resume when there is one)",
                checkpoints.display()
            ))),
        },
        Start::LatestOrFresh => Ok(latest_checkpoint(checkpoints)),
        Start::Replace => Ok(None),
        Start::From(p) => Ok(Some(p)),
    }
}

/// A resume must continue the run the checkpoint came from: the same objective, optimizer and
/// seed, and the same batches (batch size, accumulation, data).
fn check_resume(
    path: &Path,
    meta: &CheckpointState,
    config: &TrainConfig,
    settings: &RunSettings,
    users: usize,
) -> Result<(), RunError> {
    let differs = |what: &str| {
        Err(RunError::Config(format!(
            "{}: the checkpoint's run had another {what}; resume with the settings it was \
             trained with (its config.toml) or start a new run",
            path.display()
        )))
    };
    if meta.users.users != users {
        return Err(RunError::Config(format!(
            "{}: a table of {} users, but the dataset has {users}",
            path.display(),
            meta.users.users
        )));
    }
    if meta.config != config.stage1 {
        return differs("[stage1] config");
    }
    match &meta.run {
        Some(run) if run.batch_size != settings.batch_size => differs("batch_size"),
        Some(run) if run.grad_accum != settings.grad_accum => differs("grad_accum"),
        Some(run) if run.data != settings.data => {
            differs("dataset (users, images or captions, or held-out split)")
        }
        _ => Ok(()),
    }
}

/// Files a finished (or running) stage-1 run leaves in its folder.
const RUN_RESULTS: [&str; 5] = [
    "config.toml",
    "metrics.jsonl",
    "mod_adapter.safetensors",
    "user_embedding.safetensors",
    TRAINED_MODEL_FILE,
];

/// What only a finished stage-1 run leaves: its weights.
const FINISHED_RESULTS: [&str; 3] = [
    "mod_adapter.safetensors",
    "user_embedding.safetensors",
    TRAINED_MODEL_FILE,
];

/// A fresh run never writes over an earlier run's results, checkpoints or not.
fn refuse_earlier_results(out: &Path) -> Result<(), RunError> {
    refuse_results(out, &RUN_RESULTS)
}

/// `Err` naming the first of `files` that `out` holds.
fn refuse_results(out: &Path, files: &[&str]) -> Result<(), RunError> {
    match files.iter().map(|f| out.join(f)).find(|p| p.exists()) {
        Some(found) => Err(RunError::Config(format!(
            "{} is from an earlier run in {}: resume it (`--resume latest`), train into another \
             folder, or replace it (`--overwrite`)",
            found.display(),
            out.display()
        ))),
        None => Ok(()),
    }
}

/// What [`Start::Replace`] deletes: an earlier run's files and folders in `out`, nothing else.
fn remove_earlier_run(out: &Path) -> Result<(), RunError> {
    for file in RUN_RESULTS.iter().chain(&["loss.png"]) {
        let path = out.join(file);
        if path.is_file() {
            std::fs::remove_file(&path).map_err(|e| io(&path, e))?;
        }
    }
    let checkpoints = out.join("checkpoints");
    if checkpoints.is_dir() {
        std::fs::remove_dir_all(&checkpoints).map_err(|e| io(&checkpoints, e))?;
    }
    // The folder stays (an observer may have made it for this run); its images go.
    let validation = out.join("validation");
    for entry in std::fs::read_dir(&validation)
        .into_iter()
        .flatten()
        .flatten()
    {
        let path = entry.path();
        if path.is_file() {
            std::fs::remove_file(&path).map_err(|e| io(&path, e))?;
        }
    }
    Ok(())
}

/// The fields of [`TrainConfig`] a resume may change: how long, how often, on how many threads.
/// Every other field shapes the model or its batches.
const RESUMABLE_FIELDS: [&str; 8] = [
    "steps",
    "checkpoint_every",
    "keep_checkpoints",
    "validate_every",
    "validation_users",
    "validation_prompts",
    "validation_guidance",
    "workers",
];

/// The checkpoint's adapter and table sizes must be the ones `config` asks for: a resume trains
/// the checkpoint's model, and the run's config.toml must not say otherwise.
fn check_resumed_sizes(
    path: &Path,
    meta: &CheckpointState,
    config: &TrainConfig,
    expected: &AdapterConfig,
) -> Result<(), RunError> {
    let differ = |key: String, in_checkpoint: String, in_config: String| {
        Err(RunError::Config(format!(
            "{}: the checkpoint has {key} = {in_checkpoint}, this run's config says \
             {in_config}; resume with the settings it was trained with (its config.toml) or \
             start a new run",
            path.display()
        )))
    };
    if meta.users.tokens != config.user_tokens {
        return differ(
            "user_tokens".into(),
            meta.users.tokens.to_string(),
            config.user_tokens.to_string(),
        );
    }
    if meta.users.dim != config.user_dim {
        return differ(
            "user_dim".into(),
            meta.users.dim.to_string(),
            config.user_dim.to_string(),
        );
    }
    match first_difference(&meta.adapter, expected, &[]) {
        Some((key, a, b)) => differ(format!("adapter {key}"), a, b),
        None => Ok(()),
    }
}

/// A resume must use the run's own config (`<out>/config.toml`) except for [`RESUMABLE_FIELDS`].
fn check_run_config(out: &Path, config: &TrainConfig) -> Result<(), RunError> {
    let path = out.join("config.toml");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(());
    };
    let run = TrainConfig::from_toml(&text, &TrainConfig::default())
        .map_err(|e| RunError::Config(format!("{}: {e}", path.display())))?;
    match first_difference(&run, config, &RESUMABLE_FIELDS) {
        Some((key, was, now)) => Err(RunError::Config(format!(
            "{}: the run was trained with {key} = {was}, this resume asks {now}; only {} may \
             change on a resume",
            path.display(),
            RESUMABLE_FIELDS.join(", ")
        ))),
        None => Ok(()),
    }
}

/// A user id as a file-name part: no path separators, not `.` or `..`.
fn file_safe(id: &str) -> Result<&str, RunError> {
    if id.is_empty() || id == "." || id == ".." || id.contains(['/', '\\', '\0']) {
        return Err(RunError::Config(format!(
            "user id {id:?} cannot name a file"
        )));
    }
    Ok(id)
}

/// FNV-1a of a user id: a new user's initialisation seed is `seed ^ id_seed(id)`, so users do
/// not depend on the order they are trained in.
pub fn id_seed(id: &str) -> u64 {
    id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The metrics log at `path` for a run at `step`: records past it (from before a resume) are
/// dropped, since the run will write them again.
fn metrics_from(path: &Path, step: u64) -> Result<MetricsLog, RunError> {
    if path.is_file() {
        let kept: Vec<String> = read_metrics(path)?
            .into_iter()
            .filter(|r| r.report.step <= step)
            .map(|r| serde_json::to_string(&r).map_err(|e| io(path, e)))
            .collect::<Result<_, _>>()?;
        let text: String = kept.iter().map(|l| format!("{l}\n")).collect();
        write_text(path, &text)?;
    }
    Ok(MetricsLog::append(path)?)
}

/// How a new user is represented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColdStartKind {
    /// Coefficients over the trained users (the paper's cold start).
    Linear,
    /// An embedding of its own.
    Direct,
}

/// A cold-start run (the TOML file of `premier cold-start`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ColdStartConfig {
    /// How the new user is represented.
    pub kind: ColdStartKind,
    /// Optimizer steps in all (a resumed cold start stops at the same step).
    pub steps: u64,
    /// Images per step (at most the user's images; the released config: 1).
    pub batch_size: usize,
    /// Write a checkpoint every this many steps (and at the end); 0: none.
    pub checkpoint_every: u64,
    /// Checkpoints kept (the newest; at least 1).
    pub keep_checkpoints: usize,
    /// The objective, optimizer and seed (`[stage2]`).
    pub stage2: Stage2Config,
}

impl Default for ColdStartConfig {
    /// The released linear cold start: AdamW lr 0.01, 5000 steps, batch 1, clip 0.5.
    fn default() -> Self {
        Self {
            kind: ColdStartKind::Linear,
            steps: 5000,
            batch_size: 1,
            checkpoint_every: 1000,
            keep_checkpoints: 1,
            stage2: Stage2Config::default(),
        }
    }
}

impl ColdStartConfig {
    /// `text` (TOML) over `defaults` (see [`config_from_toml`]).
    pub fn from_toml(text: &str, defaults: &Self) -> Result<Self, String> {
        config_from_toml(text, defaults)
    }
}

/// The user file a cold start writes: `user_combination_<id>.safetensors` (linear) or
/// `user_embedding_<id>.safetensors` (direct), the official names.
pub fn user_file_name(kind: ColdStartKind, id: &str) -> String {
    match kind {
        ColdStartKind::Linear => format!("user_combination_{id}.safetensors"),
        ColdStartKind::Direct => format!("user_embedding_{id}.safetensors"),
    }
}

/// Trains a new user (`data`'s user `user`) against frozen adapters and table, and writes the
/// user file into `out` atomically; per-step metrics go to `<out>/metrics_<user file stem>.jsonl`
/// and checkpoints to `<out>/checkpoints/<user file stem>/` (e.g. `user_combination_<id>`), from
/// where `start` may resume. `step(report)`
/// is called after every step.
#[allow(clippy::too_many_arguments)]
pub fn cold_start<B: FluxAutodiffBackend>(
    flux: Flux<B>,
    adapter: PreferenceAdapter<B>,
    table: UserTable<B>,
    data: &mut CachedUsers,
    user: usize,
    config: &ColdStartConfig,
    out: &Path,
    start: Start,
    step: &mut dyn FnMut(&MetricRecord),
    device: &B::Device,
) -> Result<(Stage2Trainer<B>, PathBuf), RunError> {
    let Some(count) = data.samples.get(user).map(Vec::len) else {
        return Err(RunError::Config(format!(
            "user {user} of a dataset of {}",
            data.ids.len()
        )));
    };
    config.validate()?;
    if count == 0 {
        return Err(RunError::Config(format!(
            "user {} has no images",
            data.ids[user]
        )));
    }
    let id = file_safe(&data.ids[user])?.to_string();
    // One folder per user file, so a linear and a direct cold start of a user do not mix.
    let file_name = user_file_name(config.kind, &id);
    let stem = file_name.trim_end_matches(".safetensors");
    let checkpoints = out.join("checkpoints").join(stem);
    let settings = ColdStartSettings {
        batch: config.batch_size.min(count),
        images: data.user_fingerprint(user),
    };
    let mut trainer = match resume_point(&checkpoints, start)? {
        Some(path) => {
            let meta = read_stage2_state(&path)?;
            let linear = config.kind == ColdStartKind::Linear;
            let differs = match &meta.run {
                _ if meta.linear != linear => Some("kind (linear or direct)"),
                _ if meta.config != config.stage2 => Some("[stage2] config"),
                Some(run) if run.batch != settings.batch => Some("batch_size"),
                Some(run) if run.images != settings.images => Some("images (or --images)"),
                _ => None,
            };
            if let Some(what) = differs {
                return Err(RunError::Config(format!(
                    "{}: the checkpoint's cold start had another {what}; resume with the \
                     settings it was trained with or start afresh",
                    path.display()
                )));
            }
            let trainer = load_stage2(&path, flux, adapter, table, device)?;
            drop_checkpoints_after(&checkpoints, meta.step)?;
            trainer
        }
        None => {
            let earlier = out.join(&file_name);
            if earlier.exists() {
                return Err(RunError::Config(format!(
                    "{} is the result of an earlier cold start of {id}: write into another \
                     folder (`--out`) or remove it first",
                    earlier.display()
                )));
            }
            let new_user =
                fresh_new_user(config.kind, table.shape(), config.stage2.seed, &id, device);
            Stage2Trainer::new(flux, adapter, table, new_user, config.stage2.clone())
        }
    };
    std::fs::create_dir_all(out).map_err(|e| io(out, e))?;
    let mut log = metrics_from(&out.join(format!("metrics_{stem}.jsonl")), trainer.step)?;
    fit_new_user(
        &mut trainer,
        data,
        user,
        config,
        &mut |trainer, record| {
            log.write(record)?;
            step(record);
            let every = config.checkpoint_every;
            if every > 0 && (trainer.step % every == 0 || trainer.step == config.steps) {
                save_stage2(
                    trainer,
                    Some(&settings),
                    &checkpoints,
                    config.keep_checkpoints,
                )?;
            }
            Ok(())
        },
        device,
    )?;
    let path = out.join(&file_name);
    trainer
        .user()?
        .save(&path, SaveDtype::F32)
        .map_err(|e| io(&path, e))?;
    Ok((trainer, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_overrides_only_what_it_names() {
        let defaults = TrainConfig::synth();
        let text =
            "steps = 7\nshared = false\n[stage1]\nseed = 3\n[stage1.optimizer]\nd0 = 0.001\n";
        let c = TrainConfig::from_toml(text, &defaults).unwrap();
        assert_eq!((c.steps, c.shared, c.stage1.seed), (7, false, 3));
        assert_eq!(c.stage1.optimizer.d0, 0.001);
        assert_eq!(c.stage1.optimizer.lr, defaults.stage1.optimizer.lr);
        assert_eq!(
            (c.batch_size, c.user_dim),
            (defaults.batch_size, defaults.user_dim)
        );
        // What `premier train` writes reads back to the same config.
        let written = c.to_toml().unwrap();
        assert_eq!(
            TrainConfig::from_toml(&written, &TrainConfig::default()).unwrap(),
            c
        );
        // No dispersion survives the round trip (an omitted key would mean the default).
        let none = TrainConfig::from_toml("[stage1]\ndispersion = \"None\"", &defaults).unwrap();
        assert_eq!(none.stage1.dispersion, None);
        let written = none.to_toml().unwrap();
        assert_eq!(TrainConfig::from_toml(&written, &defaults).unwrap(), none);
        let released = TrainConfig::from_toml("[stage1]\ndispersion = \"Released\"", &defaults);
        assert_eq!(
            released.unwrap().stage1.dispersion,
            Some(premier_losses::DispersionVariant::Released)
        );
        let err = TrainConfig::from_toml("stepz = 3", &defaults).unwrap_err();
        assert!(err.contains("stepz"), "{err}");
        let cold = ColdStartConfig::from_toml("kind = \"direct\"\nsteps = 9", &Default::default())
            .unwrap();
        assert_eq!((cold.kind, cold.steps), (ColdStartKind::Direct, 9));
    }

    #[test]
    fn unknown_keys_are_errors_at_every_depth_named_with_their_path() {
        let defaults = TrainConfig::synth();
        for (text, key) in [
            ("stepz = 3", "stepz"),
            ("[stage1]\nlamda_shared = 0.1", "stage1.lamda_shared"),
            ("[stage1.optimizer]\nd00 = 1e-4", "stage1.optimizer.d00"),
            (
                "[stage1.timesteps.LogitNormal]\nmean = 1.0\nstd = 1.0\nsdt = 2.0",
                "stage1.timesteps.LogitNormal.sdt",
            ),
            (
                "[stage1.timesteps.FluxShifted]\nmu = 0.5\nmuu = 1.0",
                "stage1.timesteps.FluxShifted.muu",
            ),
            // A variant without fields: serde says only "expected empty table".
            ("[stage1.timesteps.Uniform]\nfoo = 1", "stage1.timesteps.Uniform.foo"),
            // An internally tagged variant without fields (serde ignores extra keys of a unit one).
            (
                "[stage1.lr_schedule]\nkind = \"constant\"\nfoo = 1",
                "stage1.lr_schedule.foo",
            ),
            (
                "[stage1.lr_schedule]\nkind = \"cosine-tail\"\ntotal_steps = 9\ndecay_steps = 3\nfoo = 1",
                "stage1.lr_schedule.foo",
            ),
        ] {
            let err = TrainConfig::from_toml(text, &defaults).unwrap_err();
            assert!(err.contains(&format!("`{key}`")), "{text:?}: {err}");
        }
        let err =
            ColdStartConfig::from_toml("[stage2.optimizer.AdamW]\nlr2 = 1", &Default::default())
                .unwrap_err();
        assert!(err.contains("`stage2.optimizer.AdamW.lr2`"), "{err}");
    }

    #[test]
    fn a_table_naming_another_enum_variant_replaces_the_default() {
        let c = TrainConfig::from_toml(
            "[stage1.timesteps.FluxShifted]\nmu = 0.5",
            &TrainConfig::synth(),
        )
        .unwrap();
        assert_eq!(
            c.stage1.timesteps,
            premier_losses::TimestepSampler::FluxShifted { mu: 0.5 }
        );
        let cold = ColdStartConfig::from_toml(
            "[stage2.optimizer.Prodigy]\nd0 = 1e-4",
            &ColdStartConfig::default(),
        )
        .unwrap();
        match cold.stage2.optimizer {
            crate::stage2::ColdStartOptimizer::Prodigy(p) => assert_eq!(p.d0, 1e-4),
            other => panic!("{other:?}"),
        }
    }
}
