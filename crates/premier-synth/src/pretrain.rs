//! Pretraining the base model on the world with random styles: flow matching on FLUX and the
//! text encoder together, AdamW with warmup and cosine decay. Captions name the style half the
//! time, so the base both understands style words and picks a style of its own without them.

use burn::module::AutodiffModule;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use premier_losses::TimestepSampler;
use premier_mmdit::FluxOps;
use premier_text::PromptTokenizer;
use premier_train::parallel::split_gradients;
use premier_train::params::{assign_flat, flat_values, gradients_params, scalar};
use premier_train::stage1::{modulated_flow_loss, step_noise, FlowBatch};
use serde::{Deserialize, Serialize};

use crate::base::{BaseError, SynthBase, SynthBaseConfig};
use crate::codec::{encode, LATENT_HW};
use crate::world::World;

/// Pretraining settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PretrainConfig {
    /// Optimizer steps.
    pub steps: usize,
    /// Images per step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Steps of the linear learning-rate warm-up.
    pub warmup_steps: usize,
    /// Seed of the init, the images and the noise.
    pub seed: u64,
    /// Return an exponential moving average of the weights with this decay per step instead of
    /// the last weights (`None`: the last weights, as for the bases A and C).
    #[serde(default)]
    pub ema_decay: Option<f64>,
    /// Threads each batch's rows are split over (1: the path that made bases A and C; more: the
    /// same step up to the order of float additions).
    #[serde(default = "one")]
    pub workers: usize,
}

fn one() -> usize {
    1
}

impl Default for PretrainConfig {
    fn default() -> Self {
        Self {
            steps: 5000,
            batch_size: 32,
            lr: 2e-3,
            warmup_steps: 100,
            seed: 0,
            ema_decay: None,
            workers: 1,
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
pub fn pretrain<B: AutodiffBackend + FluxOps>(
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
pub fn continue_pretraining<B: AutodiffBackend + FluxOps>(
    mut model: SynthBase<B>,
    config: &PretrainConfig,
    tokenizer: &PromptTokenizer,
    device: &B::Device,
    mut observer: impl FnMut(usize, f64),
) -> Result<SynthBase<B>, BaseError> {
    if let Some(decay) = config.ema_decay.filter(|d| !(0.0..1.0).contains(d)) {
        return Err(BaseError::Pretrain(format!(
            "ema_decay {decay} must be in [0, 1)"
        )));
    }
    let mut optimizer = AdamWConfig::new()
        .with_weight_decay(1e-4)
        .init::<B, SynthBase<B>>();
    // Uniform times: the base must denoise well everywhere, not only where stage 1 samples.
    let times = TimestepSampler::Uniform;
    let mut ema = config.ema_decay.map(|_| flat_values(&model.valid()));
    for step in 0..config.steps {
        let samples: Vec<_> = (0..config.batch_size)
            .map(|i| World::pretraining_sample(config.seed, (step * config.batch_size + i) as u64))
            .collect();
        let images: Vec<_> = samples.iter().map(|(image, _)| &image.rgb).collect();
        let captions: Vec<&str> = samples.iter().map(|(_, c)| c.as_str()).collect();
        let x0 = encode::<B>(&images, device);
        let (noise, t) = step_noise::<B>(config.seed, step as u64, &times, x0.dims(), device);
        // The flow loss of rows `rows` of the batch with `model`.
        let rows_loss = |model: &SynthBase<B>, rows: std::ops::Range<usize>| {
            let text = model.text.encode(tokenizer, &captions[rows.clone()])?;
            let x0 = x0.clone().slice(rows.clone());
            let batch = FlowBatch {
                x0: &x0,
                latent_hw: LATENT_HW,
                text: &text.tokens,
                pooled: &text.pooled,
            };
            let (noise, t) = (noise.clone().slice(rows.clone()), t.clone().slice(rows));
            let loss = modulated_flow_loss(&model.flux, batch, noise, t, None, None)?;
            let value = scalar(loss.clone());
            Ok::<_, BaseError>((loss, value))
        };
        let (grads, value) = if config.workers <= 1 {
            // One thread: the path that made the shipped bases, bit for bit.
            let (loss, value) = rows_loss(&model, 0..config.batch_size)?;
            (GradientsParams::from_grads(loss.backward(), &model), value)
        } else {
            let (split, ()) =
                split_gradients(&model, config.batch_size, config.workers, rows_loss, || ());
            let split = split?;
            let value = split.blocks.iter().map(|(share, v)| share * v).sum();
            (gradients_params(&model, split.grads), value)
        };
        if !f64::is_finite(value) {
            return Err(BaseError::Pretrain(format!(
                "step {}: the loss is {value}; stopped before applying the step",
                step + 1
            )));
        }
        model = optimizer.step(config.lr_at(step), model, grads);
        if let (Some(average), Some(decay)) = (ema.as_mut(), config.ema_decay) {
            for (a, v) in average.iter_mut().zip(flat_values(&model.valid())) {
                *a = a.clone() * decay + v * (1.0 - decay);
            }
        }
        observer(step + 1, value);
    }
    Ok(match ema {
        Some(average) => assign_flat(model, average.into_iter().map(Tensor::from_inner).collect()),
        None => model,
    })
}
