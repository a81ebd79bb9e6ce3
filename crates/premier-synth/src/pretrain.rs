//! Pretraining the base model on the world with random styles: flow matching on FLUX and the
//! text encoder together, AdamW with warmup and cosine decay. Captions name the style half the
//! time, so the base both understands style words and picks a style of its own without them.

use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use premier_losses::TimestepSampler;
use premier_text::PromptTokenizer;
use premier_train::params::scalar;
use premier_train::stage1::{modulated_flow_loss, step_noise, FlowBatch};
use serde::{Deserialize, Serialize};

use crate::base::{BaseError, SynthBase, SynthBaseConfig};
use crate::codec::{encode, LATENT_HW};
use crate::world::World;

/// Pretraining settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PretrainConfig {
    pub steps: usize,
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    pub warmup_steps: usize,
    pub seed: u64,
}

impl Default for PretrainConfig {
    fn default() -> Self {
        Self {
            steps: 5000,
            batch_size: 32,
            lr: 2e-3,
            warmup_steps: 100,
            seed: 0,
        }
    }
}

impl PretrainConfig {
    /// Linear warmup, then cosine decay to a tenth of the peak.
    pub fn lr_at(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let progress = (step - self.warmup_steps) as f64
            / (self.steps.saturating_sub(self.warmup_steps)).max(1) as f64;
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos());
        self.lr * (0.1 + 0.9 * cosine)
    }
}

/// Trains a fresh base model; `observer(step, loss)` is called after every step.
pub fn pretrain<B: AutodiffBackend>(
    base_config: &SynthBaseConfig,
    config: &PretrainConfig,
    tokenizer: &PromptTokenizer,
    device: &B::Device,
    observer: impl FnMut(usize, f64),
) -> Result<SynthBase<B>, BaseError> {
    B::seed(device, config.seed);
    let model = SynthBase::<B>::init(base_config, device)?;
    continue_pretraining(model, config, tokenizer, device, observer)
}

/// Trains `model` further on the world's pretraining stream for `config.seed` (a fresh
/// optimizer state and learning-rate schedule); `observer(step, loss)` is called after every
/// step. Use another seed than the run that made `model` so the images are new.
pub fn continue_pretraining<B: AutodiffBackend>(
    mut model: SynthBase<B>,
    config: &PretrainConfig,
    tokenizer: &PromptTokenizer,
    device: &B::Device,
    mut observer: impl FnMut(usize, f64),
) -> Result<SynthBase<B>, BaseError> {
    let mut optimizer = AdamWConfig::new()
        .with_weight_decay(1e-4)
        .init::<B, SynthBase<B>>();
    // Uniform times: the base must denoise well everywhere, not only where stage 1 samples.
    let times = TimestepSampler::Uniform;
    for step in 0..config.steps {
        let samples: Vec<_> = (0..config.batch_size)
            .map(|i| World::pretraining_sample(config.seed, (step * config.batch_size + i) as u64))
            .collect();
        let images: Vec<_> = samples.iter().map(|(image, _)| &image.rgb).collect();
        let captions: Vec<&str> = samples.iter().map(|(_, c)| c.as_str()).collect();
        let x0 = encode::<B>(&images, device);
        let text = model.text.encode(tokenizer, &captions)?;
        let (noise, t) = step_noise::<B>(config.seed, step as u64, &times, x0.dims(), device);
        let batch = FlowBatch {
            x0: &x0,
            latent_hw: LATENT_HW,
            text: &text.tokens,
            pooled: &text.pooled,
        };
        let loss = modulated_flow_loss(&model.flux, batch, noise, t, None, None)?;
        let value = scalar(loss.clone());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optimizer.step(config.lr_at(step), model, grads);
        observer(step + 1, value);
    }
    Ok(model)
}
