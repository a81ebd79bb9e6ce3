//! Stage 2 (SPEC §4.4–4.5): a new user from a few images. Adapters and the trained table are frozen;
//! only the new user's coefficients (linear combination) or embedding (direct) learn, with the
//! flow-matching loss alone. Several new users can learn in one batch (each sample names its
//! user), which is how the quickstart fits all its new users at once.

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use premier_adapter::PreferenceAdapter;
use premier_losses::TimestepSampler;
use premier_mmdit::{Flux, FluxAutodiffBackend};
use std::path::Path;

use premier_io::SaveDtype;
use premier_users::{LinearCombination, UserEmbedding, UserError, UserTable};
use serde::{Deserialize, Serialize};

use crate::adamw::{AdamW, AdamWConfig};
use crate::params::{apply, gradients, scalar};
use crate::prodigy::{Prodigy, ProdigyConfig};
use crate::stage1::{modulated_flow_loss, step_noise, FlowBatch, StepReport, TrainError};

/// The new user's trainable part.
#[derive(Module, Debug)]
pub enum NewUser<B: Backend> {
    /// `w · table`, the paper's cold start.
    Linear(LinearCombination<B>),
    /// An embedding of its own, for the comparison in the paper.
    Direct(UserEmbedding<B>),
}

impl<B: Backend> NewUser<B> {
    /// Writes the user in the official format: coefficients over the table
    /// (`user_combination_<id>.safetensors`) or an embedding (`user_embedding_<id>.safetensors`).
    pub fn save(&self, path: impl AsRef<Path>, dtype: SaveDtype) -> Result<(), UserError> {
        match self {
            NewUser::Linear(c) => c.save(path, dtype),
            NewUser::Direct(e) => e.save(path, dtype),
        }
    }
}

/// Which optimizer trains the new user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ColdStartOptimizer {
    /// The released linear cold-start config.
    AdamW(AdamWConfig),
    /// The released direct-training config (and what the paper says for both).
    Prodigy(ProdigyConfig),
}

/// The new user's optimizer and its state.
#[derive(Debug, Clone)]
pub enum Stage2Optimizer<B: Backend> {
    /// AdamW (the released linear cold start).
    AdamW(AdamW<B>),
    /// Prodigy (the released direct training).
    Prodigy(Prodigy<B>),
}

/// Stage-2 settings; defaults are the released linear cold start (AdamW lr 0.01, wd 1e-4, clip 0.5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Stage2Config {
    /// How the flow times `t` are drawn.
    pub timesteps: TimestepSampler,
    /// Distilled guidance fed during training (1.0 as released).
    pub guidance: f32,
    /// Global gradient-norm clip (0.5 as released); `None` disables it.
    pub clip_norm: Option<f64>,
    /// Which optimizer trains the new user, with its arguments.
    pub optimizer: ColdStartOptimizer,
    /// Seed of the per-step noise and times.
    pub seed: u64,
}

impl Default for Stage2Config {
    fn default() -> Self {
        Self {
            timesteps: TimestepSampler::default(),
            guidance: 1.0,
            clip_norm: Some(0.5),
            optimizer: ColdStartOptimizer::AdamW(AdamWConfig::premier_cold_start()),
            seed: 0,
        }
    }
}

/// A batch of the new users' images, already encoded.
#[derive(Debug, Clone)]
pub struct Stage2Batch<B: Backend> {
    /// `[batch, img_tokens, in_channels]`.
    pub x0: Tensor<B, 3>,
    /// Latent height and width before packing (for the position ids).
    pub latent_hw: (usize, usize),
    /// `[batch, txt_tokens, text_dim]`.
    pub text: Tensor<B, 3>,
    /// `[batch, vec_in_dim]`.
    pub pooled: Tensor<B, 2>,
    /// Which of the trainer's new users each sample belongs to; empty: all to the first.
    pub owners: Vec<usize>,
}

/// The new users one trainer fits together.
#[derive(Module, Debug)]
pub struct NewUsers<B: Backend> {
    /// The new users, in the order batches' `owners` index them.
    pub users: Vec<NewUser<B>>,
}

/// Cold-start training of one or several new users.
pub struct Stage2Trainer<B: AutodiffBackend> {
    /// The backbone, frozen.
    pub flux: Flux<B>,
    /// The stage-1 adapters, frozen.
    pub adapter: PreferenceAdapter<B>,
    /// The trained users' table, frozen.
    pub table: UserTable<B>,
    /// Trained; with several users, one optimizer (and one gradient clip) covers them all.
    pub users: NewUsers<B>,
    /// The settings of the cold start.
    pub config: Stage2Config,
    /// Steps taken.
    pub step: u64,
    /// The optimizer and its state.
    pub optimizer: Stage2Optimizer<B::InnerBackend>,
}

impl<B: AutodiffBackend> Stage2Trainer<B> {
    /// Freezes `flux`, `adapter` and `table`; trains `user`.
    pub fn new(
        flux: Flux<B>,
        adapter: PreferenceAdapter<B>,
        table: UserTable<B>,
        user: NewUser<B>,
        config: Stage2Config,
    ) -> Self {
        Self::new_batch(flux, adapter, table, vec![user], config)
    }

    /// Freezes `flux`, `adapter` and `table`; trains `users` together (batches name each
    /// sample's user in [`Stage2Batch::owners`]).
    pub fn new_batch(
        flux: Flux<B>,
        adapter: PreferenceAdapter<B>,
        table: UserTable<B>,
        users: Vec<NewUser<B>>,
        config: Stage2Config,
    ) -> Self {
        let optimizer = match &config.optimizer {
            ColdStartOptimizer::AdamW(c) => Stage2Optimizer::AdamW(AdamW::new(c.clone())),
            ColdStartOptimizer::Prodigy(c) => Stage2Optimizer::Prodigy(Prodigy::new(c.clone())),
        };
        Self {
            flux: flux.no_grad(),
            adapter: adapter.no_grad(),
            table: table.no_grad(),
            users: NewUsers { users },
            config,
            step: 0,
            optimizer,
        }
    }

    /// The only new user (an error when the trainer fits several).
    pub fn user(&self) -> Result<&NewUser<B>, TrainError> {
        match self.users.users.as_slice() {
            [user] => Ok(user),
            users => Err(TrainError::Batch(format!(
                "the trainer fits {} new users, not one",
                users.len()
            ))),
        }
    }

    /// The new users' embeddings `[users, tokens, dim]` (`[1, tokens, dim]` for one user).
    pub fn embedding(&self) -> Result<Tensor<B, 3>, TrainError> {
        let rows = self
            .users
            .users
            .iter()
            .map(|user| match user {
                NewUser::Linear(c) => c.embedding(&self.table),
                NewUser::Direct(e) => Ok(e.embedding()),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Tensor::cat(rows, 0))
    }
}

impl<B: FluxAutodiffBackend> Stage2Trainer<B> {
    /// The flow loss of `batch` with the given noise and times.
    pub fn loss(
        &self,
        batch: &Stage2Batch<B>,
        noise: Tensor<B, 3>,
        t: Tensor<B, 1>,
    ) -> Result<Tensor<B, 1>, TrainError> {
        let n = batch.x0.dims()[0];
        let users = self.users.users.len();
        let owners = if batch.owners.is_empty() {
            vec![0; n]
        } else {
            batch.owners.clone()
        };
        if owners.len() != n || owners.iter().any(|&o| o >= users) {
            return Err(TrainError::Batch(format!(
                "{n} samples with owners {owners:?} for {users} new users"
            )));
        }
        let ids: Vec<i64> = owners.iter().map(|&o| o as i64).collect();
        let ids = Tensor::<B, 1, Int>::from_data(TensorData::new(ids, [n]), &batch.x0.device());
        let user = self.embedding()?.select(0, ids);
        let delta = self.adapter.forward(batch.text.clone(), user);
        let images = FlowBatch {
            x0: &batch.x0,
            latent_hw: batch.latent_hw,
            text: &batch.text,
            pooled: &batch.pooled,
        };
        Ok(modulated_flow_loss(
            &self.flux,
            images,
            noise,
            t,
            Some(self.config.guidance),
            Some(&delta),
        )?)
    }

    /// One step with the noise and times of this step (derived from the seed and step number).
    pub fn step(&mut self, batch: &Stage2Batch<B>) -> Result<StepReport, TrainError> {
        let (noise, t) = step_noise(
            self.config.seed,
            self.step,
            &self.config.timesteps,
            batch.x0.dims(),
            &batch.x0.device(),
        );
        self.step_with(batch, noise, t)
    }

    /// One step with the given noise `[batch, img_tokens, in_channels]` and times `[batch]`.
    pub fn step_with(
        &mut self,
        batch: &Stage2Batch<B>,
        noise: Tensor<B, 3>,
        t: Tensor<B, 1>,
    ) -> Result<StepReport, TrainError> {
        let loss = self.loss(batch, noise, t)?;
        let step = self.step + 1;
        let loss_value = scalar(loss.clone());
        TrainError::check_finite(step, "loss", loss_value)?;
        let mut d = 0.0;
        let optimizer = &mut self.optimizer;
        let grads = gradients(&self.users, loss);
        let (users, grad_norm) =
            apply(
                self.users.clone(),
                grads,
                self.config.clip_norm,
                |p, g| match optimizer {
                    Stage2Optimizer::AdamW(o) => o.step(p, g),
                    Stage2Optimizer::Prodigy(o) => {
                        let updated = o.step(p, g);
                        d = o.d();
                        updated
                    }
                },
            )
            .map_err(|norm| TrainError::NonFinite {
                step,
                quantity: "gradient norm",
                value: norm,
            })?;
        TrainError::check_finite(step, "optimizer's step size d", d)?;
        self.users = users;
        self.step = step;
        let loss = loss_value;
        Ok(StepReport {
            step: self.step,
            loss,
            flow: loss,
            dispersion_shared: 0.0,
            dispersion_distinct: 0.0,
            d,
            grad_norm,
            delta_to_y: f64::NAN,
        })
    }
}
