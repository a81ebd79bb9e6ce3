//! What the experiment runs: [`ExperimentConfig`] and the stage-1 variants it implies.

use premier_adapter::AdapterInit;
use premier_losses::DispersionVariant;
use premier_train::schedule::StepDecay;
use premier_train::stage2::ColdStartOptimizer;
use serde::{Deserialize, Serialize};

use crate::world::WorldConfig;

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

/// A stage-1 run.
#[derive(Debug, Clone, Copy)]
pub(super) struct Variant {
    pub(super) name: &'static str,
    pub(super) shared: bool,
    pub(super) distinct: bool,
    pub(super) dispersion: Option<DispersionVariant>,
}

/// The full model first, then (with `ablations`) the paper's ablations, then (with
/// `dispersions`) the other dispersion losses.
pub(super) fn stage1_variants(config: &ExperimentConfig) -> Vec<Variant> {
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
