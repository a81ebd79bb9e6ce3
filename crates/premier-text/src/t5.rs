//! The T5-v1.1 encoder (transformers `T5EncoderModel`): RMS LayerNorm, unscaled attention with a
//! bucketed relative position bias computed in block 0 and shared by all blocks, gated-GELU FF,
//! no biases anywhere.

use std::path::Path;

use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::activation::softmax;
use premier_io::LoadError;
use premier_io::{Checkpoint, DeviceSource, ParamSource, TensorReader};
use premier_mmdit::fused::composite::gelu_tanh;
use serde::Deserialize;

use crate::error::{config_error, read_json_config, TextError};

/// T5 hyper-parameters, read from the checkpoint's config.json (unknown fields ignored).
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
pub struct T5Config {
    /// Tokens in the vocabulary (T5-v1.1: 32128).
    pub vocab_size: usize,
    /// Width of a token, what FLUX reads (XXL: 4096).
    pub d_model: usize,
    /// Width of a head's keys and values (XXL: 64).
    pub d_kv: usize,
    /// Width inside each feed-forward block (XXL: 10240).
    pub d_ff: usize,
    /// Encoder layers (XXL: 24).
    pub num_layers: usize,
    /// Attention heads (XXL: 64).
    pub num_heads: usize,
    /// Buckets of the relative position bias (32).
    #[serde(default = "default_buckets")]
    pub relative_attention_num_buckets: usize,
    /// Distance beyond which relative positions share a bucket (128).
    #[serde(default = "default_distance")]
    pub relative_attention_max_distance: usize,
    /// RMSNorm epsilon (1e-6).
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    /// "gated-gelu" for T5 v1.1.
    #[serde(default = "default_ff")]
    pub feed_forward_proj: String,
}

fn default_buckets() -> usize {
    32
}
fn default_distance() -> usize {
    128
}
fn default_eps() -> f64 {
    1e-6
}
fn default_ff() -> String {
    "gated-gelu".into()
}

impl T5Config {
    /// `google/t5-v1_1-xxl`, the encoder FLUX.1 uses.
    pub fn v1_1_xxl() -> Self {
        Self {
            vocab_size: 32128,
            d_model: 4096,
            d_kv: 64,
            d_ff: 10240,
            num_layers: 24,
            num_heads: 64,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            layer_norm_epsilon: 1e-6,
            feed_forward_proj: "gated-gelu".into(),
        }
    }

    /// Reads a Hugging Face `config.json`.
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<Self, TextError> {
        let path = path.as_ref();
        let fail = config_error(path, "T5");
        let config: Self = read_json_config(path, "T5")?;
        if config.feed_forward_proj != "gated-gelu" {
            return Err(fail(format!(
                "feed_forward_proj {:?}: only T5 v1.1's gated-gelu is supported",
                config.feed_forward_proj
            )));
        }
        Ok(config)
    }
}

/// transformers' `_relative_position_bucket` for a bidirectional encoder; `relative = key - query`.
/// The log is taken in f32 and truncated, as the reference does.
pub fn relative_position_bucket(relative: i64, num_buckets: usize, max_distance: usize) -> usize {
    let half = (num_buckets / 2) as i64;
    let mut bucket = if relative > 0 { half } else { 0 };
    let n = relative.abs();
    let max_exact = half / 2;
    if n < max_exact {
        bucket += n;
    } else {
        let scaled = ((n as f32 / max_exact as f32).ln()
            / (max_distance as f32 / max_exact as f32).ln()
            * (half - max_exact) as f32) as i64;
        bucket += (max_exact + scaled).min(half - 1);
    }
    bucket as usize
}

/// T5's RMS LayerNorm: `x · rsqrt(mean(x²) + eps) · weight`, no mean, no bias.
fn rms_norm<B: Backend>(x: Tensor<B, 3>, weight: &Tensor<B, 1>, eps: f64) -> Tensor<B, 3> {
    let width = weight.dims()[0];
    let rrms = premier_mmdit::norm::inverse_sqrt(x.clone().powi_scalar(2).mean_dim(2), eps);
    x * rrms * weight.clone().reshape([1, 1, width])
}

#[derive(Module, Debug)]
struct T5Block<B: Backend> {
    attn_norm: burn::module::Param<Tensor<B, 1>>,
    q: Linear<B>,
    k: Linear<B>,
    v: Linear<B>,
    o: Linear<B>,
    ff_norm: burn::module::Param<Tensor<B, 1>>,
    wi_0: Linear<B>,
    wi_1: Linear<B>,
    wo: Linear<B>,
}

/// T5-v1.1 encoder stack.
#[derive(Module, Debug)]
pub struct T5Encoder<B: Backend> {
    /// Token embeddings `[vocab, d_model]` (key `shared.weight`).
    shared: burn::nn::Embedding<B>,
    /// `[num_buckets, heads]` (key `encoder.block.0.layer.0.SelfAttention.relative_attention_bias`).
    relative_attention_bias: burn::nn::Embedding<B>,
    blocks: Vec<T5Block<B>>,
    final_layer_norm: burn::module::Param<Tensor<B, 1>>,
    heads: usize,
    d_kv: usize,
    vocab: usize,
    num_buckets: usize,
    max_distance: usize,
    eps: f64,
}

fn embedding<B: Backend>(
    reader: &mut impl TensorReader,
    key: &str,
    rows: usize,
    cols: usize,
    device: &B::Device,
) -> Result<burn::nn::Embedding<B>, LoadError> {
    let weight = reader.read_tensor(key, &[rows, cols])?;
    Ok(burn::nn::Embedding {
        weight: burn::module::Param::from_tensor(weight.into_tensor(device)),
    })
}

impl<B: Backend> T5Encoder<B> {
    /// Loads the Hugging Face layout: one file, shards with an index, or their folder. Strict:
    /// every stored tensor must be used (`encoder.embed_tokens.weight`, a tied copy of
    /// `shared.weight`, is accepted).
    pub fn load(
        path: impl AsRef<Path>,
        config: &T5Config,
        device: &B::Device,
    ) -> Result<Self, TextError> {
        let mut ckpt = Checkpoint::open(path.as_ref())?;
        let c = config;
        let inner = c.num_heads * c.d_kv;
        let shared_key = if ckpt.contains("shared.weight") {
            "shared.weight"
        } else {
            "encoder.embed_tokens.weight"
        };
        let shared = embedding(&mut ckpt, shared_key, c.vocab_size, c.d_model, device)?;
        if ckpt.contains("encoder.embed_tokens.weight") {
            ckpt.mark_used("encoder.embed_tokens.weight");
        }
        let relative_attention_bias = embedding(
            &mut ckpt,
            "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            c.relative_attention_num_buckets,
            c.num_heads,
            device,
        )?;
        let mut src = DeviceSource {
            reader: &mut ckpt,
            device,
            prefix: String::new(),
            dtype: None,
        };
        let mut blocks = Vec::with_capacity(c.num_layers);
        for n in 0..c.num_layers {
            let a = format!("encoder.block.{n}.layer.0");
            let f = format!("encoder.block.{n}.layer.1");
            blocks.push(T5Block {
                attn_norm: src.vector(&format!("{a}.layer_norm.weight"), c.d_model, 1.0)?,
                q: src.linear(&format!("{a}.SelfAttention.q"), c.d_model, inner, false)?,
                k: src.linear(&format!("{a}.SelfAttention.k"), c.d_model, inner, false)?,
                v: src.linear(&format!("{a}.SelfAttention.v"), c.d_model, inner, false)?,
                o: src.linear(&format!("{a}.SelfAttention.o"), inner, c.d_model, false)?,
                ff_norm: src.vector(&format!("{f}.layer_norm.weight"), c.d_model, 1.0)?,
                wi_0: src.linear(
                    &format!("{f}.DenseReluDense.wi_0"),
                    c.d_model,
                    c.d_ff,
                    false,
                )?,
                wi_1: src.linear(
                    &format!("{f}.DenseReluDense.wi_1"),
                    c.d_model,
                    c.d_ff,
                    false,
                )?,
                wo: src.linear(&format!("{f}.DenseReluDense.wo"), c.d_ff, c.d_model, false)?,
            });
        }
        let final_layer_norm = src.vector("encoder.final_layer_norm.weight", c.d_model, 1.0)?;
        ckpt.ensure_all_used()?;
        Ok(Self {
            shared,
            relative_attention_bias,
            blocks,
            final_layer_norm,
            heads: c.num_heads,
            d_kv: c.d_kv,
            vocab: c.vocab_size,
            num_buckets: c.relative_attention_num_buckets,
            max_distance: c.relative_attention_max_distance,
            eps: c.layer_norm_epsilon,
        })
    }

    /// The additive attention bias of block 0 for `tokens` positions: `[1, heads, tokens, tokens]`.
    pub fn position_bias(&self, tokens: usize, device: &B::Device) -> Tensor<B, 4> {
        let buckets: Vec<i64> = (0..tokens)
            .flat_map(|q| (0..tokens).map(move |k| (q, k)))
            .map(|(q, k)| {
                relative_position_bucket(k as i64 - q as i64, self.num_buckets, self.max_distance)
                    as i64
            })
            .collect();
        let buckets =
            Tensor::<B, 2, Int>::from_data(TensorData::new(buckets, [tokens, tokens]), device);
        self.relative_attention_bias
            .forward(buckets) // [tokens, tokens, heads]
            .permute([2, 0, 1])
            .unsqueeze_dim(0)
    }

    /// Embeddings of `ids`: `[batch, tokens]` → `[batch, tokens, d_model]`.
    pub fn embed(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.shared.forward(ids)
    }

    /// `last_hidden_state` without an attention mask (as FLUX): ids `[batch, tokens]` →
    /// `[batch, tokens, d_model]`.
    ///
    /// # Panics
    /// On ids outside the vocabulary; [`T5Encoder::try_forward`] returns the error instead.
    pub fn forward(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.try_forward(ids).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`T5Encoder::forward`] that checks the ids first.
    pub fn try_forward(&self, ids: Tensor<B, 2, Int>) -> Result<Tensor<B, 3>, TextError> {
        check_ids(&ids, self.vocab)?;
        let [batch, tokens] = ids.dims();
        let device = ids.device();
        let bias = self.position_bias(tokens, &device);
        let mut x = self.embed(ids);
        let heads = |t: Tensor<B, 3>| {
            t.reshape([batch, tokens, self.heads, self.d_kv])
                .swap_dims(1, 2)
        };
        for block in &self.blocks {
            let h = rms_norm(x.clone(), &block.attn_norm.val(), self.eps);
            let (q, k, v) = (
                heads(block.q.forward(h.clone())),
                heads(block.k.forward(h.clone())),
                heads(block.v.forward(h)),
            );
            // T5 does not scale the scores by 1/√d_kv.
            let scores = q.matmul(k.swap_dims(2, 3)) + bias.clone();
            let attn = softmax(scores, 3).matmul(v).swap_dims(1, 2).reshape([
                batch,
                tokens,
                self.heads * self.d_kv,
            ]);
            x = x + block.o.forward(attn);
            let h = rms_norm(x.clone(), &block.ff_norm.val(), self.eps);
            let gated = gelu_tanh(block.wi_0.forward(h.clone())) * block.wi_1.forward(h);
            x = x + block.wo.forward(gated);
        }
        Ok(rms_norm(x, &self.final_layer_norm.val(), self.eps))
    }
}

/// Refuses ids outside the vocabulary (an embedding lookup would otherwise panic or read garbage).
pub(crate) fn check_ids<B: Backend>(
    ids: &Tensor<B, 2, Int>,
    vocab: usize,
) -> Result<(), TextError> {
    let data = ids.to_data().convert::<i64>();
    let values = data.as_slice::<i64>().unwrap_or_default();
    match values.iter().find(|&&id| id < 0 || id as usize >= vocab) {
        Some(&id) => Err(TextError::TokenOutOfRange { id, vocab }),
        None => Ok(()),
    }
}
