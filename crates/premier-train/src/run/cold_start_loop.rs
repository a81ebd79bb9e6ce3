//! The cold-start loop: one new user fitted on its own samples, checkpointed and resumable.

use std::path::{Path, PathBuf};

use premier_adapter::PreferenceAdapter;
use premier_io::SaveDtype;
use premier_mmdit::{Flux, FluxAutodiffBackend};
use premier_users::UserTable;

use super::config::{user_file_name, ColdStartConfig, ColdStartKind};
use super::resume::{metrics_from, resume_point, Start};
use super::{io, RunError};
use crate::batches::CachedUsers;
use crate::checkpoint::{
    drop_checkpoints_after, load_stage2, read_stage2_state, save_stage2, ColdStartSettings,
};
use crate::metrics::MetricRecord;
use crate::new_user::{fit_new_user, fresh_new_user};
use crate::stage2::Stage2Trainer;

/// A user id as a file-name part: no path separators, not `.` or `..`.
pub(super) fn file_safe(id: &str) -> Result<&str, RunError> {
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
