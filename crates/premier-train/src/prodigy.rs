//! Prodigy (Mishchenko & Defazio), an exact port of prodigyopt 1.1.2 (SPEC §6).
//!
//! One global step size estimate `d` for all parameters. Host scalars (`d`, its numerator and
//! denominator) are f64; the dot products and `Σ|s|` are reductions in the backend's float type,
//! widened afterwards, as the reference's `.item()` does (Flex sums chunks of 16 K elements in the
//! float type and adds them in f64). The elementwise passes are [`FluxOps::flux_prodigy_moments`]
//! and [`FluxOps::flux_prodigy_update`]: one fused pass each on Flex, the tensor ops elsewhere. A step uses the learning rate computed
//! from the `d` *before* the step together with the new `d` in the denominator, as the reference.

use burn::prelude::*;
use burn::tensor::ops::FloatTensor;
use burn::tensor::TensorPrimitive;
use premier_io::HostTensor;
use premier_mmdit::fused::{ProdigyCoefs, ProdigyMoments, ProdigyUpdate};
use premier_mmdit::FluxOps;
use serde::{Deserialize, Serialize};

/// prodigyopt's arguments, with its defaults (`ProdigyConfig::default()`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProdigyConfig {
    /// Learning rate: scales the step and d's numerator alike.
    pub lr: f64,
    /// Decay rates of the first and second moment averages.
    pub betas: (f64, f64),
    /// Decay of d's numerator and of `s`; `None` = √β2.
    pub beta3: Option<f64>,
    /// Added (times d) to the denominator for numerical stability.
    pub eps: f64,
    /// Weight decay (decoupled or added to the gradient, see `decouple`).
    pub weight_decay: f64,
    /// AdamW-style decoupled weight decay.
    pub decouple: bool,
    /// Scale the step by Adam's bias correction √(1 − β2^k) / (1 − β1^k).
    pub use_bias_correction: bool,
    /// Leave the learning rate and bias correction out of the update of `s` (the reference's
    /// warmup safeguard).
    pub safeguard_warmup: bool,
    /// Initial step size estimate d.
    pub d0: f64,
    /// Multiplies the estimate d̂.
    pub d_coef: f64,
    /// ∞ by default; written as `null` in JSON, which has no infinity.
    #[serde(with = "infinite_as_null")]
    pub growth_rate: f64,
}

mod infinite_as_null {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_infinite() {
            s.serialize_none()
        } else {
            s.serialize_some(v)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::INFINITY))
    }
}

impl Default for ProdigyConfig {
    fn default() -> Self {
        Self {
            lr: 1.0,
            betas: (0.9, 0.999),
            beta3: None,
            eps: 1e-8,
            weight_decay: 0.0,
            decouple: true,
            use_bias_correction: false,
            safeguard_warmup: false,
            d0: 1e-6,
            d_coef: 1.0,
            growth_rate: f64::INFINITY,
        }
    }
}

impl ProdigyConfig {
    /// Premier's stage-1 and direct-user settings: lr 1, bias correction, safeguard warmup,
    /// decoupled weight decay 1e-4.
    pub fn premier() -> Self {
        Self {
            use_bias_correction: true,
            safeguard_warmup: true,
            weight_decay: 1e-4,
            ..Self::default()
        }
    }
}

/// Per-parameter state.
#[derive(Debug, Clone)]
struct ParamState<B: Backend> {
    /// The parameter at its first step; `None` when it was all zero (the reference stores the
    /// scalar 0 then — the same maths).
    p0: Option<Tensor<B, 1>>,
    s: Tensor<B, 1>,
    exp_avg: Tensor<B, 1>,
    exp_avg_sq: Tensor<B, 1>,
}

/// The global scalars, after the last step (`param_groups[0]` of the reference).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ProdigyScalars {
    /// The step size estimate.
    pub d: f64,
    /// The largest d̂ so far (d0 at first); d never exceeds it.
    pub d_max: f64,
    /// d̂'s numerator: the β3-decayed sum of the weighted ⟨g, p0 − p⟩.
    pub d_numerator: f64,
    /// d̂'s denominator: Σ|s| over all parameters at the last step.
    pub d_denom: f64,
    /// The last estimate `d_coef · d_numerator / d_denom`.
    pub d_hat: f64,
    /// Steps taken.
    pub k: u64,
}

/// The optimizer over a fixed list of flattened parameters.
#[derive(Debug, Clone)]
pub struct Prodigy<B: Backend> {
    config: ProdigyConfig,
    scalars: ProdigyScalars,
    state: Vec<Option<ParamState<B>>>,
}

/// The optimizer's full state on the host, for checkpoints.
#[derive(Debug, Clone, PartialEq)]
pub struct ProdigyState {
    /// The global scalars.
    pub scalars: ProdigyScalars,
    /// Per parameter (position as in `step`): `None` if it never took a step; else
    /// (p0 — `None` when it was all zero —, s, exp_avg, exp_avg_sq).
    pub params: Vec<Option<ParamHostState>>,
}

/// One parameter's optimizer state on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamHostState {
    /// The parameter at its first step `[n]`; `None` when it was all zero.
    pub p0: Option<HostTensor>,
    /// The β3-decayed sum of weighted gradients behind d̂'s denominator `[n]`.
    pub s: HostTensor,
    /// First moment `[n]`.
    pub exp_avg: HostTensor,
    /// Second moment `[n]`.
    pub exp_avg_sq: HostTensor,
}

impl<B: Backend> Prodigy<B> {
    /// A fresh optimizer: d = d0, no steps taken.
    pub fn new(config: ProdigyConfig) -> Self {
        let d0 = config.d0;
        Self {
            config,
            scalars: ProdigyScalars {
                d: d0,
                d_max: d0,
                d_numerator: 0.0,
                d_denom: 0.0,
                d_hat: 0.0,
                k: 0,
            },
            state: Vec::new(),
        }
    }

    /// The arguments, with the learning rate last given to [`Prodigy::set_lr`].
    pub fn config(&self) -> &ProdigyConfig {
        &self.config
    }

    /// Sets the learning rate of the next steps, as a scheduler sets `param_groups[0]["lr"]`
    /// of the reference (it scales the step and d's numerator alike).
    pub fn set_lr(&mut self, lr: f64) {
        self.config.lr = lr;
    }

    /// The current step size estimate.
    pub fn d(&self) -> f64 {
        self.scalars.d
    }

    /// The global scalars after the last step.
    pub fn scalars(&self) -> ProdigyScalars {
        self.scalars
    }

    /// The full state, on the host.
    pub fn state(&self) -> ProdigyState {
        ProdigyState {
            scalars: self.scalars,
            params: self
                .state
                .iter()
                .map(|p| {
                    p.as_ref().map(|p| ParamHostState {
                        p0: p.p0.clone().map(HostTensor::from_tensor),
                        s: HostTensor::from_tensor(p.s.clone()),
                        exp_avg: HostTensor::from_tensor(p.exp_avg.clone()),
                        exp_avg_sq: HostTensor::from_tensor(p.exp_avg_sq.clone()),
                    })
                })
                .collect(),
        }
    }

    /// An optimizer continuing from `state` (as returned by [`Prodigy::state`]).
    pub fn from_state(config: ProdigyConfig, state: ProdigyState, device: &B::Device) -> Self {
        Self {
            config,
            scalars: state.scalars,
            state: state
                .params
                .into_iter()
                .map(|p| {
                    p.map(|p| ParamState {
                        p0: p.p0.map(|t| t.into_tensor(device)),
                        s: p.s.into_tensor(device),
                        exp_avg: p.exp_avg.into_tensor(device),
                        exp_avg_sq: p.exp_avg_sq.into_tensor(device),
                    })
                })
                .collect(),
        }
    }
}

impl<B: FluxOps> Prodigy<B> {
    /// One optimizer step. params and grads: the same list of flattened tensors `[n_i]` at every
    /// call (the state is matched by position) → the updated parameters.
    pub fn step(
        &mut self,
        params: Vec<Tensor<B, 1>>,
        grads: Vec<Tensor<B, 1>>,
    ) -> Vec<Tensor<B, 1>> {
        let c = self.config.clone();
        let (beta1, beta2) = c.betas;
        let beta3 = c.beta3.unwrap_or_else(|| beta2.sqrt());
        let k = self.scalars.k as i32;
        let d = self.scalars.d;
        let bias_correction = if c.use_bias_correction {
            (1.0 - beta2.powi(k + 1)).sqrt() / (1.0 - beta1.powi(k + 1))
        } else {
            1.0
        };
        let dlr = d * c.lr * bias_correction;
        let mut d_numerator = self.scalars.d_numerator * beta3;
        let mut d_denom = 0.0;
        if self.state.len() < params.len() {
            self.state.resize(params.len(), None);
        }

        let mut grads = grads;
        for (i, (p, g)) in params.iter().zip(grads.iter_mut()).enumerate() {
            if c.weight_decay != 0.0 && !c.decouple {
                *g = g.clone() + p.clone() * c.weight_decay;
            }
            // Taken out and put back: the moments are then the only owners of their buffers, and
            // Flex updates them in place instead of allocating each intermediate.
            let mut state = self.state[i].take().unwrap_or_else(|| {
                let all_zero = p.clone().abs().max().into_scalar().elem::<f64>() == 0.0;
                ParamState {
                    p0: (!all_zero).then(|| p.clone()),
                    s: p.zeros_like(),
                    exp_avg: p.zeros_like(),
                    exp_avg_sq: p.zeros_like(),
                }
            });
            if c.lr > 0.0 {
                let s_coef = if c.safeguard_warmup {
                    (d / c.d0) * d
                } else {
                    (d / c.d0) * dlr
                };
                let coefs = ProdigyCoefs {
                    beta1,
                    avg: d * (1.0 - beta1),
                    beta2,
                    avg_sq: d * d * (1.0 - beta2),
                    beta3,
                    s_coef,
                };
                let moments = ProdigyMoments {
                    exp_avg: primitive(state.exp_avg),
                    exp_avg_sq: primitive(state.exp_avg_sq),
                    s: primitive(state.s),
                };
                let (moments, sums) = B::flux_prodigy_moments(
                    primitive(p.clone()),
                    primitive(g.clone()),
                    state.p0.clone().map(primitive),
                    moments,
                    coefs,
                );
                state.exp_avg = tensor(moments.exp_avg);
                state.exp_avg_sq = tensor(moments.exp_avg_sq);
                state.s = tensor(moments.s);
                d_numerator += (d / c.d0) * dlr * sums.g_dot_delta;
                d_denom += sums.s_abs;
            }
            self.state[i] = Some(state);
        }
        if d_denom == 0.0 {
            // The reference returns before touching d, k or the parameters.
            return params;
        }
        let mut new_d = d;
        let mut d_hat = self.scalars.d_hat;
        if c.lr > 0.0 {
            d_hat = c.d_coef * d_numerator / d_denom;
            if d == c.d0 {
                new_d = d.max(d_hat);
            }
            self.scalars.d_max = self.scalars.d_max.max(d_hat);
            new_d = self.scalars.d_max.min(new_d * c.growth_rate);
        }
        self.scalars = ProdigyScalars {
            d: new_d,
            d_max: self.scalars.d_max,
            d_numerator,
            d_denom,
            d_hat,
            k: self.scalars.k + 1,
        };

        params
            .into_iter()
            .zip(grads)
            .enumerate()
            .map(|(i, (p, g))| {
                let state = self.state[i].as_ref().expect("initialised above");
                let (direction, step) = if beta1 > 0.0 {
                    (state.exp_avg.clone(), -dlr)
                } else {
                    (g, -dlr * new_d)
                };
                let update = ProdigyUpdate {
                    decay: if c.decouple {
                        -c.weight_decay * dlr
                    } else {
                        0.0
                    },
                    step,
                    eps: new_d * c.eps,
                };
                tensor(B::flux_prodigy_update(
                    primitive(p),
                    primitive(direction),
                    primitive(state.exp_avg_sq.clone()),
                    update,
                ))
            })
            .collect()
    }
}

fn primitive<B: Backend>(x: Tensor<B, 1>) -> FloatTensor<B> {
    x.into_primitive().tensor()
}

fn tensor<B: Backend>(x: FloatTensor<B>) -> Tensor<B, 1> {
    Tensor::from_primitive(TensorPrimitive::Float(x))
}
