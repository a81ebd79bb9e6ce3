//! The official `TextImageResampler` and its parts (`mod_adapters.py`, after ELLA/XVerse), with
//! field names and checkpoint keys as in the released `mod_adapter.safetensors`.

use burn::module::Param;
use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::activation::{relu, softmax};
use premier_io::LoadError;
use premier_io::{HostTensor, ParamSource};
use premier_mmdit::fused::{flux_linear, flux_linear_tensors};
use premier_mmdit::norm::layer_norm_no_affine;
use premier_mmdit::{export_linear, FluxOps};

/// Width of the (always zero) timestep embedding the official AdaLN takes.
pub(crate) const TIME_DIM: usize = 64;

/// `LN(x)·(1 + scale) + shift` with (shift, scale) = `linear(SiLU(temb))`. The official adapter
/// always passes `temb = 0`, so (shift, scale) is the bias of `linear` (shift first); the weight is
/// kept only so the released file loads and saves unchanged.
#[derive(Module, Debug)]
pub struct AdaLayerNorm<B: Backend> {
    /// Linear(64 → 2·width), key `….linear`.
    pub linear: Linear<B>,
}

impl<B: Backend> AdaLayerNorm<B> {
    fn build(src: &mut impl ParamSource<B>, key: &str, width: usize) -> Result<Self, LoadError> {
        Ok(Self {
            linear: src.linear(&format!("{key}.linear"), TIME_DIM, 2 * width, true)?,
        })
    }

    /// x: `[batch, tokens, width]` → same shape.
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let width = x.dims()[2];
        let emb = match &self.linear.bias {
            Some(bias) => bias.val().reshape([1, 1, 2 * width]),
            None => Tensor::zeros([1, 1, 2 * width], &x.device()),
        };
        let shift = emb.clone().narrow(2, 0, width);
        let scale = emb.narrow(2, width, width);
        layer_norm_no_affine(x, 1e-6) * (scale + 1.0) + shift
    }

    fn export(&self, key: &str, out: &mut Vec<(String, HostTensor)>) {
        export_linear(&self.linear, &format!("{key}.linear"), out);
    }
}

/// `torch.nn.MultiheadAttention(width, heads, batch_first=True)` without masks: fused input
/// projection (rows q, k, v), scaled dot-product attention per head, output projection.
#[derive(Module, Debug)]
pub struct MultiheadAttention<B: Backend> {
    /// Keys `in_proj_weight` `[3·width, width]` and `in_proj_bias`.
    pub in_proj: Linear<B>,
    /// Keys `out_proj.weight` `[width, width]` and `out_proj.bias`.
    pub out_proj: Linear<B>,
    heads: usize,
}

impl<B: Backend> MultiheadAttention<B> {
    fn build(
        src: &mut impl ParamSource<B>,
        key: &str,
        width: usize,
        heads: usize,
    ) -> Result<Self, LoadError> {
        Ok(Self {
            in_proj: src.linear_with_keys(
                &format!("{key}.in_proj_weight"),
                Some(&format!("{key}.in_proj_bias")),
                width,
                3 * width,
            )?,
            out_proj: src.linear(&format!("{key}.out_proj"), width, width, true)?,
            heads,
        })
    }

    fn export(&self, key: &str, out: &mut Vec<(String, HostTensor)>) {
        // torch.nn.MultiheadAttention names its fused input projection without a dot.
        let mut fused = Vec::new();
        export_linear(&self.in_proj, "in_proj", &mut fused);
        for (name, tensor) in fused {
            out.push((format!("{key}.{}", name.replace('.', "_")), tensor));
        }
        export_linear(&self.out_proj, &format!("{key}.out_proj"), out);
    }
}

impl<B: FluxOps> MultiheadAttention<B> {
    /// query: `[batch, q_tokens, width]`, kv: `[batch, kv_tokens, width]` → `[batch, q_tokens, width]`.
    pub fn forward(&self, query: Tensor<B, 3>, kv: Tensor<B, 3>) -> Tensor<B, 3> {
        let [batch, q_tokens, width] = query.dims();
        let kv_tokens = kv.dims()[1];
        let head_dim = width / self.heads;
        let weight = self.in_proj.weight.val(); // [width, 3·width]
        let bias = self.in_proj.bias.as_ref().map(|b| b.val());
        let project = |x: Tensor<B, 3>, part: usize| {
            let w = weight.clone().narrow(1, part * width, width);
            let b = bias.clone().map(|b| b.narrow(0, part * width, width));
            flux_linear_tensors(x, w, b)
        };
        let heads = |x: Tensor<B, 3>, tokens: usize| {
            x.reshape([batch, tokens, self.heads, head_dim])
                .swap_dims(1, 2)
        };
        let q = heads(project(query, 0), q_tokens);
        let k = heads(project(kv.clone(), 1), kv_tokens);
        let v = heads(project(kv, 2), kv_tokens);
        let scores = q.matmul(k.swap_dims(2, 3)) / (head_dim as f64).sqrt();
        let attended = softmax(scores, 3).matmul(v);
        flux_linear(
            &self.out_proj,
            attended.swap_dims(1, 2).reshape([batch, q_tokens, width]),
        )
    }
}

/// One Perceiver block: text queries attend to the (fixed) user tokens, then an MLP with
/// SquaredReLU; each with a residual and an AdaLN in front.
#[derive(Module, Debug)]
pub struct PerceiverBlock<B: Backend> {
    /// Text queries attending to the user tokens (keys `attn.*`).
    pub attn: MultiheadAttention<B>,
    /// Key `mlp.c_fc`: width → 4·width.
    pub c_fc: Linear<B>,
    /// Key `mlp.c_proj`: 4·width → width.
    pub c_proj: Linear<B>,
    /// AdaLN of the queries before the attention.
    pub ln_1: AdaLayerNorm<B>,
    /// AdaLN of the user tokens (keys and values) before the attention.
    pub ln_2: AdaLayerNorm<B>,
    /// AdaLN before the MLP.
    pub ln_ff: AdaLayerNorm<B>,
}

impl<B: Backend> PerceiverBlock<B> {
    fn build(
        src: &mut impl ParamSource<B>,
        key: &str,
        width: usize,
        heads: usize,
    ) -> Result<Self, LoadError> {
        Ok(Self {
            attn: MultiheadAttention::build(src, &format!("{key}.attn"), width, heads)?,
            c_fc: src.linear(&format!("{key}.mlp.c_fc"), width, 4 * width, true)?,
            c_proj: src.linear(&format!("{key}.mlp.c_proj"), 4 * width, width, true)?,
            ln_1: AdaLayerNorm::build(src, &format!("{key}.ln_1"), width)?,
            ln_2: AdaLayerNorm::build(src, &format!("{key}.ln_2"), width)?,
            ln_ff: AdaLayerNorm::build(src, &format!("{key}.ln_ff"), width)?,
        })
    }

    fn export(&self, key: &str, out: &mut Vec<(String, HostTensor)>) {
        self.attn.export(&format!("{key}.attn"), out);
        export_linear(&self.c_fc, &format!("{key}.mlp.c_fc"), out);
        export_linear(&self.c_proj, &format!("{key}.mlp.c_proj"), out);
        self.ln_1.export(&format!("{key}.ln_1"), out);
        self.ln_2.export(&format!("{key}.ln_2"), out);
        self.ln_ff.export(&format!("{key}.ln_ff"), out);
    }
}

impl<B: FluxOps> PerceiverBlock<B> {
    /// text: `[batch, txt_tokens, width]`, user: `[batch, user_tokens, width]` → new text tokens.
    pub fn forward(&self, text: Tensor<B, 3>, user: Tensor<B, 3>) -> Tensor<B, 3> {
        let attended = self
            .attn
            .forward(self.ln_1.forward(text.clone()), self.ln_2.forward(user));
        let text = text + attended;
        let hidden = flux_linear(&self.c_fc, self.ln_ff.forward(text.clone()));
        text + flux_linear(&self.c_proj, relu(hidden).powi_scalar(2))
    }
}

/// Cross-attention resampler from (prompt tokens, user tokens) to one output per prompt token.
#[derive(Module, Debug)]
pub struct TextImageResampler<B: Backend> {
    /// text_dim → width.
    pub text_proj_in: Linear<B>,
    /// user_dim → width; computed once, not updated by the blocks.
    pub image_proj_in: Linear<B>,
    /// The Perceiver blocks (keys `perceiver_blocks.{i}.*`), in order.
    pub perceiver_blocks: Vec<PerceiverBlock<B>>,
    /// Key `proj_out.0`: width → out.
    pub proj_out: Linear<B>,
    /// Key `proj_out.1`: LayerNorm(out), eps 1e-5, with weight and bias.
    pub norm_weight: Param<Tensor<B, 1>>,
    /// Key `proj_out.1.bias`: the LayerNorm's bias `[out]`.
    pub norm_bias: Param<Tensor<B, 1>>,
}

impl<B: Backend> TextImageResampler<B> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn build(
        src: &mut impl ParamSource<B>,
        key: &str,
        text_dim: usize,
        user_dim: usize,
        width: usize,
        heads: usize,
        layers: usize,
        out: usize,
    ) -> Result<Self, LoadError> {
        Ok(Self {
            text_proj_in: src.linear(&format!("{key}.text_proj_in"), text_dim, width, true)?,
            image_proj_in: src.linear(&format!("{key}.image_proj_in"), user_dim, width, true)?,
            perceiver_blocks: (0..layers)
                .map(|b| {
                    PerceiverBlock::build(src, &format!("{key}.perceiver_blocks.{b}"), width, heads)
                })
                .collect::<Result<_, _>>()?,
            proj_out: src.linear(&format!("{key}.proj_out.0"), width, out, true)?,
            norm_weight: src.vector(&format!("{key}.proj_out.1.weight"), out, 1.0)?,
            norm_bias: src.vector(&format!("{key}.proj_out.1.bias"), out, 0.0)?,
        })
    }

    pub(crate) fn export(&self, key: &str, out: &mut Vec<(String, HostTensor)>) {
        export_linear(&self.text_proj_in, &format!("{key}.text_proj_in"), out);
        export_linear(&self.image_proj_in, &format!("{key}.image_proj_in"), out);
        for (b, block) in self.perceiver_blocks.iter().enumerate() {
            block.export(&format!("{key}.perceiver_blocks.{b}"), out);
        }
        export_linear(&self.proj_out, &format!("{key}.proj_out.0"), out);
        out.push((
            format!("{key}.proj_out.1.weight"),
            HostTensor::from_tensor(self.norm_weight.val()),
        ));
        out.push((
            format!("{key}.proj_out.1.bias"),
            HostTensor::from_tensor(self.norm_bias.val()),
        ));
    }
}

impl<B: FluxOps> TextImageResampler<B> {
    /// text: `[batch, txt_tokens, text_dim]`, user: `[batch, user_tokens, user_dim]` →
    /// `[batch, txt_tokens, out]`.
    pub fn forward(&self, text: Tensor<B, 3>, user: Tensor<B, 3>) -> Tensor<B, 3> {
        let user = flux_linear(&self.image_proj_in, user);
        let mut text = flux_linear(&self.text_proj_in, text);
        for block in &self.perceiver_blocks {
            text = block.forward(text, user.clone());
        }
        let out = flux_linear(&self.proj_out, text);
        let width = out.dims()[2];
        layer_norm_no_affine(out, 1e-5) * self.norm_weight.val().reshape([1, 1, width])
            + self.norm_bias.val().reshape([1, 1, width])
    }
}
