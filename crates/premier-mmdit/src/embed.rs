//! Embeddings: sinusoidal timesteps, the MLP embedder and 3-axis rotary positions.

use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::activation::silu;

use premier_io::LoadError;
use premier_io::ParamSource;

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
    /// in → hidden.
    pub in_layer: Linear<B>,
    /// hidden → hidden.
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

/// Rotary position embedding of every token (BFL `EmbedND` + `apply_rope`), as the cosine and
/// sine tables that [`crate::fused::flux_rms_norm_rope`] applies right after the QK-norm.
///
/// Each angle is stored twice in a row, so channel `j` of a head reads entry `j` of the tables:
/// BFL's `out_even = cos·x_even − sin·x_odd`, `out_odd = sin·x_even + cos·x_odd`.
#[derive(Debug, Clone)]
pub struct Rope<B: Backend> {
    /// Cosine of each channel pair's angle, repeated for both channels: `[batch, tokens, head_dim]`.
    pub cos: Tensor<B, 3>,
    /// Sine, laid out as `cos`: `[batch, tokens, head_dim]`.
    pub sin: Tensor<B, 3>,
}

impl<B: Backend> Rope<B> {
    /// ids: `[batch, tokens, 3]` positions (index, row, column).
    ///
    /// Axis `i` with `axes_dim[i] = d` contributes the `d / 2` angles `pos_i · θ^(-2k/d)`; the axes
    /// are concatenated along the frequency dim, so head channels `2k, 2k+1` rotate together.
    pub fn new(ids: Tensor<B, 3>, axes_dim: &[usize], theta: usize) -> Self {
        let device = ids.device();
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
        let angles = Tensor::cat(angles, 2);
        Self {
            cos: angles.clone().cos(),
            sin: angles.sin(),
        }
    }

    /// The same rotation in float type `dtype` (f32 for half-precision activations, which
    /// rotate in f32; the activations' type otherwise).
    pub fn cast(self, dtype: burn::tensor::DType) -> Self {
        Self {
            cos: self.cos.cast(dtype),
            sin: self.sin.cast(dtype),
        }
    }

    /// The rotation of tokens `start..start + len` (a double block's text or image stream).
    pub fn narrow(&self, start: usize, len: usize) -> Self {
        Self {
            cos: self.cos.clone().narrow(1, start, len),
            sin: self.sin.clone().narrow(1, start, len),
        }
    }
}
