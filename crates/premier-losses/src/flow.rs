//! Rectified-flow matching as Premier trains it (`train_premier.py training_step`).

use burn::prelude::*;
use burn::tensor::Distribution;

/// How training draws the flow time `t ∈ (0, 1)` (1 = pure noise).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub enum TimestepSampler {
    /// `t = sigmoid(N(mean, std))`; the released training uses mean 1.0, std 1.0.
    LogitNormal {
        /// Mean of the normal before the sigmoid.
        mean: f64,
        /// Standard deviation of the normal before the sigmoid.
        std: f64,
    },
    /// `t ~ U(0, 1)`.
    Uniform,
    /// `t ~ U(0, 1)` pushed through FLUX's resolution shift with `mu`
    /// (`e^mu / (e^mu + 1/t - 1)`; mu = 0.5 at 256 image tokens, 1.15 at 4096).
    FluxShifted {
        /// The shift's μ (larger: more time near t = 1, the noise end).
        mu: f64,
    },
}

impl Default for TimestepSampler {
    /// The released stage-1 setting: logit-normal, mean 1, std 1, no shift.
    fn default() -> Self {
        Self::LogitNormal {
            mean: 1.0,
            std: 1.0,
        }
    }
}

impl TimestepSampler {
    /// Draws `batch` flow times with the backend's RNG: `[batch]`.
    pub fn sample<B: Backend>(&self, batch: usize, device: &B::Device) -> Tensor<B, 1> {
        match *self {
            Self::LogitNormal { mean, std } => burn::tensor::activation::sigmoid(Tensor::random(
                [batch],
                Distribution::Normal(mean, std),
                device,
            )),
            Self::Uniform => Tensor::random([batch], Distribution::Uniform(0.0, 1.0), device),
            Self::FluxShifted { mu } => shift_timesteps(
                Tensor::random([batch], Distribution::Uniform(0.0, 1.0), device),
                mu,
            ),
        }
    }
}

impl TimestepSampler {
    /// Draws `n` flow times on the host from `rng` (reproducible across backends and resumable:
    /// the trainer derives one RNG per step from its seed).
    pub fn sample_with<R: rand::Rng>(&self, rng: &mut R, n: usize) -> Vec<f32> {
        use rand_distr::Distribution as _;
        (0..n)
            .map(|_| match *self {
                Self::LogitNormal { mean, std } => {
                    let z: f64 = rand_distr::Normal::new(mean, std)
                        .map(|d| d.sample(rng))
                        .unwrap_or(mean);
                    (1.0 / (1.0 + (-z).exp())) as f32
                }
                Self::Uniform => rng.random::<f32>(),
                Self::FluxShifted { mu } => {
                    let t: f64 = rng.random();
                    let e = mu.exp();
                    (e * t / (e * t + 1.0 - t)) as f32
                }
            })
            .collect()
    }
}

/// FLUX's time shift `e^mu / (e^mu + (1/t - 1))` (BFL `time_shift` with sigma 1): any shape.
/// t = 0 maps to 0.
pub fn shift_timesteps<B: Backend, const D: usize>(t: Tensor<B, D>, mu: f64) -> Tensor<B, D> {
    let e = mu.exp();
    // e·t / (e·t + 1 - t) equals e / (e + 1/t - 1) and is finite at t = 0.
    let et = t.clone() * e;
    et.clone() / (et + 1.0 - t)
}

/// `x_t = (1 - t)·x0 + t·noise` with one `t` per sample.
///
/// x0, noise: `[batch, tokens, channels]`; t: `[batch]` → `[batch, tokens, channels]`.
pub fn interpolate<B: Backend>(
    x0: Tensor<B, 3>,
    noise: Tensor<B, 3>,
    t: Tensor<B, 1>,
) -> Tensor<B, 3> {
    let t = t.reshape([-1, 1, 1]);
    x0 * (t.clone().neg() + 1.0) + noise * t
}

/// The velocity the model learns: `noise - x0`.
pub fn flow_target<B: Backend, const D: usize>(
    x0: Tensor<B, D>,
    noise: Tensor<B, D>,
) -> Tensor<B, D> {
    noise - x0
}

/// `mean((pred - (noise - x0))²)` over every element: `[1]`.
pub fn flow_matching_loss<B: Backend, const D: usize>(
    pred: Tensor<B, D>,
    x0: Tensor<B, D>,
    noise: Tensor<B, D>,
) -> Tensor<B, 1> {
    (pred - flow_target(x0, noise)).powi_scalar(2).mean()
}
