//! Checkpoints that really resume: for stage 1 the adapters, user table, Prodigy's full state, the
//! step and the config; for a cold start the new user, its optimizer's state (AdamW or Prodigy),
//! the step and the config. Each is written to a temporary folder and renamed into place.
//!
//! Layout of `<dir>/step-00001000/`: `mod_adapter.safetensors` and `user_embedding.safetensors` (the
//! official layouts, f32), `optimizer.safetensors` (per parameter, by its name — e.g.
//! `adapter.net.proj_in.weight.exp_avg` — `.p0`, `.s`, `.exp_avg`, `.exp_avg_sq`; checkpoints
//! written before names were recorded use the parameter's position instead) and `state.json`.
//! The state is read by name: a model whose parameters are visited in another order gets each
//! its own state, and a name the model does not have (or lacks) is refused. The noise and times of step k derive from (seed, k), so no
//! RNG state is needed: N steps, a checkpoint and N more steps equal 2N steps straight.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::backend::AutodiffBackend;
use premier_adapter::{AdapterConfig, AdapterError, PreferenceAdapter};
use premier_io::{write_safetensors, HostTensor, SafetensorsFile, SaveDtype};
use premier_mmdit::{Flux, LoadError};
use premier_users::{LinearCombination, TableRows, UserEmbedding, UserError, UserShape, UserTable};
use serde::{Deserialize, Serialize};

use crate::adamw::{AdamW, AdamWState};
use crate::cache::weights_fingerprint;
use crate::params::{flat_values, param_names};
use crate::prodigy::{ParamHostState, Prodigy, ProdigyScalars, ProdigyState};
use crate::stage1::{Stage1Config, Stage1Model, Stage1Trainer};
use crate::stage2::{ColdStartOptimizer, NewUser, Stage2Config, Stage2Optimizer, Stage2Trainer};

/// Errors of writing or reading checkpoints.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A file or folder could not be read, written, renamed or removed.
    #[error("{path}: {reason}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The checkpoint's state could not be written or read, or does not fit what is resumed.
    #[error("{path}: bad state.json: {reason}")]
    State {
        /// The `state.json` file (or the checkpoint folder).
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A weights file whose fingerprint is not the one `state.json` recorded.
    #[error(
        "{path}: not the file this checkpoint was written with (its fingerprint is not the one \
         state.json recorded; copied from another checkpoint?)"
    )]
    NotRecorded {
        /// The weights file.
        path: PathBuf,
    },
    /// The optimizer file does not fit the checkpoint's model.
    #[error("{path}: {reason}")]
    Optimizer {
        /// The optimizer file.
        path: PathBuf,
        /// What does not fit.
        reason: String,
    },
    /// A weights file could not be written or read.
    #[error(transparent)]
    File(#[from] LoadError),
    /// The adapters could not be loaded.
    #[error(transparent)]
    Adapter(#[from] AdapterError),
    /// The user table or a user could not be loaded.
    #[error(transparent)]
    User(#[from] UserError),
}

/// The weights files of a stage-1 and of a cold-start checkpoint.
const STAGE1_FILES: [&str; 3] = [
    "mod_adapter.safetensors",
    "user_embedding.safetensors",
    "optimizer.safetensors",
];
const STAGE2_FILES: [&str; 2] = ["user.safetensors", "optimizer.safetensors"];

/// A fingerprint of each of `names` in `dir` (size and the first and last MiB, as the encoder
/// cache keys weights): every step rewrites every value, so a file copied in from another
/// checkpoint of the same run differs, at the cost of reading 2 MiB per file.
fn fingerprint_files(
    dir: &Path,
    names: &[&str],
) -> Result<BTreeMap<String, String>, CheckpointError> {
    names
        .iter()
        .map(|name| {
            let path = dir.join(name);
            let print = weights_fingerprint(&path).map_err(|e| CheckpointError::Io {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            Ok((name.to_string(), print))
        })
        .collect()
}

/// `Err` naming the first file whose fingerprint is not the one `state.json` recorded.
fn check_fingerprints(
    dir: &Path,
    recorded: &BTreeMap<String, String>,
) -> Result<(), CheckpointError> {
    let names: Vec<&str> = recorded.keys().map(String::as_str).collect();
    for (name, now) in fingerprint_files(dir, &names)? {
        if recorded.get(&name) != Some(&now) {
            return Err(CheckpointError::NotRecorded {
                path: dir.join(&name),
            });
        }
    }
    Ok(())
}

/// What `state.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointState {
    /// Steps taken.
    pub step: u64,
    /// The stage-1 config trained with.
    pub config: Stage1Config,
    /// The adapters' sizes.
    pub adapter: AdapterConfig,
    /// The user table's shape.
    pub users: UserShape,
    /// How many rows the stored table has.
    pub rows: TableRows,
    /// Prodigy's scalar state.
    pub prodigy: ProdigyScalars,
    /// For each optimized parameter: whether it has state, and whether its p0 was all zero.
    pub params: Vec<Option<bool>>,
    /// The parameters' names, in the order of `params` (empty in older checkpoints, whose
    /// optimizer tensors are keyed by position).
    #[serde(default)]
    pub param_names: Vec<String>,
    /// What else the run's batches depend on, when a whole run wrote the checkpoint.
    #[serde(default)]
    pub run: Option<RunSettings>,
    /// Fingerprint of each weights file (its size and first and last MiB, as the encoder cache
    /// keys weights); empty in older checkpoints.
    #[serde(default)]
    pub files: BTreeMap<String, String>,
}

/// The settings besides [`Stage1Config`] that decide a run's batches: a resume must use the same
/// ones to continue bit for bit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSettings {
    /// Samples per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Hash of the users and their (image, caption) cache keys, in order.
    pub data: String,
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
    run: Option<&RunSettings>,
    dir: &Path,
    keep: usize,
) -> Result<PathBuf, CheckpointError> {
    let (tmp, final_dir) = begin(dir, trainer.step)?;

    trainer
        .model
        .adapter
        .save(tmp.join("mod_adapter.safetensors"), SaveDtype::F32)?;
    trainer
        .model
        .users
        .save(tmp.join("user_embedding.safetensors"), SaveDtype::F32)?;
    let state = trainer.optimizer.state();
    let param_names = param_names(&trainer.model);
    let (tensors, params) = prodigy_tensors(&state, &param_names);
    write_safetensors(&tmp.join("optimizer.safetensors"), &tensors, SaveDtype::F32)?;
    let meta = CheckpointState {
        step: trainer.step,
        config: trainer.config.clone(),
        adapter: adapter_config.clone(),
        users: trainer.model.users.shape(),
        rows: trainer.model.users.rows(),
        prodigy: state.scalars,
        params,
        param_names,
        run: run.cloned(),
        files: fingerprint_files(&tmp, &STAGE1_FILES)?,
    };
    commit(dir, &tmp, &final_dir, &meta, keep)
}

/// A fresh temporary folder for the checkpoint of `step` under `dir`, and the checkpoint's final
/// folder.
fn begin(dir: &Path, step: u64) -> Result<(PathBuf, PathBuf), CheckpointError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let final_dir = dir.join(step_name(step));
    let tmp = dir.join(format!(".{}.tmp-{}", step_name(step), std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir(&tmp).map_err(io(&tmp))?;
    Ok((tmp, final_dir))
}

/// Writes `state.json` last, renames the folder into place and prunes to the newest `keep`.
fn commit<T: Serialize>(
    dir: &Path,
    tmp: &Path,
    final_dir: &Path,
    meta: &T,
    keep: usize,
) -> Result<PathBuf, CheckpointError> {
    let json = serde_json::to_string_pretty(meta).map_err(|e| CheckpointError::State {
        path: tmp.to_path_buf(),
        reason: e.to_string(),
    })?;
    let state_path = tmp.join("state.json");
    std::fs::write(&state_path, json).map_err(io(&state_path))?;
    if final_dir.exists() {
        std::fs::remove_dir_all(final_dir).map_err(io(final_dir))?;
    }
    std::fs::rename(tmp, final_dir).map_err(io(final_dir))?;
    let all = checkpoints(dir);
    for (_, old) in all.iter().take(all.len().saturating_sub(keep.max(1))) {
        std::fs::remove_dir_all(old).map_err(io(old))?;
    }
    remove_abandoned_writes(dir)?;
    Ok(final_dir.to_path_buf())
}

/// Temporary folders of checkpoint writes that died (`.step-N.tmp-PID`): once a checkpoint has
/// been committed, or a run starts, they can never become one. A checkpoints folder has one
/// writer, the run.
pub(crate) fn remove_abandoned_writes(dir: &Path) -> Result<(), CheckpointError> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with(".step-") && name.contains(".tmp-") {
            let path = entry.path();
            std::fs::remove_dir_all(&path).map_err(io(&path))?;
        }
    }
    Ok(())
}

/// The `state.json` of the stage-1 checkpoint folder `path`.
pub fn read_stage1_state(path: &Path) -> Result<CheckpointState, CheckpointError> {
    let state: CheckpointState = read_state(path)?;
    check_folder_step(path, state.step)?;
    Ok(state)
}

/// The `state.json` of the cold-start checkpoint folder `path`.
pub fn read_stage2_state(path: &Path) -> Result<Stage2CheckpointState, CheckpointError> {
    let state: Stage2CheckpointState = read_state(path)?;
    check_folder_step(path, state.step)?;
    Ok(state)
}

/// A folder named `step-N` must hold the state of step N: resuming trusts the name to find the
/// newest checkpoint and to drop the ones after it, and the state for everything else, so a
/// disagreement (a renamed or copied folder) could delete the checkpoint being loaded.
fn check_folder_step(path: &Path, step: u64) -> Result<(), CheckpointError> {
    let name = path.file_name().map(|n| n.to_string_lossy().to_string());
    let named = name
        .as_deref()
        .and_then(|n| n.strip_prefix("step-"))
        .and_then(|n| n.parse::<u64>().ok());
    match named {
        Some(named) if named != step => Err(CheckpointError::State {
            path: path.join("state.json"),
            reason: format!(
                "the folder is named for step {named} but its state is step {step}; refusing \
                 to resume from it (nothing was deleted)"
            ),
        }),
        _ => Ok(()),
    }
}

/// Deletes the checkpoints under `dir` after `step`: a run resumed from an older checkpoint
/// abandons them, and they must not be taken for its newest.
pub fn drop_checkpoints_after(dir: &Path, step: u64) -> Result<(), CheckpointError> {
    for (s, path) in checkpoints(dir) {
        if s > step {
            std::fs::remove_dir_all(&path).map_err(io(&path))?;
        }
    }
    Ok(())
}

fn read_state<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, CheckpointError> {
    let state_path = path.join("state.json");
    let text = std::fs::read_to_string(&state_path).map_err(io(&state_path))?;
    serde_json::from_str(&text).map_err(|e| CheckpointError::State {
        path: state_path,
        reason: e.to_string(),
    })
}

/// Prodigy's per-parameter tensors by name (`{i}.p0`, `{i}.s`, `{i}.exp_avg`,
/// `{i}.exp_avg_sq`) and, per parameter, whether it has state and whether its p0 was all zero.
/// Prodigy's per-parameter tensors keyed `{name}.{tensor}` (`names` in the state's order), and
/// for each parameter whether it has state and whether its p0 was all zero.
fn prodigy_tensors(
    state: &ProdigyState,
    names: &[String],
) -> (Vec<(String, HostTensor)>, Vec<Option<bool>>) {
    let mut tensors: Vec<(String, HostTensor)> = Vec::new();
    let mut params = Vec::new();
    for (p, name) in state.params.iter().zip(names) {
        params.push(p.as_ref().map(|p| p.p0.is_none()));
        if let Some(p) = p {
            if let Some(p0) = &p.p0 {
                tensors.push((format!("{name}.p0"), p0.clone()));
            }
            tensors.push((format!("{name}.s"), p.s.clone()));
            tensors.push((format!("{name}.exp_avg"), p.exp_avg.clone()));
            tensors.push((format!("{name}.exp_avg_sq"), p.exp_avg_sq.clone()));
        }
    }
    (tensors, params)
}

/// The inverse of [`prodigy_tensors`], for parameters keyed `keys` (see [`state_order`]).
fn read_prodigy_params(
    file: &SafetensorsFile,
    params: &[Option<bool>],
    keys: &[String],
) -> Result<Vec<Option<ParamHostState>>, LoadError> {
    params
        .iter()
        .zip(keys)
        .map(|(p, key)| {
            p.map(|p0_zero| -> Result<ParamHostState, LoadError> {
                Ok(ParamHostState {
                    p0: if p0_zero {
                        None
                    } else {
                        Some(file.read(&format!("{key}.p0"))?)
                    },
                    s: file.read(&format!("{key}.s"))?,
                    exp_avg: file.read(&format!("{key}.exp_avg"))?,
                    exp_avg_sq: file.read(&format!("{key}.exp_avg_sq"))?,
                })
            })
            .transpose()
        })
        .collect()
}

/// For each of the model's parameters (`model_names`, in its order): where its state is in the
/// checkpoint's lists and the key prefix of its tensors. Checkpoints that recorded names
/// (`saved_names`) are matched by name, and a name only one side has is refused; older ones
/// (`saved_names` empty) by position, keyed `{i}`, for `saved` parameters.
fn state_order(
    path: &Path,
    saved_names: &[String],
    saved: usize,
    model_names: &[String],
) -> Result<(Vec<usize>, Vec<String>), CheckpointError> {
    let wrong = |reason| CheckpointError::Optimizer {
        path: path.to_path_buf(),
        reason,
    };
    if saved_names.is_empty() {
        return Ok((
            (0..saved).collect(),
            (0..saved).map(|i| i.to_string()).collect(),
        ));
    }
    let mut order = Vec::with_capacity(model_names.len());
    for name in model_names {
        match saved_names.iter().position(|s| s == name) {
            Some(i) => order.push(i),
            None => {
                return Err(wrong(format!(
                    "no optimizer state for the model's parameter `{name}`: the checkpoint is \
                     of another model"
                )))
            }
        }
    }
    if let Some(extra) = saved_names.iter().find(|s| !model_names.contains(s)) {
        return Err(wrong(format!(
            "optimizer state for `{extra}`, which the model does not have: the checkpoint is of \
             another model"
        )));
    }
    Ok((order, model_names.to_vec()))
}

/// Each parameter's optimizer state (`states[i]`: its named tensors, `None` if it never took a
/// step) must be as long as the parameter (`sizes`, in [`flat_values`] order): a file from
/// another run would otherwise fail inside the first step.
fn check_state_lengths(
    path: &Path,
    states: &[Option<Vec<(&str, &HostTensor)>>],
    keys: &[String],
    sizes: &[usize],
) -> Result<(), CheckpointError> {
    let wrong = |reason| CheckpointError::Optimizer {
        path: path.to_path_buf(),
        reason,
    };
    if states.len() > sizes.len() {
        return Err(wrong(format!(
            "optimizer state for {} parameters, but the model has {}",
            states.len(),
            sizes.len()
        )));
    }
    for ((state, &n), key) in states.iter().zip(sizes).zip(keys) {
        for (name, t) in state.iter().flatten() {
            if t.shape != [n] {
                return Err(wrong(format!(
                    "`{key}.{name}` has shape {:?} but its parameter has {n} values: the \
                     optimizer state is from another run",
                    t.shape
                )));
            }
        }
    }
    Ok(())
}

/// [`check_state_lengths`] for Prodigy's per-parameter state.
fn check_prodigy_state(
    path: &Path,
    params: &[Option<ParamHostState>],
    keys: &[String],
    sizes: &[usize],
) -> Result<(), CheckpointError> {
    let states: Vec<_> = params
        .iter()
        .map(|p| {
            p.as_ref().map(|p| {
                let mut named = vec![
                    ("s", &p.s),
                    ("exp_avg", &p.exp_avg),
                    ("exp_avg_sq", &p.exp_avg_sq),
                ];
                named.extend(p.p0.as_ref().map(|t| ("p0", t)));
                named
            })
        })
        .collect();
    check_state_lengths(path, &states, keys, sizes)
}

/// A trainer continuing from the checkpoint folder `path`, around the frozen `flux`.
pub fn load_stage1<B: AutodiffBackend>(
    path: &Path,
    flux: Flux<B>,
    device: &B::Device,
) -> Result<Stage1Trainer<B>, CheckpointError> {
    let state_path = path.join("state.json");
    let meta = read_stage1_state(path)?;
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
    let optimizer_path = path.join("optimizer.safetensors");
    let file = SafetensorsFile::open(&optimizer_path)?;
    let model = Stage1Model { adapter, users };
    let (order, keys) = state_order(
        &optimizer_path,
        &meta.param_names,
        meta.params.len(),
        &param_names(&model),
    )?;
    let saved: Vec<Option<bool>> = order.iter().map(|&i| meta.params[i]).collect();
    let params = read_prodigy_params(&file, &saved, &keys)?;
    let sizes: Vec<usize> = flat_values(&model).iter().map(|t| t.dims()[0]).collect();
    check_prodigy_state(&optimizer_path, &params, &keys, &sizes)?;
    if meta.prodigy.k > meta.step {
        // k can lag the step (Prodigy skips a step whose learning rate is 0), never lead it.
        return Err(CheckpointError::State {
            path: state_path,
            reason: format!(
                "the optimizer has taken {} steps but the checkpoint is step {}",
                meta.prodigy.k, meta.step
            ),
        });
    }
    let optimizer = Prodigy::from_state(
        meta.config.optimizer.clone(),
        ProdigyState {
            scalars: meta.prodigy,
            params,
        },
        device,
    );
    // Last: the specific checks above name what is wrong inside a file.
    check_fingerprints(path, &meta.files)?;
    let mut trainer = Stage1Trainer::new(flux, model, meta.config);
    trainer.optimizer = optimizer;
    trainer.step = meta.step;
    Ok(trainer)
}

/// Which optimizer a stage-2 checkpoint holds, with its scalars.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Stage2OptimizerState {
    /// Steps taken; per parameter, whether it has moments (`{name}.exp_avg`,
    /// `{name}.exp_avg_sq`).
    AdamW {
        /// Steps taken.
        step: u64,
        /// Per parameter: whether it has moments.
        params: Vec<bool>,
    },
    /// As stage 1's `prodigy` and `params`.
    Prodigy {
        /// Prodigy's scalar state.
        scalars: ProdigyScalars,
        /// Per parameter: whether it has state, and whether its p0 was all zero.
        params: Vec<Option<bool>>,
    },
}

/// What a stage-2 checkpoint's `state.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stage2CheckpointState {
    /// Steps taken.
    pub step: u64,
    /// The cold-start config trained with.
    pub config: Stage2Config,
    /// `true`: the user is a linear combination; `false`: a direct embedding.
    pub linear: bool,
    /// The frozen table's shape.
    pub users: UserShape,
    /// The optimizer and its scalars.
    pub optimizer: Stage2OptimizerState,
    /// The trained parameters' names (empty in older checkpoints, keyed by position).
    #[serde(default)]
    pub param_names: Vec<String>,
    /// Fingerprint of each weights file (its size and first and last MiB, as the encoder cache
    /// keys weights); empty in older checkpoints.
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    /// What the cold start's batches depend on, when a whole run wrote the checkpoint.
    #[serde(default)]
    pub run: Option<ColdStartSettings>,
}

/// The settings besides [`Stage2Config`] that decide a cold start's batches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColdStartSettings {
    /// Images per step (the configured batch, at most the user's images).
    pub batch: usize,
    /// [`crate::batches::CachedUsers::user_fingerprint`] of the user's images and captions.
    pub images: String,
}

/// Writes a cold start's state to `<dir>/step-N/` atomically (`user.safetensors` in the official
/// user-file layout, `optimizer.safetensors`, `state.json`) and keeps the newest `keep`.
pub fn save_stage2<B: AutodiffBackend>(
    trainer: &Stage2Trainer<B>,
    run: Option<&ColdStartSettings>,
    dir: &Path,
    keep: usize,
) -> Result<PathBuf, CheckpointError> {
    let user = trainer.user().map_err(|e| CheckpointError::State {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    })?;
    let (tmp, final_dir) = begin(dir, trainer.step)?;
    let user_path = tmp.join("user.safetensors");
    match user {
        NewUser::Linear(c) => c.save(&user_path, SaveDtype::F32)?,
        NewUser::Direct(e) => e.save(&user_path, SaveDtype::F32)?,
    }
    let names = param_names(&trainer.users);
    let (tensors, optimizer) = match &trainer.optimizer {
        Stage2Optimizer::AdamW(o) => {
            let state = o.state();
            let mut tensors = Vec::new();
            for (m, name) in state.moments.iter().zip(&names) {
                if let Some((m, v)) = m {
                    tensors.push((format!("{name}.exp_avg"), m.clone()));
                    tensors.push((format!("{name}.exp_avg_sq"), v.clone()));
                }
            }
            let params = state.moments.iter().map(Option::is_some).collect();
            (
                tensors,
                Stage2OptimizerState::AdamW {
                    step: state.step,
                    params,
                },
            )
        }
        Stage2Optimizer::Prodigy(o) => {
            let state = o.state();
            let (tensors, params) = prodigy_tensors(&state, &names);
            (
                tensors,
                Stage2OptimizerState::Prodigy {
                    scalars: state.scalars,
                    params,
                },
            )
        }
    };
    write_safetensors(&tmp.join("optimizer.safetensors"), &tensors, SaveDtype::F32)?;
    let meta = Stage2CheckpointState {
        step: trainer.step,
        config: trainer.config.clone(),
        linear: matches!(user, NewUser::Linear(_)),
        users: trainer.table.shape(),
        optimizer,
        param_names: names,
        files: fingerprint_files(&tmp, &STAGE2_FILES)?,
        run: run.cloned(),
    };
    commit(dir, &tmp, &final_dir, &meta, keep)
}

/// A cold start continuing from the checkpoint folder `path`, around the frozen `flux`,
/// `adapter` and `table`.
pub fn load_stage2<B: AutodiffBackend>(
    path: &Path,
    flux: Flux<B>,
    adapter: PreferenceAdapter<B>,
    table: UserTable<B>,
    device: &B::Device,
) -> Result<Stage2Trainer<B>, CheckpointError> {
    let meta = read_stage2_state(path)?;
    if meta.users != table.shape() {
        return Err(CheckpointError::State {
            path: path.join("state.json"),
            reason: format!(
                "written against a table of {:?}, resumed with {:?}",
                meta.users,
                table.shape()
            ),
        });
    }
    let user_path = path.join("user.safetensors");
    let user = if meta.linear {
        NewUser::Linear(LinearCombination::load(
            &user_path,
            meta.users.users,
            device,
        )?)
    } else {
        NewUser::Direct(UserEmbedding::load(
            &user_path,
            meta.users.tokens,
            meta.users.dim,
            device,
        )?)
    };
    let optimizer_path = path.join("optimizer.safetensors");
    let file = SafetensorsFile::open(&optimizer_path)?;
    let users = crate::stage2::NewUsers {
        users: vec![user.clone()],
    };
    let sizes: Vec<usize> = flat_values(&users).iter().map(|t| t.dims()[0]).collect();
    let saved = match &meta.optimizer {
        Stage2OptimizerState::AdamW { params, .. } => params.len(),
        Stage2OptimizerState::Prodigy { params, .. } => params.len(),
    };
    let (order, keys) = state_order(
        &optimizer_path,
        &meta.param_names,
        saved,
        &param_names(&users),
    )?;
    let optimizer = match (&meta.optimizer, &meta.config.optimizer) {
        (Stage2OptimizerState::AdamW { step, params }, ColdStartOptimizer::AdamW(c)) => {
            let moments = order
                .iter()
                .zip(&keys)
                .map(|(&i, key)| -> Result<_, LoadError> {
                    if !params[i] {
                        return Ok(None);
                    }
                    Ok(Some((
                        file.read(&format!("{key}.exp_avg"))?,
                        file.read(&format!("{key}.exp_avg_sq"))?,
                    )))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let named: Vec<_> = moments
                .iter()
                .map(|m| {
                    m.as_ref()
                        .map(|(a, b)| vec![("exp_avg", a), ("exp_avg_sq", b)])
                })
                .collect();
            check_state_lengths(&optimizer_path, &named, &keys, &sizes)?;
            Stage2Optimizer::AdamW(AdamW::from_state(
                c.clone(),
                AdamWState {
                    step: *step,
                    moments,
                },
                device,
            ))
        }
        (Stage2OptimizerState::Prodigy { scalars, params }, ColdStartOptimizer::Prodigy(c)) => {
            let saved: Vec<Option<bool>> = order.iter().map(|&i| params[i]).collect();
            let params = read_prodigy_params(&file, &saved, &keys)?;
            check_prodigy_state(&optimizer_path, &params, &keys, &sizes)?;
            Stage2Optimizer::Prodigy(Prodigy::from_state(
                c.clone(),
                ProdigyState {
                    scalars: *scalars,
                    params,
                },
                device,
            ))
        }
        _ => {
            return Err(CheckpointError::State {
                path: path.join("state.json"),
                reason: "the optimizer state does not match the configured optimizer".into(),
            })
        }
    };
    // Last: the specific checks above name what is wrong inside a file.
    check_fingerprints(path, &meta.files)?;
    let mut trainer = Stage2Trainer::new(flux, adapter, table, user, meta.config);
    trainer.optimizer = optimizer;
    trainer.step = meta.step;
    Ok(trainer)
}
