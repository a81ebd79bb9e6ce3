//! `FluxOps`: a backend extension for FLUX's hot ops (issue 12; design in docs/design-fluxops.md).
//!
//! The default methods are composite tensor ops (`composite.rs`), which CUDA, wgpu and NdArray
//! run; `Flex` overrides them with fused CPU kernels (`flex.rs`). `Autodiff<B>` records attention
//! on every backend, and the other ops where the inner backend fuses them, as one node with its
//! own backward (`autodiff.rs`), keeping O(T) memory per attention call instead of the
//! `[B, H, T, T]` softmax.

use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ops::{FloatTensor, ModuleOps};
use burn::tensor::TensorPrimitive;

use crate::embed::Rope;

mod autodiff;
pub mod composite;
#[cfg(feature = "flex")]
mod flex;

/// FLUX's attention, modulation, gated residual, QK-norm with RoPE and GELU, and their backwards, as backend
/// ops; the defaults are composites.
pub trait FluxOps: Backend {
    /// True when [`FluxOps::flux_attention_fwd`] and [`FluxOps::flux_attention_bwd`] are native
    /// kernels that never hold the T × T scores. The composites hold them for one call at a time;
    /// under autodiff neither keeps them (one node saves the output and the row log-sum-exp).
    const FUSED_ATTENTION: bool = false;

    /// softmax(q·kᵀ·scale)·v with the heads merged. q, k, v: `[B, H, T, D]` → `[B, T, H·D]`.
    fn flux_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self> {
        composite::attention::<Self>(q, k, v, scale)
    }

    /// [`FluxOps::flux_attention`] and the log-sum-exp of each row of scaled scores, `[B, T, H]`.
    fn flux_attention_fwd(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        composite::attention_with_lse::<Self>(q, k, v, scale)
    }

    /// (dq, dk, dv), each `[B, H, T, D]`, from the forward's out `[B, T, H·D]` and lse
    /// `[B, T, H]` and the output gradient `[B, T, H·D]`.
    #[allow(clippy::too_many_arguments)]
    fn flux_attention_bwd(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        out: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        grad_out: FloatTensor<Self>,
        scale: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        composite::attention_backward::<Self>(q, k, v, out, lse, grad_out, scale)
    }

    /// True when the norm methods below are native kernels: the autodiff decorator then
    /// records each as one node with its own backward.
    const FUSED_NORMS: bool = false;

    /// `(1 + scale) · LN(x) + shift`, LayerNorm without affine over the last dim.
    /// x: `[B, T, D]`; shift, scale: `[B, 1 or T, D]` (1: shared by every token) → `[B, T, D]`.
    fn flux_modulate(
        x: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        composite::modulate::<Self>(x, shift, scale, eps)
    }

    /// (dx `[B, T, D]`, dshift and dscale `[B, 1 or T, D]`, the shape of scale) of
    /// [`FluxOps::flux_modulate`], from x, scale and the output gradient.
    fn flux_modulate_bwd(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        grad_out: FloatTensor<Self>,
        eps: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        composite::modulate_backward::<Self>(x, scale, grad_out, eps)
    }

    /// `x + gate · y`, a gated residual. x, y: `[B, T, D]`; gate: `[B, 1 or T, D]` → `[B, T, D]`.
    fn flux_gated_residual(
        x: FloatTensor<Self>,
        gate: FloatTensor<Self>,
        y: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        composite::gated_residual::<Self>(x, gate, y)
    }

    /// (dx, dgate `[B, 1 or T, D]`, dy) of [`FluxOps::flux_gated_residual`].
    fn flux_gated_residual_bwd(
        gate: FloatTensor<Self>,
        y: FloatTensor<Self>,
        grad_out: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        composite::gated_residual_backward::<Self>(gate, y, grad_out)
    }

    /// FLUX's QK-norm and RoPE in one op: RMSNorm with a learned scale,
    /// `x · rsqrt(mean(x²) + eps) · weight`, then each channel pair `(2k, 2k+1)` rotated by its
    /// angle ([`composite::rope`]). x: `[B, H, T, D]`, weight: `[D]`, cos, sin: `[B, T, D]`
    /// (each angle twice in a row; constants: no gradient reaches them) → `[B, H, T, D]`.
    fn flux_rms_norm_rope(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        composite::rms_norm_rope::<Self>(x, weight, cos, sin, eps)
    }

    /// (dx `[B, H, T, D]`, dweight `[D]`) of [`FluxOps::flux_rms_norm_rope`].
    fn flux_rms_norm_rope_bwd(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        grad_out: FloatTensor<Self>,
        eps: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        composite::rms_norm_rope_backward::<Self>(x, weight, cos, sin, grad_out, eps)
    }

    /// Part `part` (0: q, 1: k, 2: v) of a fused projection in BFL's `(K H D)` order, as heads:
    /// qkv `[B, T, 3·H·D]` → `[B, H, T, D]`, in a buffer of its own. Under autodiff it is always
    /// one node, whose backward is [`FluxOps::flux_qkv_part_bwd`].
    fn flux_qkv_part(qkv: FloatTensor<Self>, heads: usize, part: usize) -> FloatTensor<Self> {
        composite::qkv_part::<Self>(qkv, heads, part)
    }

    /// The gradient of qkv `[B, T, 3·H·D]` from the gradient `[B, H, T, D]` of its part `part`
    /// (zero in the other two).
    fn flux_qkv_part_bwd(grad: FloatTensor<Self>, part: usize) -> FloatTensor<Self> {
        composite::qkv_part_backward::<Self>(grad, part)
    }

    /// GELU with the tanh approximation, elementwise ([`composite::gelu_tanh`]). x: any shape.
    /// Under autodiff it is always one node that keeps only x, whose backward is
    /// [`FluxOps::flux_gelu_tanh_bwd`].
    fn flux_gelu_tanh(x: FloatTensor<Self>) -> FloatTensor<Self> {
        composite::gelu_tanh_primitive::<Self>(x)
    }

    /// dx of [`FluxOps::flux_gelu_tanh`] from x and the output gradient (the same shape).
    fn flux_gelu_tanh_bwd(x: FloatTensor<Self>, grad_out: FloatTensor<Self>) -> FloatTensor<Self> {
        composite::gelu_tanh_backward::<Self>(x, grad_out)
    }

    /// `x · weight + bias`, burn's `linear`. x: `[…, K]`, weight: `[K, N]`, bias: `[N]` →
    /// `[…, N]`. Under autodiff it is one node (with or without a bias) whose input gradient is
    /// [`FluxOps::flux_linear_x_bwd`].
    fn flux_linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        <Self as ModuleOps<Self>>::linear(x, weight, bias)
    }

    /// dx `[…, K]` of [`FluxOps::flux_linear`] from weight `[K, N]` and the output gradient
    /// `[…, N]`.
    fn flux_linear_x_bwd(
        weight: FloatTensor<Self>,
        grad_out: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        <Self as ModuleOps<Self>>::linear_x_backward(weight, grad_out)
    }

    /// dW `[K, N]` of [`FluxOps::flux_linear`] from x `[…, K]` and the output gradient `[…, N]`,
    /// summed over every leading index.
    fn flux_linear_weight_bwd(
        x: FloatTensor<Self>,
        grad_out: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        <Self as ModuleOps<Self>>::linear_weight_backward(x, grad_out)
    }

    /// Prodigy's moment updates for one parameter (the optimizer is premier-train's; its
    /// elementwise passes are here because training spends a tenth of a step in them, on one
    /// core, as a dozen separate tensor ops): see [`ProdigyMoments`]. p, g, p0 and the moments:
    /// `[n]`.
    fn flux_prodigy_moments(
        p: FloatTensor<Self>,
        g: FloatTensor<Self>,
        p0: Option<FloatTensor<Self>>,
        moments: ProdigyMoments<Self>,
        coefs: ProdigyCoefs,
    ) -> (ProdigyMoments<Self>, ProdigySums) {
        composite::prodigy_moments::<Self>(p, g, p0, moments, coefs)
    }

    /// Prodigy's parameter update: `p ← p + decay · p` (skipped when decay is 0), then
    /// `p + step · direction / (√exp_avg_sq + eps)`. All `[n]`.
    fn flux_prodigy_update(
        p: FloatTensor<Self>,
        direction: FloatTensor<Self>,
        exp_avg_sq: FloatTensor<Self>,
        update: ProdigyUpdate,
    ) -> FloatTensor<Self> {
        composite::prodigy_update::<Self>(p, direction, exp_avg_sq, update)
    }
}

/// One parameter's Prodigy moments, updated by [`FluxOps::flux_prodigy_moments`] as
/// `exp_avg ← β1 · exp_avg + avg · g` (left as it is when β1 = 0),
/// `exp_avg_sq ← β2 · exp_avg_sq + (avg_sq · g) · g` and `s ← β3 · s + s_coef · g`.
#[derive(Debug, Clone)]
pub struct ProdigyMoments<B: Backend> {
    /// First moment `[n]`.
    pub exp_avg: FloatTensor<B>,
    /// Second moment `[n]`.
    pub exp_avg_sq: FloatTensor<B>,
    /// Prodigy's `s` accumulator `[n]`.
    pub s: FloatTensor<B>,
}

/// The coefficients of [`ProdigyMoments`]' updates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProdigyCoefs {
    /// β1 of the first moment.
    pub beta1: f64,
    /// Weight of g in the first moment (d · (1 − β1)).
    pub avg: f64,
    /// β2 of the second moment.
    pub beta2: f64,
    /// Weight of g² in the second moment (d² · (1 − β2)).
    pub avg_sq: f64,
    /// β3 of `s`.
    pub beta3: f64,
    /// Weight of g in `s` (d / d0 · d · lr, bias-corrected; d / d0 · d with the safeguard
    /// warm-up).
    pub s_coef: f64,
}

/// The two sums of one parameter that Prodigy's step size needs: Σ g · (p0 − p) (Σ −g · p when
/// the parameter started at zero) and Σ |s| of the updated s. Reduced in the tensors' float type
/// or wider, widened to f64.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProdigySums {
    /// Σ g · (p0 − p).
    pub g_dot_delta: f64,
    /// Σ |s|.
    pub s_abs: f64,
}

/// The coefficients of [`FluxOps::flux_prodigy_update`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProdigyUpdate {
    /// Decoupled weight decay factor (−wd · d · lr; 0: none).
    pub decay: f64,
    /// Step on the normalised direction (−d · lr, bias-corrected).
    pub step: f64,
    /// Added to √exp_avg_sq (the new d · eps).
    pub eps: f64,
}

/// An autodiff backend that runs FLUX both tracked and untracked (training that also samples on
/// the inner backend, e.g. validation grids): `Autodiff<Flex>`, `Autodiff<Cuda>`, …
pub trait FluxAutodiffBackend: AutodiffBackend<InnerBackend: FluxOps> + FluxOps {}

impl<B> FluxAutodiffBackend for B where B: AutodiffBackend<InnerBackend: FluxOps> + FluxOps {}

/// FLUX's attention, scale 1/√D. q, k, v: `[B, H, T, D]` → `[B, T, H·D]`.
pub fn flux_attention<B: FluxOps>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
) -> Tensor<B, 3> {
    let scale = 1.0 / (q.dims()[3] as f64).sqrt();
    let out = B::flux_attention(
        q.into_primitive().tensor(),
        k.into_primitive().tensor(),
        v.into_primitive().tensor(),
        scale,
    );
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// `(1 + scale) · LN(x) + shift`. x: `[B, T, D]`; shift, scale: `[B, 1 or T, D]` → `[B, T, D]`.
pub fn flux_modulate<B: FluxOps>(
    x: Tensor<B, 3>,
    shift: Tensor<B, 3>,
    scale: Tensor<B, 3>,
    eps: f64,
) -> Tensor<B, 3> {
    let out = B::flux_modulate(
        x.into_primitive().tensor(),
        shift.into_primitive().tensor(),
        scale.into_primitive().tensor(),
        eps,
    );
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// `x + gate · y`. x, y: `[B, T, D]`; gate: `[B, 1 or T, D]` → `[B, T, D]`.
pub fn flux_gated_residual<B: FluxOps>(
    x: Tensor<B, 3>,
    gate: Tensor<B, 3>,
    y: Tensor<B, 3>,
) -> Tensor<B, 3> {
    let out = B::flux_gated_residual(
        x.into_primitive().tensor(),
        gate.into_primitive().tensor(),
        y.into_primitive().tensor(),
    );
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// FLUX's QK-norm of a query or key, then its rotation: `rope(x · rsqrt(mean(x²) + eps) · weight)`.
/// x: `[B, H, T, D]`, weight: `[D]`, rope: `[B, T, D]` tables → `[B, H, T, D]`.
pub fn flux_rms_norm_rope<B: FluxOps>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 1>,
    rope: &Rope<B>,
    eps: f64,
) -> Tensor<B, 4> {
    let out = B::flux_rms_norm_rope(
        x.into_primitive().tensor(),
        weight.into_primitive().tensor(),
        rope.cos.clone().into_primitive().tensor(),
        rope.sin.clone().into_primitive().tensor(),
        eps,
    );
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// Part `part` (0: q, 1: k, 2: v) of qkv `[B, T, 3·H·D]` as heads `[B, H, T, D]` (BFL's
/// `rearrange(qkv, "B L (K H D) -> K B H L D", K=3)[part]`), contiguous.
pub fn flux_qkv_part<B: FluxOps>(qkv: Tensor<B, 3>, heads: usize, part: usize) -> Tensor<B, 4> {
    let out = B::flux_qkv_part(qkv.into_primitive().tensor(), heads, part);
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// GELU(tanh), `x · σ(2√(2/π)(x + 0.044715x³))`. x: any shape → the same shape.
pub fn flux_gelu_tanh<B: FluxOps, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let out = B::flux_gelu_tanh(x.into_primitive().tensor());
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// A linear layer through [`FluxOps::flux_linear`]. x: `[…, K]` → `[…, N]`.
pub fn flux_linear<B: FluxOps, const D: usize>(
    linear: &Linear<B>,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    flux_linear_tensors(
        x,
        linear.weight.val(),
        linear.bias.as_ref().map(|bias| bias.val()),
    )
}

/// `x · weight + bias` through [`FluxOps::flux_linear`], for weights that are not a `Linear`'s
/// (a slice of a fused projection). x: `[…, K]`, weight: `[K, N]`, bias: `[N]` → `[…, N]`.
pub fn flux_linear_tensors<B: FluxOps, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
) -> Tensor<B, D> {
    let out = B::flux_linear(
        x.into_primitive().tensor(),
        weight.into_primitive().tensor(),
        bias.map(|bias| bias.into_primitive().tensor()),
    );
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

// The GPU backends keep the composites until they get kernels of their own. Concrete float types:
// `CubeBackend`'s element bounds are not nameable from here.
#[cfg(feature = "cuda")]
impl FluxOps for burn::backend::Cuda<f32> {}
#[cfg(feature = "cuda")]
impl FluxOps for burn::backend::Cuda<half::bf16> {}
#[cfg(feature = "cuda")]
impl FluxOps for burn::backend::Cuda<half::f16> {}

#[cfg(feature = "wgpu")]
impl FluxOps for burn::backend::Wgpu<f32> {}

// A CPU backend on the same composites: the test suite runs the GPU backends' code path on it.
#[cfg(feature = "ndarray")]
impl FluxOps for burn::backend::NdArray<f32> {}
