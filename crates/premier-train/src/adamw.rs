//! AdamW as `torch.optim.AdamW` (the released cold-start config: lr 0.01, weight decay 1e-4), on
//! flattened parameters like [`crate::prodigy::Prodigy`].

use burn::prelude::*;
use premier_io::HostTensor;
use serde::{Deserialize, Serialize};

/// `torch.optim.AdamW` arguments with its defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdamWConfig {
    /// Learning rate.
    pub lr: f64,
    /// Decay rates of the first and second moment averages.
    pub betas: (f64, f64),
    /// Added to the denominator for numerical stability.
    pub eps: f64,
    /// Decoupled weight decay: each step scales a parameter by `1 - lr * weight_decay`.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 1e-2,
        }
    }
}

impl AdamWConfig {
    /// Premier's `premier_user_linear.yaml`: lr 0.01, weight decay 1e-4.
    pub fn premier_cold_start() -> Self {
        Self {
            lr: 0.01,
            weight_decay: 1e-4,
            ..Self::default()
        }
    }
}

/// AdamW's full state on the host, for checkpoints.
#[derive(Debug, Clone, PartialEq)]
pub struct AdamWState {
    /// Steps taken.
    pub step: u64,
    /// Per parameter (position as in `step`): `None` if it never took a step; else the first and
    /// second moments.
    pub moments: Vec<Option<(HostTensor, HostTensor)>>,
}

/// AdamW state over a fixed list of flattened parameters.
#[derive(Debug, Clone)]
pub struct AdamW<B: Backend> {
    config: AdamWConfig,
    step: u64,
    moments: Vec<Option<(Tensor<B, 1>, Tensor<B, 1>)>>,
}

impl<B: Backend> AdamW<B> {
    /// A fresh optimizer (no steps taken, no moments yet).
    pub fn new(config: AdamWConfig) -> Self {
        Self {
            config,
            step: 0,
            moments: Vec::new(),
        }
    }

    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// The arguments it was built with.
    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// The full state, on the host.
    pub fn state(&self) -> AdamWState {
        AdamWState {
            step: self.step,
            moments: self
                .moments
                .iter()
                .map(|m| {
                    m.as_ref().map(|(m, v)| {
                        (
                            HostTensor::from_tensor(m.clone()),
                            HostTensor::from_tensor(v.clone()),
                        )
                    })
                })
                .collect(),
        }
    }

    /// An optimizer continuing from `state` (as returned by [`AdamW::state`]).
    pub fn from_state(config: AdamWConfig, state: AdamWState, device: &B::Device) -> Self {
        Self {
            config,
            step: state.step,
            moments: state
                .moments
                .into_iter()
                .map(|m| m.map(|(m, v)| (m.into_tensor(device), v.into_tensor(device))))
                .collect(),
        }
    }

    /// One step (torch's single-tensor AdamW, without amsgrad): decay, moments, bias-corrected
    /// update. params and grads: `[n_i]` each, in the same order every call.
    pub fn step(
        &mut self,
        params: Vec<Tensor<B, 1>>,
        grads: Vec<Tensor<B, 1>>,
    ) -> Vec<Tensor<B, 1>> {
        let c = &self.config;
        let (beta1, beta2) = c.betas;
        self.step += 1;
        let t = self.step as i32;
        let bias1 = 1.0 - beta1.powi(t);
        let bias2_sqrt = (1.0 - beta2.powi(t)).sqrt();
        if self.moments.len() < params.len() {
            self.moments.resize(params.len(), None);
        }
        params
            .into_iter()
            .zip(grads)
            .enumerate()
            .map(|(i, (p, g))| {
                let (m, v) = self.moments[i]
                    .take()
                    .unwrap_or_else(|| (p.zeros_like(), p.zeros_like()));
                let p = p * (1.0 - c.lr * c.weight_decay);
                let m = m * beta1 + g.clone() * (1.0 - beta1);
                let v = v * beta2 + (g.clone() * g) * (1.0 - beta2);
                let denom = v.clone().sqrt() / bias2_sqrt + c.eps;
                let p = p + (m.clone() / denom) * (-c.lr / bias1);
                self.moments[i] = Some((m, v));
                p
            })
            .collect()
    }
}
