//! Stage 1 (SPEC §4.1): the adapters and the user table learn through the frozen FLUX backbone,
//! with the flow-matching loss plus dispersion on each adapter's Δ.

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use premier_adapter::PreferenceAdapter;
use premier_losses::{
    dispersion_loss_with_tau, flow_matching_loss, interpolate, DispersionVariant, TimestepSampler,
};
use premier_mmdit::{
    img_ids, txt_ids, Flux, FluxAutodiffBackend, FluxInput, FluxOps, ForwardError, TextModulation,
};
use premier_users::{UserError, UserTable};
use serde::{Deserialize, Serialize};

use crate::parallel::{add_grads, split_gradients};
use crate::params::{apply, assign_flat, flat_values, gradients, scalar};
use crate::prodigy::{Prodigy, ProdigyConfig};
use crate::schedule::LrSchedule;

/// Which prompt the dispersion loss sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum DispersionPrompt {
    /// Δ of the empty prompt for each user (the paper; the SPEC's recommendation).
    #[default]
    Null,
    /// Δ of the batch's own prompts (what the released run effectively did).
    Batch,
}

/// Stage-1 settings; defaults are the released run's, except the dispersion: a hinge whose margin
/// is relative to the modulation vector y (the paper's L2 runs away; docs/synth.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Stage1Config {
    /// `None` is the paper's "w/o dispersion" ablation (written `"None"` in config files).
    #[serde(with = "dispersion_or_none")]
    pub dispersion: Option<DispersionVariant>,
    /// Which prompt the dispersion loss sees.
    pub dispersion_prompt: DispersionPrompt,
    /// For [`DispersionVariant::Hinge`]: users whose Δ differ by less than this times RMS(y) per
    /// feature (y = FLUX's modulation vector of the batch, detached) are pushed apart. The other
    /// variants use τ = 1 as in the paper and code.
    #[serde(default = "default_margin")]
    pub dispersion_margin: f64,
    /// Weight of the dispersion on Δ_shared in the total loss.
    pub lambda_shared: f64,
    /// Weight of the dispersion on Δ_distinct in the total loss.
    pub lambda_distinct: f64,
    /// How the flow times `t` are drawn.
    pub timesteps: TimestepSampler,
    /// Distilled guidance fed during training (1.0 as released).
    pub guidance: f32,
    /// Global gradient-norm clip (0.5 as released); `None` disables it.
    pub clip_norm: Option<f64>,
    /// Prodigy's arguments.
    pub optimizer: ProdigyConfig,
    /// Multiplies `optimizer.lr` by step (constant as released).
    pub lr_schedule: LrSchedule,
    /// Seed of the per-step noise and times: step `k` always draws the same, so a resumed run
    /// continues exactly.
    pub seed: u64,
}

/// `Option<DispersionVariant>` as a name, `"None"` for none: config files cannot hold a null, and
/// an omitted key means "the default", which is a dispersion loss.
mod dispersion_or_none {
    use premier_losses::DispersionVariant;
    use serde::de::IntoDeserializer;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(
        v: &Option<DispersionVariant>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            None => s.serialize_str("None"),
            Some(v) => v.serialize(s),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<DispersionVariant>, D::Error> {
        match Option::<String>::deserialize(d)?.as_deref() {
            None | Some("None") => Ok(None),
            Some(name) => DispersionVariant::deserialize(name.into_deserializer()).map(Some),
        }
    }
}

fn default_margin() -> f64 {
    0.25
}

impl Default for Stage1Config {
    fn default() -> Self {
        Self {
            dispersion: Some(DispersionVariant::Hinge),
            dispersion_prompt: DispersionPrompt::Null,
            dispersion_margin: default_margin(),
            lambda_shared: 0.1,
            lambda_distinct: 0.1,
            timesteps: TimestepSampler::default(),
            guidance: 1.0,
            clip_norm: Some(0.5),
            optimizer: ProdigyConfig::premier(),
            lr_schedule: LrSchedule::Constant {},
            seed: 0,
        }
    }
}

/// What stage 1 trains.
#[derive(Module, Debug)]
pub struct Stage1Model<B: Backend> {
    /// The adapters that turn text tokens and a user embedding into Δ.
    pub adapter: PreferenceAdapter<B>,
    /// The trained users' embeddings.
    pub users: UserTable<B>,
}

/// One training batch, already encoded (VAE latents and text features).
#[derive(Debug, Clone)]
pub struct Stage1Batch<B: Backend> {
    /// Packed clean latents: `[batch, img_tokens, in_channels]`.
    pub x0: Tensor<B, 3>,
    /// Latent height and width before packing (for the position ids).
    pub latent_hw: (usize, usize),
    /// T5 tokens of the captions: `[batch, txt_tokens, text_dim]`.
    pub text: Tensor<B, 3>,
    /// CLIP pooled captions: `[batch, vec_in_dim]`.
    pub pooled: Tensor<B, 2>,
    /// Table index of each sample's user.
    pub users: Vec<usize>,
    /// T5 tokens of the empty prompt `[1, txt_tokens, text_dim]`, for [`DispersionPrompt::Null`].
    pub null_text: Option<Tensor<B, 3>>,
}

/// The loss of one step and its parts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    /// The step's number (1 for the first step).
    pub step: u64,
    /// The total loss.
    #[serde(deserialize_with = "crate::metrics::nan_if_null")]
    pub loss: f64,
    /// The flow-matching loss.
    #[serde(deserialize_with = "crate::metrics::nan_if_null")]
    pub flow: f64,
    /// The dispersion loss on Δ_shared (before its λ).
    #[serde(deserialize_with = "crate::metrics::nan_if_null")]
    pub dispersion_shared: f64,
    /// The dispersion loss on Δ_distinct (before its λ).
    #[serde(deserialize_with = "crate::metrics::nan_if_null")]
    pub dispersion_distinct: f64,
    /// Prodigy's step size estimate after the step.
    #[serde(deserialize_with = "crate::metrics::nan_if_null")]
    pub d: f64,
    /// Global gradient norm before clipping.
    #[serde(deserialize_with = "crate::metrics::nan_if_null")]
    pub grad_norm: f64,
    /// RMS of the Δ added to the text tokens (Δ_shared + Δ_distinct of each block) over the RMS
    /// of the modulation vector y it is added to: how far Premier moves FLUX (NaN where not
    /// measured, and in metrics written before it existed).
    #[serde(default = "nan", deserialize_with = "crate::metrics::nan_if_null")]
    pub delta_to_y: f64,
}

fn nan() -> f64 {
    f64::NAN
}

/// Errors of a training step.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A user could not be looked up or built.
    #[error(transparent)]
    User(#[from] UserError),
    /// The backbone's forward pass refused its inputs.
    #[error(transparent)]
    Forward(#[from] ForwardError),
    /// The batch does not fit (sizes, users, missing null prompt); the message says why.
    #[error("{0}")]
    Batch(String),
    /// A NaN or infinite loss, gradient norm or Prodigy step size d: the parameters (and the
    /// last checkpoint on disk) are those of the step before. A non-finite d is only known after
    /// the optimizer ran, so its own state has moved; the run stops either way.
    #[error("step {step}: the {quantity} is {value}; training stopped without applying the step (the last checkpoint holds the last good state)")]
    NonFinite {
        /// The step's number.
        step: u64,
        /// What was not finite (e.g. `"loss"`, `"gradient norm"`).
        quantity: &'static str,
        /// Its value.
        value: f64,
    },
}

impl TrainError {
    /// `Err(NonFinite)` unless `value` is finite.
    pub(crate) fn check_finite(step: u64, quantity: &'static str, value: f64) -> Result<(), Self> {
        if value.is_finite() {
            Ok(())
        } else {
            Err(Self::NonFinite {
                step,
                quantity,
                value,
            })
        }
    }
}

/// The encoded images and captions a flow loss is computed on.
#[derive(Debug, Clone, Copy)]
pub struct FlowBatch<'a, B: Backend> {
    /// Packed clean latents: `[batch, img_tokens, in_channels]`.
    pub x0: &'a Tensor<B, 3>,
    /// Latent height and width before packing.
    pub latent_hw: (usize, usize),
    /// `[batch, txt_tokens, text_dim]`.
    pub text: &'a Tensor<B, 3>,
    /// `[batch, vec_in_dim]`.
    pub pooled: &'a Tensor<B, 2>,
}

/// The flow-matching loss of FLUX, steered by `delta` if given, on `batch` noised with `noise`
/// `[batch, img_tokens, in_channels]` at times `t` `[batch]`, with a constant guidance (`None`
/// for models without guidance embedding): `[1]`. Shared by both training stages (and by
/// backbone pretraining, without Δ).
pub fn modulated_flow_loss<B: FluxOps>(
    flux: &Flux<B>,
    batch: FlowBatch<'_, B>,
    noise: Tensor<B, 3>,
    t: Tensor<B, 1>,
    guidance: Option<f32>,
    delta: Option<&TextModulation<B>>,
) -> Result<Tensor<B, 1>, ForwardError> {
    let n = batch.x0.dims()[0];
    let device = batch.x0.device();
    let (h, w) = batch.latent_hw;
    let input = FluxInput {
        img: interpolate(batch.x0.clone(), noise.clone(), t.clone()),
        img_ids: img_ids(n, h, w, &device),
        txt: batch.text.clone(),
        txt_ids: txt_ids(n, batch.text.dims()[1], &device),
        timesteps: t,
        y: batch.pooled.clone(),
        guidance: guidance.map(|g| Tensor::full([n], g, &device)),
    };
    let pred = flux.try_forward(input, delta)?;
    Ok(flow_matching_loss(pred, batch.x0.clone(), noise))
}

/// The loss parts as tensors (so the caller can backpropagate).
pub struct Stage1Loss<B: Backend> {
    /// `flow + lambda_shared · dispersion_shared + lambda_distinct · dispersion_distinct`: `[1]`.
    pub total: Tensor<B, 1>,
    /// The flow-matching loss: `[1]`.
    pub flow: Tensor<B, 1>,
    /// The dispersion loss on Δ_shared (zero without one): `[1]`.
    pub dispersion_shared: Tensor<B, 1>,
    /// The dispersion loss on Δ_distinct (zero without one): `[1]`.
    pub dispersion_distinct: Tensor<B, 1>,
    /// RMS(Δ) / RMS(y) of the batch (see [`StepReport::delta_to_y`]), detached.
    pub delta_to_y: f64,
    /// The mean squares behind `delta_to_y` (RMS(Δ)², RMS(y)²), so the ratio of a batch split
    /// into equal row blocks can be put together exactly.
    pub delta_ms: f64,
    /// RMS(y)² (see `delta_ms`).
    pub y_ms: f64,
}

/// RMS of a tensor's elements, detached: `[1]`.
fn rms<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, 1> {
    t.detach().powi_scalar(2).mean().sqrt()
}

/// RMS of the Δ each double block adds (Δ_shared + its Δ_distinct), detached: `[1]`.
pub fn delta_rms<B: Backend>(delta: &TextModulation<B>) -> Tensor<B, 1> {
    match (&delta.shared, &delta.distinct) {
        (Some(s), Some(d)) => rms(s.clone().unsqueeze_dim::<4>(2) + d.clone()),
        (Some(s), None) => rms(s.clone()),
        (None, Some(d)) => rms(d.clone()),
        (None, None) => Tensor::zeros([1], &Default::default()),
    }
}

/// The noise `[batch, tokens, channels]` and times `[batch]` of step `step`: a host RNG seeded from
/// (seed, step), so any step can be replayed without saved RNG state.
pub fn step_noise<B: Backend>(
    seed: u64,
    step: u64,
    sampler: &TimestepSampler,
    dims: [usize; 3],
    device: &B::Device,
) -> (Tensor<B, 3>, Tensor<B, 1>) {
    use rand::SeedableRng;
    use rand_distr::Distribution as _;
    let mut rng =
        rand::rngs::StdRng::seed_from_u64(seed ^ (step + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let t = sampler.sample_with(&mut rng, dims[0]);
    let noise: Vec<f32> = (0..dims.iter().product::<usize>())
        .map(|_| rand_distr::StandardNormal.sample(&mut rng))
        .collect();
    (
        Tensor::from_data(TensorData::new(noise, dims), device),
        Tensor::from_data(TensorData::new(t, [dims[0]]), device),
    )
}

/// Rows of a Δ part flattened per sample: `[batch, …]` → `[batch, features]`.
fn per_sample<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, 2> {
    let batch = t.dims()[0];
    t.reshape([batch as i32, -1])
}

fn check_batch<B: Backend>(batch: &Stage1Batch<B>) -> Result<(), TrainError> {
    let n = batch.users.len();
    if batch.x0.dims()[0] != n || batch.text.dims()[0] != n || batch.pooled.dims()[0] != n {
        return Err(TrainError::Batch(format!(
            "{n} users but x0 {:?}, text {:?}, pooled {:?}",
            batch.x0.dims(),
            batch.text.dims(),
            batch.pooled.dims()
        )));
    }
    Ok(())
}

/// RMS(y)² of FLUX's modulation vector for the batch at times `t` `[batch]`, detached.
fn modulation_ms<B: Backend>(
    flux: &Flux<B>,
    batch: &Stage1Batch<B>,
    t: Tensor<B, 1>,
    config: &Stage1Config,
) -> f64 {
    // Models without guidance embedding ignore the guidance.
    let guidance = Some(Tensor::full([t.dims()[0]], config.guidance, &t.device()));
    let y = flux.conditioning_vector(t, batch.pooled.clone(), guidance);
    scalar(rms(y)).powi(2)
}

/// The two dispersion terms (shared, distinct; `[1]` each, zero without a dispersion loss) of
/// the batch's users. `delta` is Δ of the batch's own prompts, used for
/// [`DispersionPrompt::Batch`] (computed here if `None`); `y_ms` scales the hinge's margin.
fn dispersion_terms<B: FluxOps>(
    model: &Stage1Model<B>,
    batch: &Stage1Batch<B>,
    user: Tensor<B, 3>,
    delta: Option<TextModulation<B>>,
    y_ms: f64,
    config: &Stage1Config,
) -> Result<(Tensor<B, 1>, Tensor<B, 1>), TrainError> {
    let n = batch.users.len();
    let device = batch.x0.device();
    let zero = || Tensor::<B, 1>::zeros([1], &device);
    let Some(variant) = config.dispersion else {
        return Ok((zero(), zero()));
    };
    let y_rms = y_ms.sqrt().max(f64::MIN_POSITIVE);
    let tau = match variant {
        DispersionVariant::Hinge => (config.dispersion_margin * y_rms).powi(2),
        _ => 1.0,
    };
    let delta: TextModulation<B> = match (config.dispersion_prompt, &batch.null_text) {
        (DispersionPrompt::Null, Some(null)) => {
            model.adapter.forward(null.clone().repeat_dim(0, n), user)
        }
        (DispersionPrompt::Null, None) => {
            return Err(TrainError::Batch(
                "dispersion on the null prompt needs Stage1Batch::null_text".into(),
            ))
        }
        (DispersionPrompt::Batch, _) => match delta {
            Some(delta) => delta,
            None => model.adapter.forward(batch.text.clone(), user),
        },
    };
    let shared = delta.shared.map_or_else(zero, |s| {
        dispersion_loss_with_tau(per_sample(s), variant, tau)
    });
    let distinct = delta.distinct.map_or_else(zero, |d| {
        dispersion_loss_with_tau(per_sample(d), variant, tau)
    });
    Ok((shared, distinct))
}

/// The stage-1 objective for one batch with given noise `[batch, img_tokens, in_channels]` and
/// times `[batch]`.
pub fn stage1_loss<B: FluxOps>(
    flux: &Flux<B>,
    model: &Stage1Model<B>,
    batch: &Stage1Batch<B>,
    noise: Tensor<B, 3>,
    t: Tensor<B, 1>,
    config: &Stage1Config,
) -> Result<Stage1Loss<B>, TrainError> {
    check_batch(batch)?;
    let user = model.users.lookup(&batch.users)?;
    let delta = model.adapter.forward(batch.text.clone(), user.clone());
    let y_ms = modulation_ms(flux, batch, t.clone(), config);
    let flow = modulated_flow_loss(
        flux,
        FlowBatch {
            x0: &batch.x0,
            latent_hw: batch.latent_hw,
            text: &batch.text,
            pooled: &batch.pooled,
        },
        noise,
        t,
        Some(config.guidance),
        Some(&delta),
    )?;
    let delta_ms = scalar(delta_rms(&delta)).powi(2);
    let (disp_s, disp_d) = dispersion_terms(model, batch, user, Some(delta), y_ms, config)?;
    let total = flow.clone()
        + disp_s.clone() * config.lambda_shared
        + disp_d.clone() * config.lambda_distinct;
    Ok(Stage1Loss {
        total,
        flow,
        dispersion_shared: disp_s,
        dispersion_distinct: disp_d,
        delta_to_y: delta_ms.sqrt() / y_ms.sqrt().max(f64::MIN_POSITIVE),
        delta_ms,
        y_ms,
    })
}

/// Stage-1 training: the frozen backbone, the trained model and Prodigy's state.
pub struct Stage1Trainer<B: AutodiffBackend> {
    /// Frozen: no parameter of it takes a gradient or changes.
    pub flux: Flux<B>,
    /// The adapters and user table being trained.
    pub model: Stage1Model<B>,
    /// Prodigy's state.
    pub optimizer: Prodigy<B::InnerBackend>,
    /// The settings of the run.
    pub config: Stage1Config,
    /// Steps taken.
    pub step: u64,
    /// Threads each batch's rows are split over (data parallel on one device; 1: no split). The
    /// step is the same sum as without the split (the same noise, the dispersion over the whole
    /// batch), up to the order of float additions.
    pub workers: usize,
}

/// A running sum of micro-batches' gradients and reported parts (each already divided by the
/// number of micro-batches).
struct Accumulated<B: AutodiffBackend> {
    grads: Option<Vec<Tensor<B::InnerBackend, 1>>>,
    parts: [f64; 4],
    delta_to_y: f64,
}

impl<B: AutodiffBackend> Default for Accumulated<B> {
    fn default() -> Self {
        Self {
            grads: None,
            parts: [0.0; 4],
            delta_to_y: 0.0,
        }
    }
}

impl<B: AutodiffBackend> Accumulated<B> {
    fn finish(self) -> BatchGradients<B> {
        BatchGradients {
            grads: self.grads.unwrap_or_default(),
            parts: self.parts,
            delta_to_y: self.delta_to_y,
        }
    }
}

/// The gradients of one step's loss before the optimizer sees them, and the parts reported.
pub struct BatchGradients<B: AutodiffBackend> {
    /// Flat gradients `[n_i]`, in [`crate::params::flat_values`] order.
    pub grads: Vec<Tensor<B::InnerBackend, 1>>,
    /// total, flow, dispersion shared, dispersion distinct (means over the micro-batches).
    pub parts: [f64; 4],
    /// See [`StepReport::delta_to_y`].
    pub delta_to_y: f64,
}

impl<B: Backend> Stage1Batch<B> {
    /// The batch's rows `rows` (the null prompt is kept).
    pub fn rows(&self, rows: std::ops::Range<usize>) -> Self {
        Self {
            x0: self.x0.clone().slice(rows.clone()),
            latent_hw: self.latent_hw,
            text: self.text.clone().slice(rows.clone()),
            pooled: self.pooled.clone().slice(rows.clone()),
            users: self.users[rows].to_vec(),
            null_text: self.null_text.clone(),
        }
    }
}

impl<B: AutodiffBackend> Stage1Trainer<B> {
    /// A trainer at step 0 with a fresh Prodigy and one worker; `flux` is frozen.
    pub fn new(flux: Flux<B>, model: Stage1Model<B>, config: Stage1Config) -> Self {
        Self {
            flux: flux.no_grad(),
            model,
            optimizer: Prodigy::new(config.optimizer.clone()),
            config,
            step: 0,
            workers: 1,
        }
    }

    /// Splits each batch's rows over `workers` threads (see [`Self::workers`]).
    pub fn with_workers(mut self, workers: usize) -> Self {
        self.workers = workers.max(1);
        self
    }
}

impl<B: FluxAutodiffBackend> Stage1Trainer<B> {
    /// One step with the noise and times of this step (derived from the seed and step number).
    pub fn step(&mut self, batch: &Stage1Batch<B>) -> Result<StepReport, TrainError> {
        self.step_accumulated(std::slice::from_ref(batch))
    }

    /// One optimizer step over several micro-batches (gradient accumulation): each micro-batch's
    /// loss is backpropagated on its own and the gradients averaged, so memory is that of one
    /// micro-batch. Dispersion contrasts the users within each micro-batch. Micro-batch `i` of
    /// step `k` draws the noise of (seed + i, k); with one micro-batch this equals [`Self::step`].
    pub fn step_accumulated(
        &mut self,
        micro_batches: &[Stage1Batch<B>],
    ) -> Result<StepReport, TrainError> {
        // Tensors are shared, not copied, by the clone.
        self.step_streamed(micro_batches.len(), |i| Ok(micro_batches[i].clone()))
    }

    /// [`Self::step_accumulated`] with the micro-batches made one at a time by `next(i)`, for
    /// `i` in `0..count`, and dropped after their backward pass: memory stays that of one
    /// micro-batch however many are accumulated.
    pub fn step_streamed<E: From<TrainError>>(
        &mut self,
        count: usize,
        mut next: impl FnMut(usize) -> Result<Stage1Batch<B>, E>,
    ) -> Result<StepReport, E> {
        if count == 0 {
            return Err(TrainError::Batch("no micro-batches to accumulate".into()).into());
        }
        let mut sum = Accumulated::default();
        for i in 0..count {
            let batch = next(i)?;
            let (noise, t) = step_noise(
                self.config.seed.wrapping_add(i as u64),
                self.step,
                &self.config.timesteps,
                batch.x0.dims(),
                &batch.x0.device(),
            );
            sum = self.accumulate(sum, &batch, noise, t, count as f64)?;
        }
        Ok(self.apply_gradients(sum.finish())?)
    }

    /// [`Self::step_accumulated`] with given noise and times for each micro-batch.
    pub fn step_accumulated_with(
        &mut self,
        micro_batches: Vec<(&Stage1Batch<B>, Tensor<B, 3>, Tensor<B, 1>)>,
    ) -> Result<StepReport, TrainError> {
        let gradients = self.gradients_accumulated_with(micro_batches)?;
        self.apply_gradients(gradients)
    }

    /// Clips the gradients, takes the optimizer step and reports it: the second half of a step,
    /// for gradients computed elsewhere ([`Self::gradients_accumulated_with`], or summed over
    /// devices). A non-finite loss or gradient norm changes nothing and is an error naming the
    /// step.
    pub fn apply_gradients(
        &mut self,
        gradients: BatchGradients<B>,
    ) -> Result<StepReport, TrainError> {
        let BatchGradients {
            grads,
            parts,
            delta_to_y,
        } = gradients;
        let step = self.step + 1;
        TrainError::check_finite(step, "loss", parts[0])?;
        let optimizer = &mut self.optimizer;
        optimizer.set_lr(self.config.optimizer.lr * self.config.lr_schedule.factor(self.step));
        let (model, grad_norm) = apply(self.model.clone(), grads, self.config.clip_norm, |p, g| {
            optimizer.step(p, g)
        })
        .map_err(|norm| TrainError::NonFinite {
            step,
            quantity: "gradient norm",
            value: norm,
        })?;
        TrainError::check_finite(step, "optimizer's step size d", self.optimizer.d())?;
        self.model = model;
        self.step = step;
        Ok(StepReport {
            step: self.step,
            loss: parts[0],
            flow: parts[1],
            dispersion_shared: parts[2],
            dispersion_distinct: parts[3],
            d: self.optimizer.d(),
            grad_norm,
            delta_to_y,
        })
    }

    /// Adds one micro-batch's gradients (its loss divided by `k`) to `sum`.
    fn accumulate(
        &self,
        sum: Accumulated<B>,
        batch: &Stage1Batch<B>,
        noise: Tensor<B, 3>,
        t: Tensor<B, 1>,
        k: f64,
    ) -> Result<Accumulated<B>, TrainError> {
        let micro = if self.workers > 1 && batch.users.len() > 1 {
            self.split_gradients(batch, noise, t, k)?
        } else {
            self.batch_gradients(batch, noise, t, k)?
        };
        let mut parts = sum.parts;
        for (acc, part) in parts.iter_mut().zip(micro.parts) {
            *acc += part / k;
        }
        Ok(Accumulated {
            grads: add_grads(sum.grads, micro.grads),
            parts,
            delta_to_y: sum.delta_to_y + micro.delta_to_y / k,
        })
    }

    /// The gradients [`Self::step_accumulated_with`] hands the optimizer (the mean of the
    /// micro-batches' losses), computed on [`Self::workers`] threads; the parameters are not
    /// changed.
    pub fn gradients_accumulated_with(
        &self,
        micro_batches: Vec<(&Stage1Batch<B>, Tensor<B, 3>, Tensor<B, 1>)>,
    ) -> Result<BatchGradients<B>, TrainError> {
        let k = micro_batches.len() as f64;
        let mut sum = Accumulated::default();
        for (batch, noise, t) in micro_batches {
            sum = self.accumulate(sum, batch, noise, t, k)?;
        }
        Ok(sum.finish())
    }

    /// The gradients of the batch's loss divided by `k`, on this thread.
    fn batch_gradients(
        &self,
        batch: &Stage1Batch<B>,
        noise: Tensor<B, 3>,
        t: Tensor<B, 1>,
        k: f64,
    ) -> Result<BatchGradients<B>, TrainError> {
        let loss = stage1_loss(&self.flux, &self.model, batch, noise, t, &self.config)?;
        let parts = [
            &loss.total,
            &loss.flow,
            &loss.dispersion_shared,
            &loss.dispersion_distinct,
        ]
        .map(|part| scalar(part.clone()));
        Ok(BatchGradients {
            grads: gradients(&self.model, loss.total / k),
            parts,
            delta_to_y: loss.delta_to_y,
        })
    }

    /// [`Self::batch_gradients`] with the rows split over [`Self::workers`] threads
    /// ([`split_gradients`]: each backpropagates its rows' share of the flow loss); the
    /// dispersion of the whole batch (the adapters only, no FLUX) runs on this thread meanwhile,
    /// its gradients added last.
    fn split_gradients(
        &self,
        batch: &Stage1Batch<B>,
        noise: Tensor<B, 3>,
        t: Tensor<B, 1>,
        k: f64,
    ) -> Result<BatchGradients<B>, TrainError> {
        check_batch(batch)?;
        let block_loss = |model: &Stage1Model<B>, rows: std::ops::Range<usize>| {
            let loss = self.block_flow_loss(model, batch, &noise, &t, rows)?;
            let report = (scalar(loss.flow.clone()), loss.delta_ms, loss.y_ms);
            Ok::<_, TrainError>((loss.flow / k, report))
        };
        let (flows, dispersion) = split_gradients(
            &self.model,
            batch.users.len(),
            self.workers,
            block_loss,
            || self.dispersion_gradients(batch, t.clone(), k),
        );
        let flows = flows?;
        let (mut flow, mut delta_ms, mut y_ms) = (0.0, 0.0, 0.0);
        for (share, (part_flow, part_delta_ms, part_y_ms)) in flows.blocks {
            flow += share * part_flow;
            delta_ms += share * part_delta_ms;
            y_ms += share * part_y_ms;
        }
        let mut sum = Some(flows.grads);
        let [mut shared, mut distinct] = [0.0; 2];
        if let Some((grads, values)) = dispersion? {
            sum = add_grads(sum, grads);
            [shared, distinct] = values;
        }
        let total =
            flow + shared * self.config.lambda_shared + distinct * self.config.lambda_distinct;
        Ok(BatchGradients {
            grads: sum.unwrap_or_default(),
            parts: [total, flow, shared, distinct],
            delta_to_y: delta_ms.sqrt() / y_ms.sqrt().max(f64::MIN_POSITIVE),
        })
    }

    /// One peer's part of a data-parallel step ([`crate::data_parallel`]): the gradients of
    /// `share` × the flow loss of the batch's rows `rows` (their mean) plus, when `dispersion`
    /// is `Some((rows, weight))`, `weight` × the dispersion terms over those rows, in one
    /// backward pass. Returns the flat gradients and the reported parts weighted the same way:
    /// `[flow, delta_ms, y_ms, dispersion shared, dispersion distinct]`, so that summing peers'
    /// results gives the whole step's.
    #[cfg(feature = "collective")]
    #[allow(clippy::type_complexity)]
    pub(crate) fn shard_gradients(
        &self,
        batch: &Stage1Batch<B>,
        noise: Tensor<B, 3>,
        t: Tensor<B, 1>,
        (rows, share): (std::ops::Range<usize>, f64),
        dispersion: Option<(std::ops::Range<usize>, f64)>,
    ) -> Result<(Vec<Tensor<B::InnerBackend, 1>>, [f64; 5]), TrainError> {
        check_batch(batch)?;
        let flow = self.block_flow_loss(&self.model, batch, &noise, &t, rows)?;
        let mut parts = [
            share * scalar(flow.flow.clone()),
            share * flow.delta_ms,
            share * flow.y_ms,
            0.0,
            0.0,
        ];
        let mut loss = flow.flow * share;
        if let Some((rows, weight)) = dispersion.filter(|_| self.config.dispersion.is_some()) {
            let (terms, [s, d]) =
                self.dispersion_loss(&self.model, &batch.rows(rows.clone()), t.slice(rows))?;
            parts[3] = weight * s;
            parts[4] = weight * d;
            loss = loss + terms * weight;
        }
        Ok((gradients(&self.model, loss), parts))
    }

    /// The flow-only loss of the batch's rows `rows` through `model`, with those rows' noise
    /// and times (a block of [`Self::split_gradients`] or of a data-parallel peer).
    fn block_flow_loss(
        &self,
        model: &Stage1Model<B>,
        batch: &Stage1Batch<B>,
        noise: &Tensor<B, 3>,
        t: &Tensor<B, 1>,
        rows: std::ops::Range<usize>,
    ) -> Result<Stage1Loss<B>, TrainError> {
        let flow_only = Stage1Config {
            dispersion: None,
            ..self.config.clone()
        };
        let part = batch.rows(rows.clone());
        let (noise, t) = (noise.clone().slice(rows.clone()), t.clone().slice(rows));
        stage1_loss(&self.flux, model, &part, noise, t, &flow_only)
    }

    /// The gradients (divided by `k`) and values (shared, distinct) of the whole batch's
    /// dispersion terms through a copy of the trained parameters; `None` without dispersion.
    #[allow(clippy::type_complexity)]
    fn dispersion_gradients(
        &self,
        batch: &Stage1Batch<B>,
        t: Tensor<B, 1>,
        k: f64,
    ) -> Result<Option<(Vec<Tensor<B::InnerBackend, 1>>, [f64; 2])>, TrainError> {
        if self.config.dispersion.is_none() {
            return Ok(None);
        }
        let model = assign_flat(self.model.clone(), flat_values(&self.model));
        let (total, values) = self.dispersion_loss(&model, batch, t)?;
        Ok(Some((gradients(&model, total / k), values)))
    }

    /// λ_shared · shared + λ_distinct · distinct over the batch's users through `model` `[1]`,
    /// and the two terms' values.
    fn dispersion_loss(
        &self,
        model: &Stage1Model<B>,
        batch: &Stage1Batch<B>,
        t: Tensor<B, 1>,
    ) -> Result<(Tensor<B, 1>, [f64; 2]), TrainError> {
        let user = model.users.lookup(&batch.users)?;
        let y_ms = modulation_ms(&self.flux, batch, t, &self.config);
        let (s, d) = dispersion_terms(model, batch, user, None, y_ms, &self.config)?;
        let values = [scalar(s.clone()), scalar(d.clone())];
        Ok((
            s * self.config.lambda_shared + d * self.config.lambda_distinct,
            values,
        ))
    }

    /// One step with the given noise `[batch, img_tokens, in_channels]` and times `[batch]`.
    pub fn step_with(
        &mut self,
        batch: &Stage1Batch<B>,
        noise: Tensor<B, 3>,
        t: Tensor<B, 1>,
    ) -> Result<StepReport, TrainError> {
        self.step_accumulated_with(vec![(batch, noise, t)])
    }
}
