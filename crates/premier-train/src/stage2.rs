//! Stage 2 (SPEC §4.4–4.5): a new user from a few images. Adapters and the trained table are frozen;
//! only the new user's coefficients (linear combination) or embedding (direct) learn, with the
//! flow-matching loss alone.

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use premier_adapter::PreferenceAdapter;
use premier_losses::TimestepSampler;
use premier_mmdit::Flux;
use premier_users::{LinearCombination, UserEmbedding, UserTable};
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
    AdamW(AdamW<B>),
    Prodigy(Prodigy<B>),
}

/// Stage-2 settings; defaults are the released linear cold start (AdamW lr 0.01, wd 1e-4, clip 0.5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Stage2Config {
    pub timesteps: TimestepSampler,
    pub guidance: f32,
    pub clip_norm: Option<f64>,
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

/// A batch of the new user's images, already encoded.
#[derive(Debug, Clone)]
pub struct Stage2Batch<B: Backend> {
    /// `[batch, img_tokens, in_channels]`.
    pub x0: Tensor<B, 3>,
    pub latent_hw: (usize, usize),
    /// `[batch, txt_tokens, text_dim]`.
    pub text: Tensor<B, 3>,
    /// `[batch, vec_in_dim]`.
    pub pooled: Tensor<B, 2>,
}

/// Cold-start training of one new user.
pub struct Stage2Trainer<B: AutodiffBackend> {
    pub flux: Flux<B>,
    pub adapter: PreferenceAdapter<B>,
    pub table: UserTable<B>,
    pub user: NewUser<B>,
    pub config: Stage2Config,
    pub step: u64,
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
        let optimizer = match &config.optimizer {
            ColdStartOptimizer::AdamW(c) => Stage2Optimizer::AdamW(AdamW::new(c.clone())),
            ColdStartOptimizer::Prodigy(c) => Stage2Optimizer::Prodigy(Prodigy::new(c.clone())),
        };
        Self {
            flux: flux.no_grad(),
            adapter: adapter.no_grad(),
            table: table.no_grad(),
            user,
            config,
            step: 0,
            optimizer,
        }
    }

    /// The new user's embedding `[1, tokens, dim]`.
    pub fn embedding(&self) -> Result<Tensor<B, 3>, TrainError> {
        Ok(match &self.user {
            NewUser::Linear(c) => c.embedding(&self.table)?,
            NewUser::Direct(e) => e.embedding(),
        })
    }

    /// The flow loss of `batch` with the given noise and times.
    pub fn loss(
        &self,
        batch: &Stage2Batch<B>,
        noise: Tensor<B, 3>,
        t: Tensor<B, 1>,
    ) -> Result<Tensor<B, 1>, TrainError> {
        let user = self.embedding()?.repeat_dim(0, batch.x0.dims()[0]);
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
        let mut d = 0.0;
        let optimizer = &mut self.optimizer;
        let grads = gradients(&self.user, loss.clone());
        let (user, grad_norm) =
            apply(
                self.user.clone(),
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
            );
        self.user = user;
        self.step += 1;
        let loss = scalar(loss);
        Ok(StepReport {
            step: self.step,
            loss,
            flow: loss,
            dispersion_shared: 0.0,
            dispersion_distinct: 0.0,
            d,
            grad_norm,
        })
    }
}
