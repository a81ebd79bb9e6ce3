//! Stage-1 checkpoints that really resume: adapters, user table, Prodigy's full state, the step
//! and the config, written to a temporary folder and renamed into place.
//!
//! Layout of `<dir>/step-00001000/`: `mod_adapter.safetensors` and `user_embedding.safetensors` (the
//! official layouts, f32), `optimizer.safetensors` (per parameter `{i}.p0`, `{i}.s`, `{i}.exp_avg`,
//! `{i}.exp_avg_sq`) and `state.json`. The noise and times of step k derive from (seed, k), so no
//! RNG state is needed: N steps, a checkpoint and N more steps equal 2N steps straight.

use std::path::{Path, PathBuf};

use burn::tensor::backend::AutodiffBackend;
use premier_adapter::{AdapterConfig, AdapterError, PreferenceAdapter};
use premier_mmdit::load::{write_safetensors, HostTensor, SafetensorsFile, SaveDtype};
use premier_mmdit::{Flux, LoadError};
use premier_users::{TableRows, UserError, UserShape, UserTable};
use serde::{Deserialize, Serialize};

use crate::prodigy::{ParamHostState, Prodigy, ProdigyScalars, ProdigyState};
use crate::stage1::{Stage1Config, Stage1Model, Stage1Trainer};

/// Errors of writing or reading checkpoints.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error("{path}: bad state.json: {reason}")]
    State { path: PathBuf, reason: String },
    #[error(transparent)]
    File(#[from] LoadError),
    #[error(transparent)]
    Adapter(#[from] AdapterError),
    #[error(transparent)]
    User(#[from] UserError),
}

/// What `state.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointState {
    pub step: u64,
    pub config: Stage1Config,
    pub adapter: AdapterConfig,
    pub users: UserShape,
    pub rows: TableRows,
    pub prodigy: ProdigyScalars,
    /// For each optimized parameter: whether it has state, and whether its p0 was all zero.
    pub params: Vec<Option<bool>>,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> CheckpointError + '_ {
    move |e| CheckpointError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// `step-00001000`.
fn step_name(step: u64) -> String {
    format!("step-{step:08}")
}

/// Complete checkpoints under `dir`, oldest first (temporary folders of interrupted writes are
/// not checkpoints).
pub fn checkpoints(dir: &Path) -> Vec<(u64, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<(u64, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let step = name.strip_prefix("step-")?.parse::<u64>().ok()?;
            e.path()
                .join("state.json")
                .is_file()
                .then(|| (step, e.path()))
        })
        .collect();
    found.sort();
    found
}

/// The newest complete checkpoint under `dir`.
pub fn latest_checkpoint(dir: &Path) -> Option<PathBuf> {
    checkpoints(dir).pop().map(|(_, p)| p)
}

/// Writes the trainer's state to `<dir>/step-N/` atomically and keeps the newest `keep`
/// checkpoints (at least 1). Returns the checkpoint's folder.
pub fn save_stage1<B: AutodiffBackend>(
    trainer: &Stage1Trainer<B>,
    adapter_config: &AdapterConfig,
    dir: &Path,
    keep: usize,
) -> Result<PathBuf, CheckpointError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let final_dir = dir.join(step_name(trainer.step));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        step_name(trainer.step),
        std::process::id()
    ));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir(&tmp).map_err(io(&tmp))?;

    trainer
        .model
        .adapter
        .save(tmp.join("mod_adapter.safetensors"), SaveDtype::F32)?;
    trainer
        .model
        .users
        .save(tmp.join("user_embedding.safetensors"), SaveDtype::F32)?;
    let state = trainer.optimizer.state();
    let mut tensors: Vec<(String, HostTensor)> = Vec::new();
    let mut params = Vec::new();
    for (i, p) in state.params.iter().enumerate() {
        params.push(p.as_ref().map(|p| p.p0.is_none()));
        if let Some(p) = p {
            if let Some(p0) = &p.p0 {
                tensors.push((format!("{i}.p0"), p0.clone()));
            }
            tensors.push((format!("{i}.s"), p.s.clone()));
            tensors.push((format!("{i}.exp_avg"), p.exp_avg.clone()));
            tensors.push((format!("{i}.exp_avg_sq"), p.exp_avg_sq.clone()));
        }
    }
    write_safetensors(&tmp.join("optimizer.safetensors"), &tensors, SaveDtype::F32)?;
    let meta = CheckpointState {
        step: trainer.step,
        config: trainer.config.clone(),
        adapter: adapter_config.clone(),
        users: trainer.model.users.shape(),
        rows: trainer.model.users.rows(),
        prodigy: state.scalars,
        params,
    };
    let json = serde_json::to_string_pretty(&meta).map_err(|e| CheckpointError::State {
        path: tmp.clone(),
        reason: e.to_string(),
    })?;
    let state_path = tmp.join("state.json");
    std::fs::write(&state_path, json).map_err(io(&state_path))?;

    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir).map_err(io(&final_dir))?;
    }
    std::fs::rename(&tmp, &final_dir).map_err(io(&final_dir))?;
    let all = checkpoints(dir);
    for (_, old) in all.iter().take(all.len().saturating_sub(keep.max(1))) {
        std::fs::remove_dir_all(old).map_err(io(old))?;
    }
    Ok(final_dir)
}

/// A trainer continuing from the checkpoint folder `path`, around the frozen `flux`.
pub fn load_stage1<B: AutodiffBackend>(
    path: &Path,
    flux: Flux<B>,
    device: &B::Device,
) -> Result<Stage1Trainer<B>, CheckpointError> {
    let state_path = path.join("state.json");
    let text = std::fs::read_to_string(&state_path).map_err(io(&state_path))?;
    let meta: CheckpointState =
        serde_json::from_str(&text).map_err(|e| CheckpointError::State {
            path: state_path.clone(),
            reason: e.to_string(),
        })?;
    let adapter =
        PreferenceAdapter::<B>::load(path.join("mod_adapter.safetensors"), &meta.adapter, device)?;
    let users = UserTable::<B>::load(path.join("user_embedding.safetensors"), meta.users, device)?;
    if users.rows() != meta.rows {
        return Err(CheckpointError::State {
            path: state_path,
            reason: format!(
                "table rows {:?} but state.json says {:?}",
                users.rows(),
                meta.rows
            ),
        });
    }
    let file = SafetensorsFile::open(&path.join("optimizer.safetensors"))?;
    let params = meta
        .params
        .iter()
        .enumerate()
        .map(|(i, p)| {
            p.map(|p0_zero| -> Result<ParamHostState, LoadError> {
                Ok(ParamHostState {
                    p0: if p0_zero {
                        None
                    } else {
                        Some(file.read_finite(&format!("{i}.p0"))?)
                    },
                    s: file.read_finite(&format!("{i}.s"))?,
                    exp_avg: file.read_finite(&format!("{i}.exp_avg"))?,
                    exp_avg_sq: file.read_finite(&format!("{i}.exp_avg_sq"))?,
                })
            })
            .transpose()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let optimizer = Prodigy::from_state(
        meta.config.optimizer.clone(),
        ProdigyState {
            scalars: meta.prodigy,
            params,
        },
        device,
    );
    let mut trainer = Stage1Trainer::new(flux, Stage1Model { adapter, users }, meta.config);
    trainer.optimizer = optimizer;
    trainer.step = meta.step;
    Ok(trainer)
}
