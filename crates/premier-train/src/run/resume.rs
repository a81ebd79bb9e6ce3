//! Where a run starts and what it may overwrite: fresh, resumed from a checkpoint (with the
//! checks that the data, model and settings are the checkpoint's), or replacing an earlier run.

use std::path::{Path, PathBuf};

use premier_adapter::AdapterConfig;

use super::config::{TrainConfig, TRAINED_MODEL_FILE};
use super::{io, write_text, RunError};
use crate::checkpoint::{latest_checkpoint, CheckpointState, RunSettings};
use crate::config_file::first_difference;
use crate::metrics::{read_metrics, MetricsLog};

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

/// The checkpoint a run starts from. A fresh start refuses a folder that already holds
/// checkpoints (they would be pruned in favour of the old run's, or resumed by mistake later).
pub(super) fn resume_point(checkpoints: &Path, start: Start) -> Result<Option<PathBuf>, RunError> {
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
pub(super) fn check_resume(
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
pub(super) const RUN_RESULTS: [&str; 5] = [
    "config.toml",
    "metrics.jsonl",
    "mod_adapter.safetensors",
    "user_embedding.safetensors",
    TRAINED_MODEL_FILE,
];

/// What only a finished stage-1 run leaves: its weights.
pub(super) const FINISHED_RESULTS: [&str; 3] = [
    "mod_adapter.safetensors",
    "user_embedding.safetensors",
    TRAINED_MODEL_FILE,
];

/// A fresh run never writes over an earlier run's results, checkpoints or not.
pub(super) fn refuse_earlier_results(out: &Path) -> Result<(), RunError> {
    refuse_results(out, &RUN_RESULTS)
}

/// `Err` naming the first of `files` that `out` holds.
pub(super) fn refuse_results(out: &Path, files: &[&str]) -> Result<(), RunError> {
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
pub(super) fn remove_earlier_run(out: &Path) -> Result<(), RunError> {
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
pub(super) const RESUMABLE_FIELDS: [&str; 8] = [
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
pub(super) fn check_resumed_sizes(
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
pub(super) fn check_run_config(out: &Path, config: &TrainConfig) -> Result<(), RunError> {
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

/// The metrics log at `path` for a run at `step`: records past it (from before a resume) are
/// dropped, since the run will write them again.
pub(super) fn metrics_from(path: &Path, step: u64) -> Result<MetricsLog, RunError> {
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
