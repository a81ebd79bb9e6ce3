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
//!
//! By concern: `config` (what a run is configured by), `resume` (where it starts and what it may
//! overwrite), `stage1_loop` and `cold_start_loop` (the two loops).

mod cold_start_loop;
mod config;
mod resume;
mod stage1_loop;

use std::path::{Path, PathBuf};

use premier_io::write_via_temp;

use crate::cache::CacheError;
use crate::checkpoint::CheckpointError;
pub use crate::config_file::config_from_toml;
use crate::metrics::MetricsError;
use crate::stage1::TrainError;

pub use cold_start_loop::{cold_start, id_seed};
pub use config::{
    user_file_name, ColdStartConfig, ColdStartKind, TrainConfig, TrainedModel, TRAINED_MODEL_FILE,
};
pub use resume::Start;
pub(crate) use stage1_loop::posterior_seed;
pub use stage1_loop::{train_stage1, train_stage1_on, RunObserver, RunSummary, Stepping};

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
    /// Data-parallel peers failed (feature `collective`).
    #[cfg(feature = "collective")]
    #[error(transparent)]
    Peers(#[from] crate::data_parallel::DataParallelError),
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
