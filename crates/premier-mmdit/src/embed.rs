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

/// Rotary position embedding of every token (BFL `EmbedND` + `apply_rope`).
///
/// Stored per head and channel (contiguous, no broadcasting: broadcasting over the head dim is
/// several times slower on CPU) so that applying it is two products and one small matmul:
/// `out = x · cos + (x · R) · sin`, where `R` maps each adjacent pair `(a, b)` to `(-b, a)`.
/// That is BFL's `out_even = cos·x_even − sin·x_odd`, `out_odd = sin·x_even + cos·x_odd`, and
/// `x · R` is exact (every output is one input, possibly negated).
#[derive(Debug, Clone)]
pub struct Rope<B: Backend> {
    /// Cosine of each channel pair's angle, repeated for both channels and every head:
    /// `[batch, heads, tokens, head_dim]`.
    pub cos: Tensor<B, 4>,
    /// Sine, laid out as `cos`: `[batch, heads, tokens, head_dim]`.
    pub sin: Tensor<B, 4>,
    /// The pair rotation `R`: `[1, 1, head_dim, head_dim]`.
    rotation: Tensor<B, 4>,
}

impl<B: Backend> Rope<B> {
    /// ids: `[batch, tokens, 3]` positions (index, row, column).
    ///
    /// Axis `i` with `axes_dim[i] = d` contributes the `d / 2` angles `pos_i · θ^(-2k/d)`; the axes
    /// are concatenated along the frequency dim, so head channels `2k, 2k+1` rotate together.
    pub fn new(ids: Tensor<B, 3>, axes_dim: &[usize], theta: usize, heads: usize) -> Self {
        let [batch, tokens, _] = ids.dims();
        let device = ids.device();
        let head_dim: usize = axes_dim.iter().sum();
        // Each frequency twice in a row, so the angles line up with channels (2k, 2k+1).
        let angles: Vec<Tensor<B, 3>> = axes_dim
            .iter()
            .enumerate()
            .map(|(axis, &d)| {
                let omega: Vec<f32> = (0..d)
                    .map(|c| (1.0 / (theta as f64).powf(2.0 * (c / 2) as f64 / d as f64)) as f32)
                    .collect();
                let omega = Tensor::<B, 1>::from_data(TensorData::new(omega, [d]), &device)
                    .reshape([1, 1, d]);
                ids.clone().narrow(2, axis, 1) * omega
            })
            .collect();
        let angles = Tensor::cat(angles, 2)
            .reshape([batch, 1, tokens, head_dim])
            .repeat_dim(1, heads);
        let mut rotation = vec![0f32; head_dim * head_dim];
        for k in 0..head_dim / 2 {
            let (even, odd) = (2 * k, 2 * k + 1);
            rotation[odd * head_dim + even] = -1.0; // out_even gets -x_odd
            rotation[even * head_dim + odd] = 1.0; // out_odd gets x_even
        }
        Self {
            cos: angles.clone().cos(),
            sin: angles.sin(),
            rotation: Tensor::<B, 2>::from_data(
                TensorData::new(rotation, [head_dim, head_dim]),
                &device,
            )
            .reshape([1, 1, head_dim, head_dim]),
        }
    }

    /// The same rotation in float type `dtype` (that of the activations it rotates).
    pub fn cast(self, dtype: burn::tensor::DType) -> Self {
        Self {
            cos: self.cos.cast(dtype),
            sin: self.sin.cast(dtype),
            rotation: self.rotation.cast(dtype),
        }
    }

    /// Rotates adjacent channel pairs `(2k, 2k+1)` by their angles.
    ///
    /// x: `[batch, heads, tokens, head_dim]` → same shape.
    pub fn apply(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let rotated = x.clone().matmul(self.rotation.clone());
        x * self.cos.clone() + rotated * self.sin.clone()
    }
}
