//! The timed work of the check: stage-1 steps and a personalized generation at one size, on random
//! weights (speed and memory do not depend on their values).

use std::time::{Duration, Instant};

use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::{Distribution, FloatDType};
use premier_adapter::{AdapterConfig, PreferenceAdapter};
use premier_mmdit::{img_ids, txt_ids, Flux, FluxConfig, FluxOps, PassShape, TextModulation};
use premier_pipeline::memory::{GenerationMemory, GenerationPlan};
use premier_pipeline::{denoise, schedule};
use premier_train::memory::TrainingMemory;
use premier_train::stage1::{Stage1Batch, Stage1Config, Stage1Model, Stage1Trainer};
use premier_users::{UserShape, UserTable};

/// The sizes the check runs at.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadSize {
    /// How the report names these sizes.
    pub name: &'static str,
    /// The transformer's.
    pub flux: FluxConfig,
    /// The adapters'.
    pub adapter: AdapterConfig,
    /// The user table's.
    pub users: UserShape,
    /// T5 tokens per prompt.
    pub txt_tokens: usize,
    /// Image side in pixels: (side / 16)² image tokens.
    pub resolution: usize,
    /// Euler steps of the timed generation.
    pub generation_steps: usize,
    /// Timed stage-1 steps after the warm-up step.
    pub timed_steps: usize,
    /// Store the frozen backbone in bf16 (as `premier train` does on CUDA).
    pub bf16_backbone: bool,
}

impl WorkloadSize {
    /// FLUX.1-dev, the released adapters and 1000-user table, 512 T5 tokens, 512², 30 steps.
    pub fn dev() -> Self {
        Self {
            name: "FLUX.1-dev (bf16 backbone), released adapters, 1000 users, 512 T5 tokens, 512²",
            flux: FluxConfig::dev(),
            adapter: AdapterConfig::released(),
            users: UserShape::released(),
            txt_tokens: 512,
            resolution: 512,
            generation_steps: 30,
            timed_steps: 3,
            bf16_backbone: true,
        }
    }

    /// Toy sizes with the same structure, for the CPU dry run of the test suite.
    pub fn tiny() -> Self {
        let flux = FluxConfig::tiny();
        Self {
            name:
                "tiny (dry run): FluxConfig::tiny, a 2-block adapter, 8 users, 8 text tokens, 64²",
            adapter: AdapterConfig {
                text_dim: flux.context_in_dim,
                user_dim: 8,
                width: 16,
                heads: 2,
                layers: 1,
                hidden: flux.hidden_size,
                blocks: flux.depth,
                shared: true,
                distinct: true,
            },
            flux,
            users: UserShape {
                users: 8,
                tokens: 4,
                dim: 8,
            },
            txt_tokens: 8,
            resolution: 64,
            generation_steps: 2,
            timed_steps: 2,
            bf16_backbone: false,
        }
    }

    /// Packed image tokens.
    pub fn img_tokens(&self) -> usize {
        (self.resolution / 16).pow(2)
    }

    /// Floating-point operations of one FLUX forward of one sample: 2 per parameter and token
    /// (every weight meets every token, an upper bound for the double blocks, whose image and text
    /// weights each see only their own tokens) plus 4·T²·width per block for Q·Kᵀ and P·V.
    pub fn forward_flop(&self, flux_params: usize) -> f64 {
        let tokens = (self.img_tokens() + self.txt_tokens) as f64;
        let blocks = (self.flux.depth + self.flux.depth_single_blocks) as f64;
        2.0 * flux_params as f64 * tokens
            + 4.0 * tokens * tokens * self.flux.hidden_size as f64 * blocks
    }
}

impl WorkloadSize {
    fn pass(&self, batch: usize, fused_attention: bool) -> PassShape {
        PassShape {
            batch,
            img_tokens: self.img_tokens(),
            txt_tokens: self.txt_tokens,
            element_bytes: if self.bf16_backbone { 2 } else { 4 },
            fused_attention,
        }
    }

    /// Estimated device memory of a phase: for training `TrainingMemory`, for the generation the
    /// weights (adapters and table in f32), Δ and one forward's activations.
    pub fn estimate_bytes(&self, phase: &super::Phase, fused_attention: bool) -> u64 {
        let element = if self.bf16_backbone { 2 } else { 4 };
        match phase {
            super::Phase::Stage1 { batch, .. } => TrainingMemory::estimate(
                &self.flux,
                element,
                &self.adapter,
                self.users,
                self.pass(*batch, fused_attention),
            )
            .total(),
            super::Phase::Generation => {
                // The FLUX stage of `--low-memory`: FLUX, Δ and one forward (the adapters were
                // released after computing Δ; no text encoder or VAE is loaded).
                let vae = premier_vae::AutoencoderConfig::flux();
                let m = GenerationMemory::estimate(&GenerationPlan {
                    flux: &self.flux,
                    vae: &vae,
                    text_encoder_params: 0,
                    vae_params: 0,
                    adapter_params: self.adapter.param_count()
                        + (self.users.users * self.users.tokens * self.users.dim) as u64,
                    text_width: 0,
                    images: 1,
                    width: self.resolution,
                    height: self.resolution,
                    txt_tokens: self.txt_tokens,
                    element_bytes: element,
                    adapter_bytes: element,
                    vae_tile: None,
                    fused_attention,
                });
                m.backbone + m.deltas + m.denoise_activations
            }
        }
    }
}

/// A timed piece of work.
#[derive(Debug, Clone, Default)]
pub struct Timed {
    /// The first run: kernels compiled and tuned, buffers allocated.
    pub warm_up: Option<Duration>,
    /// The counted runs after the warm-up.
    pub runs: Vec<Duration>,
}

impl Timed {
    /// The median of the counted runs.
    pub fn median(&self) -> Option<Duration> {
        let mut runs = self.runs.clone();
        runs.sort();
        runs.get(runs.len() / 2)
            .copied()
            .filter(|_| !runs.is_empty())
    }
}

/// The frozen backbone at `size`, on `device`, in bf16 if asked (each weight cast as it is
/// drawn).
pub fn backbone<B: FluxOps>(size: &WorkloadSize, device: &B::Device) -> Result<Flux<B>, String> {
    let dtype = size.bf16_backbone.then_some(FloatDType::BF16);
    Flux::<B>::init_with_dtype(&size.flux, device, dtype).map_err(|e| e.to_string())
}

/// Stage-1 steps with `batch` samples through `flux`, on `Autodiff<B, C>` (C: the checkpointing
/// strategy): one warm-up step, then up to `size.timed_steps` while `time_left` says there is time
/// for another.
pub fn stage1_steps<B: FluxOps, C: CheckpointStrategy>(
    size: &WorkloadSize,
    flux: &Flux<B>,
    batch: usize,
    device: &B::Device,
    mut time_left: impl FnMut(Duration) -> bool,
) -> Result<Timed, String> {
    type AB<B, C> = Autodiff<B, C>;
    let flux = Flux::<AB<B, C>>::from_inner(flux.clone());
    let adapter =
        PreferenceAdapter::<AB<B, C>>::init(&size.adapter, device).map_err(|e| e.to_string())?;
    let users = UserTable::<AB<B, C>>::init(size.users, device);
    let side = size.resolution / 16;
    let config = &size.flux;
    let normal = Distribution::Normal(0.0, 1.0);
    let batch = Stage1Batch {
        x0: Tensor::random([batch, side * side, config.in_channels], normal, device),
        latent_hw: (2 * side, 2 * side),
        text: Tensor::random(
            [batch, size.txt_tokens, config.context_in_dim],
            normal,
            device,
        ),
        pooled: Tensor::random([batch, config.vec_in_dim], normal, device),
        users: (0..batch).map(|i| i % size.users.users).collect(),
        null_text: Some(Tensor::random(
            [1, size.txt_tokens, config.context_in_dim],
            normal,
            device,
        )),
    };
    let model = Stage1Model { adapter, users };
    let mut trainer = Stage1Trainer::new(flux, model, Stage1Config::default());
    let mut timed = Timed::default();
    let mut last = Duration::ZERO;
    for step in 0..=size.timed_steps {
        if step > 0 && !time_left(last) {
            break;
        }
        let tick = Instant::now();
        // The loss is read back to the host, so the step has finished on the device.
        trainer.step(&batch).map_err(|e| e.to_string())?;
        last = tick.elapsed();
        if step == 0 {
            timed.warm_up = Some(last);
        } else {
            timed.runs.push(last);
        }
    }
    Ok(timed)
}

/// What a personalized generation needs besides FLUX, made as `premier generate --low-memory`
/// does: the adapters (bf16 with a bf16 backbone) and the table compute Δ and are released
/// before FLUX is loaded.
pub struct GenerationInputs<B: Backend> {
    /// Prompt tokens `[1, txt_tokens, context_in_dim]`.
    pub text: Tensor<B, 3>,
    /// Pooled prompt vector `[1, vec_in_dim]`.
    pub pooled: Tensor<B, 2>,
    /// Packed initial noise `[1, img_tokens, in_channels]`.
    pub noise: Tensor<B, 3>,
    /// Premier's Δ for one user.
    pub delta: TextModulation<B>,
    /// Building the adapters and computing Δ.
    pub delta_time: Duration,
}

/// Random prompt features and noise, and Δ from fresh adapters, at `size`.
pub fn generation_inputs<B: FluxOps>(
    size: &WorkloadSize,
    device: &B::Device,
) -> Result<GenerationInputs<B>, String> {
    let tick = Instant::now();
    let mut adapter =
        PreferenceAdapter::<B>::init(&size.adapter, device).map_err(|e| e.to_string())?;
    if size.bf16_backbone {
        adapter = adapter.with_weight_dtype(FloatDType::BF16);
    }
    let users = UserTable::<B>::init(size.users, device);
    let config = &size.flux;
    let normal = Distribution::Normal(0.0, 1.0);
    let side = size.resolution / 16;
    let text = Tensor::<B, 3>::random([1, size.txt_tokens, config.context_in_dim], normal, device);
    let user = users.lookup(&[0]).map_err(|e| e.to_string())?;
    let delta = adapter.forward(text.clone(), user);
    // Reading one value waits for Δ on the device.
    let _ = delta_probe(&delta);
    Ok(GenerationInputs {
        pooled: Tensor::random([1, config.vec_in_dim], normal, device),
        noise: Tensor::random([1, side * side, config.in_channels], normal, device),
        text,
        delta,
        delta_time: tick.elapsed(),
    })
}

/// The Euler loop with Δ cached: a one-step warm-up, then `size.generation_steps` steps if
/// `time_left` says there is time.
pub fn generation<B: FluxOps>(
    size: &WorkloadSize,
    flux: &Flux<B>,
    inputs: &GenerationInputs<B>,
    device: &B::Device,
    mut time_left: impl FnMut(Duration) -> bool,
) -> Result<Timed, String> {
    let side = size.resolution / 16;
    let (h, w) = (2 * side, 2 * side);
    let timesteps = schedule(size.generation_steps, side * side, true);
    let run = |steps: &[f32]| -> Result<Duration, String> {
        let tick = Instant::now();
        // denoise reads the result back (its finiteness check), so the device has finished.
        denoise(
            flux,
            inputs.noise.clone(),
            img_ids(1, h, w, device),
            inputs.text.clone(),
            txt_ids(1, size.txt_tokens, device),
            inputs.pooled.clone(),
            Some(Tensor::full([1], 3.5, device)),
            steps,
            Some(&inputs.delta),
            &mut (),
        )
        .map_err(|e| e.to_string())?;
        Ok(tick.elapsed())
    };
    let mut timed = Timed {
        warm_up: Some(run(&timesteps[..2])?),
        runs: Vec::new(),
    };
    if time_left(timed.warm_up.unwrap_or_default() * size.generation_steps as u32) {
        timed.runs.push(run(&timesteps)?);
    }
    Ok(timed)
}

fn delta_probe<B: Backend>(delta: &TextModulation<B>) -> f32 {
    delta
        .shared
        .as_ref()
        .map(|s| {
            s.clone()
                .slice([0..1, 0..1, 0..1])
                .into_scalar()
                .elem::<f32>()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::super::Phase;
    use super::*;

    /// The estimates the check prints beside its measurements at FLUX.1-dev size (CUDA: no
    /// fused attention): the generation's FLUX stage fits 24 GiB, training at batch 1 does not.
    #[test]
    fn dev_estimates() {
        let size = WorkloadSize::dev();
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        let generation = size.estimate_bytes(&Phase::Generation, false);
        let one = size.estimate_bytes(
            &Phase::Stage1 {
                batch: 1,
                checkpointing: false,
            },
            false,
        );
        let two = size.estimate_bytes(
            &Phase::Stage1 {
                batch: 2,
                checkpointing: false,
            },
            false,
        );
        eprintln!(
            "FLUX.1-dev 512²: generation {:.1} GiB, stage-1 batch 1 {:.1} GiB, batch 2 {:.1} GiB",
            gib(generation),
            gib(one),
            gib(two)
        );
        assert!(gib(generation) < 24.0 && gib(generation) > 22.0);
        assert!(gib(one) > 24.0 && two > one);
        assert!(
            size.forward_flop(11_901_408_320) > 3.8e13,
            "the issue's 38 TFLOP"
        );
    }
}
