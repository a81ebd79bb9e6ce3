//! The transformer blocks of FLUX.1 (BFL `layers.py`), in the order data flows through them.

use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::activation::silu;

use crate::embed::Rope;
use crate::fused::{
    flux_attention, flux_gated_residual, flux_gelu_tanh, flux_linear, flux_linear_tensors,
    flux_modulate, flux_qkv_part, FluxOps,
};
use crate::norm::QkNorm;
use premier_io::LoadError;
use premier_io::ParamSource;

/// FLUX's LayerNorm eps.
const LN_EPS: f64 = 1e-6;

/// One (shift, scale, gate) triplet; each `[batch, 1 or tokens, hidden]`.
///
/// With a per-token modulation the middle dim is the token count, otherwise 1 and broadcast.
#[derive(Debug, Clone)]
pub struct ModulationOut<B: Backend> {
    /// Added after the LayerNorm: `[batch, 1 or tokens, hidden]`.
    pub shift: Tensor<B, 3>,
    /// Multiplies the LayerNorm as `1 + scale`: `[batch, 1 or tokens, hidden]`.
    pub scale: Tensor<B, 3>,
    /// Scales the branch before the residual: `[batch, 1 or tokens, hidden]`.
    pub gate: Tensor<B, 3>,
}

impl<B: FluxOps> ModulationOut<B> {
    /// `(1 + scale) · LN(x) + shift`; x: `[batch, tokens, hidden]`.
    pub fn modulate(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        flux_modulate(x, self.shift.clone(), self.scale.clone(), LN_EPS)
    }
}

/// `lin(SiLU(vec))` chunked into (shift, scale, gate) triplets (BFL `Modulation`).
#[derive(Module, Debug)]
pub struct Modulation<B: Backend> {
    /// hidden → multiplier · 3 · hidden (key `….lin`).
    pub lin: Linear<B>,
    /// 2 triplets for double blocks, 1 for single blocks.
    triplets: usize,
}

impl<B: Backend> Modulation<B> {
    pub(crate) fn build(
        src: &mut impl ParamSource<B>,
        key: &str,
        hidden: usize,
        double: bool,
    ) -> Result<Self, LoadError> {
        let triplets = if double { 2 } else { 1 };
        Ok(Self {
            lin: src.linear(&format!("{key}.lin"), hidden, 3 * triplets * hidden, true)?,
            triplets,
        })
    }

    /// vec: `[batch, 1 or tokens, hidden]` → `triplets` outputs of `[batch, 1 or tokens, hidden]`.
    pub fn forward(&self, vec: Tensor<B, 3>) -> Vec<ModulationOut<B>> {
        let chunks = self.lin.forward(silu(vec)).chunk(3 * self.triplets, 2);
        chunks
            .chunks_exact(3)
            .map(|c| ModulationOut {
                shift: c[0].clone(),
                scale: c[1].clone(),
                gate: c[2].clone(),
            })
            .collect()
    }
}

/// Splits fused qkv `[batch, tokens, 3·heads·head_dim]` into contiguous q, k, v of
/// `[batch, heads, tokens, head_dim]` (BFL `rearrange(qkv, "B L (K H D) -> K B H L D", K=3)`).
fn split_qkv<B: FluxOps>(
    qkv: Tensor<B, 3>,
    heads: usize,
) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
    let part = |k: usize| flux_qkv_part(qkv.clone(), heads, k);
    (part(0), part(1), part(2))
}

/// Fused qkv projection, QK-norm and output projection of one stream (BFL `SelfAttention`).
#[derive(Module, Debug)]
pub struct SelfAttention<B: Backend> {
    /// hidden → 3 · hidden, q, k, v in BFL's `(K H D)` order (key `….qkv`).
    pub qkv: Linear<B>,
    /// RMSNorm of queries and keys (key `….norm`).
    pub norm: QkNorm<B>,
    /// hidden → hidden after the attention (key `….proj`).
    pub proj: Linear<B>,
    heads: usize,
}

impl<B: Backend> SelfAttention<B> {
    pub(crate) fn build(
        src: &mut impl ParamSource<B>,
        key: &str,
        hidden: usize,
        heads: usize,
        qkv_bias: bool,
    ) -> Result<Self, LoadError> {
        Ok(Self {
            qkv: src.linear(&format!("{key}.qkv"), hidden, 3 * hidden, qkv_bias)?,
            norm: QkNorm::build(src, &format!("{key}.norm"), hidden / heads)?,
            proj: src.linear(&format!("{key}.proj"), hidden, hidden, true)?,
            heads,
        })
    }
}

impl<B: FluxOps> SelfAttention<B> {
    /// q and k normalised and rotated, and v, of x: `[batch, tokens, hidden]` with `rope` over
    /// its tokens → 3 × `[batch, heads, tokens, head_dim]`.
    pub fn qkv(
        &self,
        x: Tensor<B, 3>,
        rope: &Rope<B>,
    ) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
        let (q, k, v) = split_qkv(flux_linear(&self.qkv, x), self.heads);
        let (q, k) = self.norm.forward_rope(q, k, rope);
        (q, k, v)
    }
}

/// `Linear → GELU(tanh) → Linear`; keys `….0` and `….2` as in BFL's `nn.Sequential`.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    /// hidden → mlp_hidden (key `….0`).
    pub fc1: Linear<B>,
    /// mlp_hidden → hidden (key `….2`).
    pub fc2: Linear<B>,
}

impl<B: Backend> Mlp<B> {
    pub(crate) fn build(
        src: &mut impl ParamSource<B>,
        key: &str,
        hidden: usize,
        mlp_hidden: usize,
    ) -> Result<Self, LoadError> {
        Ok(Self {
            fc1: src.linear(&format!("{key}.0"), hidden, mlp_hidden, true)?,
            fc2: src.linear(&format!("{key}.2"), mlp_hidden, hidden, true)?,
        })
    }
}

impl<B: FluxOps> Mlp<B> {
    /// x: `[batch, tokens, hidden]` → same shape.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        flux_linear(&self.fc2, flux_gelu_tanh(flux_linear(&self.fc1, x)))
    }
}

/// A double-stream block: image and text keep separate weights and meet in joint attention.
#[derive(Module, Debug)]
pub struct DoubleStreamBlock<B: Backend> {
    /// The image stream's two (shift, scale, gate) triplets.
    pub img_mod: Modulation<B>,
    /// The image stream's projections around the joint attention.
    pub img_attn: SelfAttention<B>,
    /// The image stream's MLP.
    pub img_mlp: Mlp<B>,
    /// The text stream's two triplets (per token once Premier's Δ is added).
    pub txt_mod: Modulation<B>,
    /// The text stream's projections around the joint attention.
    pub txt_attn: SelfAttention<B>,
    /// The text stream's MLP.
    pub txt_mlp: Mlp<B>,
}

impl<B: Backend> DoubleStreamBlock<B> {
    pub(crate) fn build(
        src: &mut impl ParamSource<B>,
        key: &str,
        hidden: usize,
        heads: usize,
        mlp_hidden: usize,
        qkv_bias: bool,
    ) -> Result<Self, LoadError> {
        Ok(Self {
            img_mod: Modulation::build(src, &format!("{key}.img_mod"), hidden, true)?,
            img_attn: SelfAttention::build(
                src,
                &format!("{key}.img_attn"),
                hidden,
                heads,
                qkv_bias,
            )?,
            img_mlp: Mlp::build(src, &format!("{key}.img_mlp"), hidden, mlp_hidden)?,
            txt_mod: Modulation::build(src, &format!("{key}.txt_mod"), hidden, true)?,
            txt_attn: SelfAttention::build(
                src,
                &format!("{key}.txt_attn"),
                hidden,
                heads,
                qkv_bias,
            )?,
            txt_mlp: Mlp::build(src, &format!("{key}.txt_mlp"), hidden, mlp_hidden)?,
        })
    }

    /// Per-token text modulation: `txt_mod.lin(SiLU(y + Δ))` with one row per text token, or the
    /// plain `txt_mod.lin(SiLU(y))` broadcast over tokens when `txt_delta` is `None`.
    ///
    /// vec: `[batch, hidden]`; txt_delta: `[batch, txt_tokens, hidden]`.
    pub fn txt_modulation(
        &self,
        vec: Tensor<B, 2>,
        txt_delta: Option<Tensor<B, 3>>,
    ) -> Vec<ModulationOut<B>> {
        let vec = vec.unsqueeze_dim::<3>(1);
        let vec = match txt_delta {
            Some(delta) => vec + delta,
            None => vec,
        };
        self.txt_mod.forward(vec)
    }
}

impl<B: FluxOps> DoubleStreamBlock<B> {
    /// img: `[batch, img_tokens, hidden]`, txt: `[batch, txt_tokens, hidden]`, vec: `[batch, hidden]`,
    /// rope over `[txt, img]`; txt_delta: `[batch, txt_tokens, hidden]` → (img, txt).
    pub fn forward(
        &self,
        img: Tensor<B, 3>,
        txt: Tensor<B, 3>,
        vec: Tensor<B, 2>,
        txt_delta: Option<Tensor<B, 3>>,
        rope: &Rope<B>,
    ) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let txt_tokens = txt.dims()[1];
        let img_tokens = img.dims()[1];
        let img_mods = self.img_mod.forward(vec.clone().unsqueeze_dim::<3>(1));
        let txt_mods = self.txt_modulation(vec, txt_delta);
        let (img_mod1, img_mod2) = (&img_mods[0], &img_mods[1]);
        let (txt_mod1, txt_mod2) = (&txt_mods[0], &txt_mods[1]);

        let (txt_rope, img_rope) = (
            rope.narrow(0, txt_tokens),
            rope.narrow(txt_tokens, img_tokens),
        );
        let (img_q, img_k, img_v) = self.img_attn.qkv(img_mod1.modulate(img.clone()), &img_rope);
        let (txt_q, txt_k, txt_v) = self.txt_attn.qkv(txt_mod1.modulate(txt.clone()), &txt_rope);
        let q = Tensor::cat(vec![txt_q, img_q], 2);
        let k = Tensor::cat(vec![txt_k, img_k], 2);
        let v = Tensor::cat(vec![txt_v, img_v], 2);
        let attn = flux_attention(q, k, v);
        let txt_attn = attn.clone().narrow(1, 0, txt_tokens);
        let img_attn = attn.narrow(1, txt_tokens, img_tokens);

        let img = flux_gated_residual(
            img,
            img_mod1.gate.clone(),
            flux_linear(&self.img_attn.proj, img_attn),
        );
        let img = flux_gated_residual(
            img.clone(),
            img_mod2.gate.clone(),
            self.img_mlp.forward(img_mod2.modulate(img)),
        );
        let txt = flux_gated_residual(
            txt,
            txt_mod1.gate.clone(),
            flux_linear(&self.txt_attn.proj, txt_attn),
        );
        let txt = flux_gated_residual(
            txt.clone(),
            txt_mod2.gate.clone(),
            self.txt_mlp.forward(txt_mod2.modulate(txt)),
        );
        (img, txt)
    }
}

/// A single-stream block over the joint `[txt, img]` sequence, attention and MLP in parallel.
///
/// BFL's `linear1` (hidden → 3·hidden + mlp_hidden) is kept as its two row blocks, `linear1_qkv`
/// and `linear1_mlp` (diffusers' `to_q/k/v` and `proj_mlp`), so that each output is contiguous:
/// on CPU, elementwise kernels over a strided slice run several times slower.
#[derive(Module, Debug)]
pub struct SingleStreamBlock<B: Backend> {
    /// Rows `0..3·hidden` of `linear1`: hidden → 3·hidden.
    pub linear1_qkv: Linear<B>,
    /// Rows `3·hidden..` of `linear1`: hidden → mlp_hidden.
    pub linear1_mlp: Linear<B>,
    /// hidden + mlp_hidden → hidden.
    pub linear2: Linear<B>,
    /// RMSNorm of queries and keys.
    pub norm: QkNorm<B>,
    /// One (shift, scale, gate) triplet.
    pub modulation: Modulation<B>,
    heads: usize,
}

impl<B: Backend> SingleStreamBlock<B> {
    pub(crate) fn build(
        src: &mut impl ParamSource<B>,
        key: &str,
        hidden: usize,
        heads: usize,
        mlp_hidden: usize,
    ) -> Result<Self, LoadError> {
        let mut linear1 = src.linear_split_rows(
            &format!("{key}.linear1"),
            hidden,
            &[3 * hidden, mlp_hidden],
            true,
        )?;
        let linear1_mlp = linear1.pop().expect("two row blocks");
        let linear1_qkv = linear1.pop().expect("two row blocks");
        Ok(Self {
            linear1_qkv,
            linear1_mlp,
            linear2: src.linear(&format!("{key}.linear2"), hidden + mlp_hidden, hidden, true)?,
            norm: QkNorm::build(src, &format!("{key}.norm"), hidden / heads)?,
            modulation: Modulation::build(src, &format!("{key}.modulation"), hidden, false)?,
            heads,
        })
    }
}

impl<B: FluxOps> SingleStreamBlock<B> {
    /// x: `[batch, tokens, hidden]` over `[txt, img]`, vec: `[batch, hidden]` → same shape as x.
    pub fn forward(&self, x: Tensor<B, 3>, vec: Tensor<B, 2>, rope: &Rope<B>) -> Tensor<B, 3> {
        let modulation = self.modulation.forward(vec.unsqueeze_dim::<3>(1)).remove(0);
        let x_mod = modulation.modulate(x.clone());
        let (q, k, v) = split_qkv(flux_linear(&self.linear1_qkv, x_mod.clone()), self.heads);
        let mlp = flux_gelu_tanh(flux_linear(&self.linear1_mlp, x_mod));
        let (q, k) = self.norm.forward_rope(q, k, rope);
        let attn = flux_attention(q, k, v);
        flux_gated_residual(x, modulation.gate, self.output(attn, mlp))
    }

    /// `linear2(cat(attn, mlp))` as the sum of two products, `attn · W[..hidden] + b` and
    /// `mlp · W[hidden..]`: the same sum without writing the `[batch, tokens, hidden + mlp_hidden]`
    /// concatenation (nor slicing its gradient apart again).
    ///
    /// attn: `[batch, tokens, hidden]`, mlp: `[batch, tokens, mlp_hidden]` → `[batch, tokens, hidden]`.
    fn output(&self, attn: Tensor<B, 3>, mlp: Tensor<B, 3>) -> Tensor<B, 3> {
        let hidden = attn.dims()[2];
        let mlp_hidden = mlp.dims()[2];
        let weight = self.linear2.weight.val();
        let bias = self.linear2.bias.as_ref().map(|bias| bias.val());
        let from_attn = flux_linear_tensors(attn, weight.clone().narrow(0, 0, hidden), bias);
        let from_mlp = flux_linear_tensors(mlp, weight.narrow(0, hidden, mlp_hidden), None);
        from_attn + from_mlp
    }
}

/// Final adaLN and projection to the output channels (BFL `LastLayer`); shift comes first.
#[derive(Module, Debug)]
pub struct LastLayer<B: Backend> {
    /// hidden → patch · patch · out_channels.
    pub linear: Linear<B>,
    /// Checkpoint key `final_layer.adaLN_modulation.1` (index 0 is the SiLU).
    pub ada_ln_modulation: Linear<B>,
}

impl<B: Backend> LastLayer<B> {
    pub(crate) fn build(
        src: &mut impl ParamSource<B>,
        key: &str,
        hidden: usize,
        out_channels: usize,
    ) -> Result<Self, LoadError> {
        Ok(Self {
            linear: src.linear(&format!("{key}.linear"), hidden, out_channels, true)?,
            ada_ln_modulation: src.linear(
                &format!("{key}.adaLN_modulation.1"),
                hidden,
                2 * hidden,
                true,
            )?,
        })
    }
}

impl<B: FluxOps> LastLayer<B> {
    /// x: `[batch, img_tokens, hidden]`, vec: `[batch, hidden]` → `[batch, img_tokens, out_channels]`.
    pub fn forward(&self, x: Tensor<B, 3>, vec: Tensor<B, 2>) -> Tensor<B, 3> {
        let ada = self
            .ada_ln_modulation
            .forward(silu(vec))
            .unsqueeze_dim::<3>(1)
            .chunk(2, 2);
        let (shift, scale) = (ada[0].clone(), ada[1].clone());
        flux_linear(&self.linear, flux_modulate(x, shift, scale, LN_EPS))
    }
}
