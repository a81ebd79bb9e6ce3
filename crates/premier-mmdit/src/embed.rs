//! Embeddings: sinusoidal timesteps, the MLP embedder and 3-axis rotary positions.

use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::activation::silu;

use crate::error::LoadError;
use crate::params::ParamSource;

/// Sinusoidal embedding of `t` (BFL `timestep_embedding`, dim 256, max_period 10000, ×1000).
///
/// t: `[batch]` in [0, 1] (or a guidance scale) → `[batch, dim]`, **cos first**.
/// The frequencies are computed in f32 in the same order of operations as the reference.
pub fn timestep_embedding<B: Backend>(t: Tensor<B, 1>, dim: usize) -> Tensor<B, 2> {
    let half = dim / 2;
    let log_max_period = -(10_000f64.ln() as f32);
    let freqs: Vec<f32> = (0..half)
        .map(|k| (log_max_period * k as f32 / half as f32).exp())
        .collect();
    let freqs = Tensor::<B, 1>::from_data(TensorData::new(freqs, [half]), &t.device());
    let args = (t * 1000.0).unsqueeze_dim::<2>(1) * freqs.unsqueeze_dim::<2>(0);
    Tensor::cat(vec![args.clone().cos(), args.sin()], 1)
}

/// `out_layer(SiLU(in_layer(x)))` (BFL `MLPEmbedder`).
#[derive(Module, Debug)]
pub struct MlpEmbedder<B: Backend> {
    pub in_layer: Linear<B>,
    pub out_layer: Linear<B>,
}

impl<B: Backend> MlpEmbedder<B> {
    pub(crate) fn build(
        src: &mut impl ParamSource<B>,
        key: &str,
        d_in: usize,
        hidden: usize,
    ) -> Result<Self, LoadError> {
        Ok(Self {
            in_layer: src.linear(&format!("{key}.in_layer"), d_in, hidden, true)?,
            out_layer: src.linear(&format!("{key}.out_layer"), hidden, hidden, true)?,
        })
    }

    /// x: `[batch, d_in]` → `[batch, hidden]`.
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.out_layer.forward(silu(self.in_layer.forward(x)))
    }
}

/// Rotary position embedding of every token, as cos and sin of its angles (BFL `EmbedND`).
#[derive(Debug, Clone)]
pub struct Rope<B: Backend> {
    /// `[batch, 1, tokens, head_dim / 2]`.
    pub cos: Tensor<B, 4>,
    /// `[batch, 1, tokens, head_dim / 2]`.
    pub sin: Tensor<B, 4>,
}

impl<B: Backend> Rope<B> {
    /// ids: `[batch, tokens, 3]` positions (index, row, column).
    ///
    /// Axis `i` with `axes_dim[i] = d` contributes the `d / 2` angles `pos_i · θ^(-2k/d)`; the axes
    /// are concatenated along the frequency dim, so head channels `2k, 2k+1` rotate together.
    pub fn new(ids: Tensor<B, 3>, axes_dim: &[usize], theta: usize) -> Self {
        let [batch, tokens, _] = ids.dims();
        let device = ids.device();
        let angles: Vec<Tensor<B, 3>> = axes_dim
            .iter()
            .enumerate()
            .map(|(axis, &d)| {
                let omega: Vec<f32> = (0..d / 2)
                    .map(|k| (1.0 / (theta as f64).powf(2.0 * k as f64 / d as f64)) as f32)
                    .collect();
                let omega = Tensor::<B, 1>::from_data(TensorData::new(omega, [d / 2]), &device)
                    .reshape([1, 1, d / 2]);
                ids.clone().narrow(2, axis, 1) * omega
            })
            .collect();
        let angles = Tensor::cat(angles, 2);
        let half: usize = axes_dim.iter().sum::<usize>() / 2;
        let angles = angles.reshape([batch, 1, tokens, half]);
        Self {
            cos: angles.clone().cos(),
            sin: angles.sin(),
        }
    }

    /// Rotates adjacent channel pairs `(2k, 2k+1)` (BFL `apply_rope`).
    ///
    /// x: `[batch, heads, tokens, head_dim]` → same shape.
    pub fn apply(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [batch, heads, tokens, head_dim] = x.dims();
        let pairs = x.reshape([batch, heads, tokens, head_dim / 2, 2]);
        let even = pairs.clone().narrow(4, 0, 1).squeeze_dim::<4>(4);
        let odd = pairs.narrow(4, 1, 1).squeeze_dim::<4>(4);
        let out_even = self.cos.clone() * even.clone() - self.sin.clone() * odd.clone();
        let out_odd = self.sin.clone() * even + self.cos.clone() * odd;
        Tensor::stack::<5>(vec![out_even, out_odd], 4).reshape([batch, heads, tokens, head_dim])
    }
}
