//! What a run is configured by: [`TrainConfig`] (stage 1), [`ColdStartConfig`], and the
//! [`TrainedModel`] description written beside the final weights.

use std::path::Path;

use premier_adapter::{AdapterConfig, AdapterInit};
use premier_users::UserShape;
use serde::{Deserialize, Serialize};

use super::{io, write_text, RunError};
use crate::config_file::config_from_toml;
use crate::stage1::Stage1Config;
use crate::stage2::Stage2Config;

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
