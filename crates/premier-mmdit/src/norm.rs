//! Normalisations: FLUX's affine-free LayerNorm and the RMSNorm of its QK-norm.

use burn::module::Param;
use burn::prelude::*;

use crate::embed::Rope;
use crate::fused::{flux_rms_norm_rope, FluxOps};
use premier_io::LoadError;
use premier_io::ParamSource;

/// FLUX's RMSNorm eps.
const RMS_EPS: f64 = 1e-6;

/// `1 / √(x + eps)` elementwise, by a division: NdArray's f32 `recip` is an approximate
/// reciprocal (relative error ≈ 3e-4), far outside the norms' parity tolerances.
pub fn inverse_sqrt<B: Backend, const D: usize>(x: Tensor<B, D>, eps: f64) -> Tensor<B, D> {
    let root = (x + eps).sqrt();
    root.ones_like() / root
}

/// LayerNorm over the last dim without affine parameters, eps 1e-6 (FLUX `norm1`, `norm2`, `pre_norm`).
///
/// x: `[batch, tokens, hidden]` → same shape.
pub fn layer_norm_no_affine<B: Backend>(x: Tensor<B, 3>, eps: f64) -> Tensor<B, 3> {
    layer_norm_with_rstd(x, eps).0
}

/// [`layer_norm_no_affine`] and its `1 / √(var + eps)`: `[B, T, D]` → (`[B, T, D]`, `[B, T, 1]`).
pub fn layer_norm_with_rstd<B: Backend>(x: Tensor<B, 3>, eps: f64) -> (Tensor<B, 3>, Tensor<B, 3>) {
    let mean = x.clone().mean_dim(2);
    let centered = x - mean;
    let var = centered.clone().powi_scalar(2).mean_dim(2);
    let rstd = inverse_sqrt(var, eps);
    (centered * rstd.clone(), rstd)
}

/// RMSNorm with a learned scale (BFL `RMSNorm`): `x · rsqrt(mean(x²) + 1e-6) · scale`.
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    /// `[dim]`, checkpoint key `….scale`.
    pub scale: Param<Tensor<B, 1>>,
}

impl<B: Backend> RmsNorm<B> {
    pub(crate) fn build(
        src: &mut impl ParamSource<B>,
        key: &str,
        dim: usize,
    ) -> Result<Self, LoadError> {
        Ok(Self {
            scale: src.vector(&format!("{key}.scale"), dim, 1.0)?,
        })
    }
}

impl<B: FluxOps> RmsNorm<B> {
    /// x: `[batch, heads, tokens, head_dim]` normalised over `head_dim`, then rotated by `rope`
    /// (`[batch, tokens, head_dim]` tables): FLUX applies RoPE right after its QK-norm.
    pub fn forward_rope(&self, x: Tensor<B, 4>, rope: &Rope<B>) -> Tensor<B, 4> {
        flux_rms_norm_rope(x, self.scale.val(), rope, RMS_EPS)
    }
}

/// RMSNorm of queries and keys (BFL `QKNorm`).
#[derive(Module, Debug)]
pub struct QkNorm<B: Backend> {
    /// Of the queries.
    pub query_norm: RmsNorm<B>,
    /// Of the keys.
    pub key_norm: RmsNorm<B>,
}

impl<B: Backend> QkNorm<B> {
    pub(crate) fn build(
        src: &mut impl ParamSource<B>,
        key: &str,
        head_dim: usize,
    ) -> Result<Self, LoadError> {
        Ok(Self {
            query_norm: RmsNorm::build(src, &format!("{key}.query_norm"), head_dim)?,
            key_norm: RmsNorm::build(src, &format!("{key}.key_norm"), head_dim)?,
        })
    }
}

impl<B: FluxOps> QkNorm<B> {
    /// q, k: `[batch, heads, tokens, head_dim]`, normalised and rotated by `rope` (its tokens
    /// are theirs).
    pub fn forward_rope(
        &self,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        rope: &Rope<B>,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        (
            self.query_norm.forward_rope(q, rope),
            self.key_norm.forward_rope(k, rope),
        )
    }
}
