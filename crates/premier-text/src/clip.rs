//! The CLIP text transformer (transformers `CLIPTextModel`): learned positions, pre-LN blocks with
//! causal self-attention and quick-GELU, a final LayerNorm, and the hidden state at the EOS token as
//! the pooled output (what FLUX feeds `vector_in`).

use std::path::Path;

use burn::module::Param;
use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::activation::sigmoid;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use premier_io::{Checkpoint, DeviceSource, ParamSource, TensorReader};
use serde::Deserialize;

use crate::error::{config_error, read_json_config, TextError};
use crate::t5::check_ids;

/// CLIP text hyper-parameters, read from the checkpoint's config.json (`text_config` of a full
/// CLIP config also works). Unknown fields are ignored.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
pub struct ClipTextConfig {
    /// Tokens in the vocabulary (CLIP-L: 49408).
    pub vocab_size: usize,
    /// Width of a token and of the pooled vector (CLIP-L: 768).
    pub hidden_size: usize,
    /// Width inside each MLP (CLIP-L: 3072).
    pub intermediate_size: usize,
    /// Transformer layers (CLIP-L: 12).
    pub num_hidden_layers: usize,
    /// Attention heads (CLIP-L: 12).
    pub num_attention_heads: usize,
    /// Positions, the longest prompt in tokens (CLIP-L: 77).
    pub max_position_embeddings: usize,
    /// "quick_gelu" for CLIP-L.
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// LayerNorm epsilon (1e-5).
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// 2 in the released CLIP-L config, which selects transformers' legacy pooling (argmax of ids).
    #[serde(default = "default_eos")]
    pub eos_token_id: i64,
}

fn default_act() -> String {
    "quick_gelu".into()
}
fn default_eps() -> f64 {
    1e-5
}
fn default_eos() -> i64 {
    2
}

impl ClipTextConfig {
    /// `openai/clip-vit-large-patch14`, FLUX.1's first text encoder.
    pub fn vit_large_patch14() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            max_position_embeddings: 77,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
            eos_token_id: 2,
        }
    }

    /// Reads a Hugging Face `config.json` (a text config, or a full CLIP config's `text_config`).
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<Self, TextError> {
        let path = path.as_ref();
        let fail = config_error(path, "CLIP text");
        let mut json: serde_json::Value = read_json_config(path, "CLIP text")?;
        if let Some(inner) = json.get("text_config").cloned() {
            json = inner;
        }
        let config: Self = serde_json::from_value(json).map_err(|e| fail(e.to_string()))?;
        if !matches!(config.hidden_act.as_str(), "quick_gelu" | "gelu") {
            return Err(fail(format!(
                "hidden_act {:?} is not supported",
                config.hidden_act
            )));
        }
        Ok(config)
    }
}

/// LayerNorm with weight and bias (transformers `nn.LayerNorm`), shared by CLIP's two towers.
#[derive(Module, Debug)]
pub(crate) struct LayerNorm<B: Backend> {
    weight: Param<Tensor<B, 1>>,
    bias: Param<Tensor<B, 1>>,
}

impl<B: Backend> LayerNorm<B> {
    pub(crate) fn load(
        src: &mut impl ParamSource<B>,
        key: &str,
        width: usize,
    ) -> Result<Self, premier_io::LoadError> {
        Ok(Self {
            weight: src.vector(&format!("{key}.weight"), width, 1.0)?,
            bias: src.vector(&format!("{key}.bias"), width, 0.0)?,
        })
    }

    pub(crate) fn forward(&self, x: Tensor<B, 3>, eps: f64) -> Tensor<B, 3> {
        let width = x.dims()[2];
        premier_mmdit::norm::layer_norm_no_affine(x, eps) * self.weight.val().reshape([1, 1, width])
            + self.bias.val().reshape([1, 1, width])
    }
}

/// One pre-LN layer of either CLIP tower: `x += out_proj(attn(LN1(x)))`, then
/// `x += fc2(act(fc1(LN2(x))))`.
#[derive(Module, Debug)]
pub(crate) struct ClipLayer<B: Backend> {
    layer_norm1: LayerNorm<B>,
    q_proj: Linear<B>,
    k_proj: Linear<B>,
    v_proj: Linear<B>,
    out_proj: Linear<B>,
    layer_norm2: LayerNorm<B>,
    fc1: Linear<B>,
    fc2: Linear<B>,
}

/// What a CLIP layer's forward needs besides its weights.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LayerOptions {
    pub(crate) heads: usize,
    pub(crate) eps: f64,
    pub(crate) quick_gelu: bool,
    /// The text tower's causal mask; the vision tower attends everywhere.
    pub(crate) causal: bool,
}

impl<B: Backend> ClipLayer<B> {
    /// Layer `{prefix}` (`encoder.layers.N`) of width `h` and MLP width `inner`.
    pub(crate) fn load(
        src: &mut impl ParamSource<B>,
        p: &str,
        h: usize,
        inner: usize,
    ) -> Result<Self, premier_io::LoadError> {
        Ok(Self {
            layer_norm1: LayerNorm::load(src, &format!("{p}.layer_norm1"), h)?,
            q_proj: src.linear(&format!("{p}.self_attn.q_proj"), h, h, true)?,
            k_proj: src.linear(&format!("{p}.self_attn.k_proj"), h, h, true)?,
            v_proj: src.linear(&format!("{p}.self_attn.v_proj"), h, h, true)?,
            out_proj: src.linear(&format!("{p}.self_attn.out_proj"), h, h, true)?,
            layer_norm2: LayerNorm::load(src, &format!("{p}.layer_norm2"), h)?,
            fc1: src.linear(&format!("{p}.mlp.fc1"), h, inner, true)?,
            fc2: src.linear(&format!("{p}.mlp.fc2"), inner, h, true)?,
        })
    }

    /// x: `[batch, tokens, width]` → the same shape.
    pub(crate) fn forward(&self, x: Tensor<B, 3>, o: LayerOptions) -> Tensor<B, 3> {
        let [batch, tokens, width] = x.dims();
        let head_dim = width / o.heads;
        let heads = |t: Tensor<B, 3>| {
            t.reshape([batch, tokens, o.heads, head_dim])
                .swap_dims(1, 2)
        };
        let options = AttentionModuleOptions {
            is_causal: o.causal,
            ..Default::default()
        };
        let h = self.layer_norm1.forward(x.clone(), o.eps);
        let (q, k, v) = (
            heads(self.q_proj.forward(h.clone())),
            heads(self.k_proj.forward(h.clone())),
            heads(self.v_proj.forward(h)),
        );
        let attn = attention(q, k, v, None, None, options)
            .swap_dims(1, 2)
            .reshape([batch, tokens, width]);
        let x = x + self.out_proj.forward(attn);
        let h = self.fc1.forward(self.layer_norm2.forward(x.clone(), o.eps));
        let h = if o.quick_gelu {
            h.clone() * sigmoid(h * 1.702)
        } else {
            burn::tensor::activation::gelu(h)
        };
        x + self.fc2.forward(h)
    }
}

/// CLIP text tower.
#[derive(Module, Debug)]
pub struct ClipTextEncoder<B: Backend> {
    token_embedding: burn::nn::Embedding<B>,
    position_embedding: burn::nn::Embedding<B>,
    layers: Vec<ClipLayer<B>>,
    final_layer_norm: LayerNorm<B>,
    heads: usize,
    eps: f64,
    quick_gelu: bool,
    eos_token_id: i64,
    vocab: usize,
    max_positions: usize,
}

impl<B: Backend> ClipTextEncoder<B> {
    /// Loads the Hugging Face layout (`text_model.*`; a full CLIP file's `vision_model.*`,
    /// `visual_projection` and `text_projection` tensors are ignored). Strict otherwise.
    pub fn load(
        path: impl AsRef<Path>,
        config: &ClipTextConfig,
        device: &B::Device,
    ) -> Result<Self, TextError> {
        let mut ckpt = Checkpoint::open(path.as_ref())?;
        let c = config;
        let h = c.hidden_size;
        let mut embedding = |key: &str, rows: usize| -> Result<burn::nn::Embedding<B>, TextError> {
            let w = ckpt.read_tensor(key, &[rows, h])?;
            Ok(burn::nn::Embedding {
                weight: Param::from_tensor(w.into_tensor(device)),
            })
        };
        let token_embedding =
            embedding("text_model.embeddings.token_embedding.weight", c.vocab_size)?;
        let position_embedding = embedding(
            "text_model.embeddings.position_embedding.weight",
            c.max_position_embeddings,
        )?;
        let mut src = DeviceSource {
            reader: &mut ckpt,
            device,
            prefix: "text_model.".into(),
            dtype: None,
        };
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for n in 0..c.num_hidden_layers {
            layers.push(ClipLayer::load(
                &mut src,
                &format!("encoder.layers.{n}"),
                h,
                c.intermediate_size,
            )?);
        }
        let final_layer_norm = LayerNorm::load(&mut src, "final_layer_norm", h)?;
        // Position ids are a buffer in some exports; other towers of a full CLIP file are not ours.
        for key in ckpt.unused_keys() {
            if key == "text_model.embeddings.position_ids"
                || key.starts_with("vision_model.")
                || key.starts_with("visual_projection")
                || key.starts_with("text_projection")
                || key == "logit_scale"
            {
                ckpt.mark_used(&key);
            }
        }
        ckpt.ensure_all_used()?;
        Ok(Self {
            token_embedding,
            position_embedding,
            layers,
            final_layer_norm,
            heads: c.num_attention_heads,
            eps: c.layer_norm_eps,
            quick_gelu: c.hidden_act == "quick_gelu",
            eos_token_id: c.eos_token_id,
            vocab: c.vocab_size,
            max_positions: c.max_position_embeddings,
        })
    }

    /// The last layer's hidden states, before the final LayerNorm.
    fn run(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [_, tokens] = ids.dims();
        let device = ids.device();
        let positions =
            Tensor::<B, 1, Int>::arange(0..tokens as i64, &device).unsqueeze_dim::<2>(0);
        let mut x = self.token_embedding.forward(ids) + self.position_embedding.forward(positions);
        let options = LayerOptions {
            heads: self.heads,
            eps: self.eps,
            quick_gelu: self.quick_gelu,
            causal: true,
        };
        for layer in &self.layers {
            x = layer.forward(x, options);
        }
        x
    }

    /// ids `[batch, tokens]` → (`last_hidden_state` `[batch, tokens, hidden]`, pooled `[batch, hidden]`).
    ///
    /// Pooling as transformers: with `eos_token_id == 2` (the released CLIP-L config) the position
    /// of the largest id in each row (the first EOS for CLIP's vocabulary), otherwise the first
    /// position holding `eos_token_id`.
    ///
    /// # Panics
    /// On ids outside the vocabulary or too many tokens; [`ClipTextEncoder::try_forward`] returns
    /// the error instead.
    pub fn forward(&self, ids: Tensor<B, 2, Int>) -> (Tensor<B, 3>, Tensor<B, 2>) {
        self.try_forward(ids).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`ClipTextEncoder::forward`] that checks the ids first.
    pub fn try_forward(
        &self,
        ids: Tensor<B, 2, Int>,
    ) -> Result<(Tensor<B, 3>, Tensor<B, 2>), TextError> {
        check_ids(&ids, self.vocab)?;
        let [batch, tokens] = ids.dims();
        if tokens > self.max_positions {
            return Err(TextError::Encode {
                prompt: String::new(),
                reason: format!(
                    "{tokens} tokens, but CLIP has {} positions",
                    self.max_positions
                ),
            });
        }
        let rows = ids
            .to_data()
            .convert::<i64>()
            .into_vec::<i64>()
            .unwrap_or_default();
        let eos: Vec<i64> = rows
            .chunks(tokens)
            .map(|row| {
                let position = if self.eos_token_id == 2 {
                    // First index of the maximum, like torch.argmax.
                    let max = row.iter().copied().max().unwrap_or(0);
                    row.iter().position(|&v| v == max)
                } else {
                    row.iter().position(|&v| v == self.eos_token_id)
                };
                position.unwrap_or(tokens - 1) as i64
            })
            .collect();
        let device = ids.device();
        let hidden = self.final_layer_norm.forward(self.run(ids), self.eps);
        let width = hidden.dims()[2];
        let index = Tensor::<B, 1, Int>::from_data(TensorData::new(eos, [batch]), &device)
            .reshape([batch, 1, 1])
            .expand([batch, 1, width]);
        let pooled = hidden.clone().gather(1, index).reshape([batch, width]);
        Ok((hidden, pooled))
    }
}
