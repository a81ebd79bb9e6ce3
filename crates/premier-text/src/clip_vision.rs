//! The CLIP vision tower (transformers `CLIPVisionModel`) and a whole `CLIPModel`: image and text
//! features in the shared embedding space, for the evaluation metrics (CLIP-T2I and the CLIP
//! preference proxy). Pixels come in already preprocessed (resized, cropped, normalized).

use std::path::Path;

use burn::module::Param;
use burn::prelude::*;
use premier_io::{Checkpoint, DeviceSource, TensorReader};
use serde::Deserialize;

use crate::clip::{ClipLayer, LayerNorm, LayerOptions};
use crate::error::{config_error, read_json_config, TextError};
use crate::{ClipTextConfig, ClipTextEncoder};

/// CLIP vision hyper-parameters: a `config.json`'s `vision_config` (unknown fields ignored).
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
pub struct ClipVisionConfig {
    /// Width of a patch token (ViT-L/14: 1024).
    pub hidden_size: usize,
    /// Width inside each MLP (ViT-L/14: 4096).
    pub intermediate_size: usize,
    /// Transformer layers (ViT-L/14: 24).
    pub num_hidden_layers: usize,
    /// Attention heads (ViT-L/14: 16).
    pub num_attention_heads: usize,
    /// Input channels (3).
    #[serde(default = "default_channels")]
    pub num_channels: usize,
    /// Input side in pixels (ViT-L/14: 224).
    pub image_size: usize,
    /// Patch side in pixels (ViT-L/14: 14).
    pub patch_size: usize,
    /// "quick_gelu" for the OpenAI CLIPs.
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// LayerNorm epsilon (1e-5).
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
}

fn default_channels() -> usize {
    3
}
fn default_act() -> String {
    "quick_gelu".into()
}
fn default_eps() -> f64 {
    1e-5
}

/// A whole CLIP config: both towers and the width of the shared embedding space.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
pub struct ClipConfig {
    /// The text tower.
    pub text_config: ClipTextConfig,
    /// The vision tower.
    pub vision_config: ClipVisionConfig,
    /// Width of the shared embedding space (ViT-L/14: 768).
    pub projection_dim: usize,
}

impl ClipConfig {
    /// Reads a Hugging Face `CLIPModel` `config.json`.
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<Self, TextError> {
        let path = path.as_ref();
        let fail = config_error(path, "CLIP");
        let config: Self = read_json_config(path, "CLIP")?;
        config.check().map_err(fail)?;
        Ok(config)
    }

    fn check(&self) -> Result<(), String> {
        let v = &self.vision_config;
        for act in [&v.hidden_act, &self.text_config.hidden_act] {
            if !matches!(act.as_str(), "quick_gelu" | "gelu") {
                return Err(format!("hidden_act {act:?} is not supported"));
            }
        }
        if v.patch_size == 0 || v.image_size % v.patch_size != 0 {
            return Err(format!(
                "image_size {} is not a multiple of patch_size {}",
                v.image_size, v.patch_size
            ));
        }
        if v.num_attention_heads == 0 || v.hidden_size % v.num_attention_heads != 0 {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                v.hidden_size, v.num_attention_heads
            ));
        }
        Ok(())
    }
}

/// CLIP vision tower: patches, a class token and learned positions, pre-LayerNorm, the encoder,
/// and the class token's post-LayerNorm state as the pooled output.
#[derive(Module, Debug)]
pub struct ClipVisionEncoder<B: Backend> {
    /// `[hidden, channels · patch²]`: the patch convolution as a matrix.
    patch_embedding: Param<Tensor<B, 2>>,
    class_embedding: Param<Tensor<B, 1>>,
    /// `[patches + 1, hidden]`.
    position_embedding: Param<Tensor<B, 2>>,
    pre_layrnorm: LayerNorm<B>,
    layers: Vec<ClipLayer<B>>,
    post_layernorm: LayerNorm<B>,
    heads: usize,
    eps: f64,
    quick_gelu: bool,
    channels: usize,
    image_size: usize,
    patch_size: usize,
}

impl<B: Backend> ClipVisionEncoder<B> {
    /// Loads `vision_model.*` of a Hugging Face CLIP file (the other keys of a full CLIP file are
    /// left to their owners); strict about every vision key.
    pub fn load(
        path: impl AsRef<Path>,
        config: &ClipVisionConfig,
        device: &B::Device,
    ) -> Result<Self, TextError> {
        let mut ckpt = Checkpoint::open(path.as_ref())?;
        let c = config;
        let (h, p) = (c.hidden_size, c.patch_size);
        let grid = c.image_size / p;
        let conv = ckpt.read_tensor(
            "vision_model.embeddings.patch_embedding.weight",
            &[h, c.num_channels, p, p],
        )?;
        let patch_embedding: Tensor<B, 4> = conv.into_tensor(device);
        let class_embedding = ckpt
            .read_tensor("vision_model.embeddings.class_embedding", &[h])?
            .into_tensor(device);
        let position_embedding = ckpt
            .read_tensor(
                "vision_model.embeddings.position_embedding.weight",
                &[grid * grid + 1, h],
            )?
            .into_tensor(device);
        let mut src = DeviceSource {
            reader: &mut ckpt,
            device,
            prefix: "vision_model.".into(),
            dtype: None,
        };
        let pre_layrnorm = LayerNorm::load(&mut src, "pre_layrnorm", h)?;
        let layers = (0..c.num_hidden_layers)
            .map(|n| {
                ClipLayer::load(
                    &mut src,
                    &format!("encoder.layers.{n}"),
                    h,
                    c.intermediate_size,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let post_layernorm = LayerNorm::load(&mut src, "post_layernorm", h)?;
        let theirs: Vec<String> = ckpt
            .unused_keys()
            .into_iter()
            .filter(|key| !key.starts_with("vision_model.") || key.ends_with(".position_ids"))
            .collect();
        for key in theirs {
            ckpt.mark_used(&key);
        }
        ckpt.ensure_all_used()?;
        Ok(Self {
            patch_embedding: Param::from_tensor(
                patch_embedding.reshape([h, c.num_channels * p * p]),
            ),
            class_embedding: Param::from_tensor(class_embedding),
            position_embedding: Param::from_tensor(position_embedding),
            pre_layrnorm,
            layers,
            post_layernorm,
            heads: c.num_attention_heads,
            eps: c.layer_norm_eps,
            quick_gelu: c.hidden_act == "quick_gelu",
            channels: c.num_channels,
            image_size: c.image_size,
            patch_size: p,
        })
    }

    /// Preprocessed pixels `[batch, channels, size, size]` → (`last_hidden_state`
    /// `[batch, patches + 1, hidden]`, pooled `[batch, hidden]`), as transformers'
    /// `CLIPVisionModel` (`last_hidden_state`, `pooler_output`).
    pub fn try_forward(
        &self,
        pixels: Tensor<B, 4>,
    ) -> Result<(Tensor<B, 3>, Tensor<B, 2>), TextError> {
        let [batch, channels, height, width] = pixels.dims();
        let size = self.image_size;
        if channels != self.channels || height != size || width != size {
            return Err(TextError::Image {
                reason: format!(
                    "pixels of [{channels}, {height}, {width}], but the vision tower takes \
                     [{}, {size}, {size}] (resize, crop and normalize first)",
                    self.channels
                ),
            });
        }
        let (p, g) = (self.patch_size, size / self.patch_size);
        let hidden = self.class_embedding.dims()[0];
        // The patch convolution (stride = kernel = patch) as one product: patches in
        // (channel, row, column) order, the kernel's flattening.
        let patches = pixels
            .reshape([batch, channels, g, p, g, p])
            .permute([0, 2, 4, 1, 3, 5])
            .reshape([batch, g * g, channels * p * p]);
        let tokens = patches.matmul(self.patch_embedding.val().transpose().unsqueeze_dim::<3>(0));
        let class = self
            .class_embedding
            .val()
            .reshape([1, 1, hidden])
            .expand([batch, 1, hidden]);
        let x = Tensor::cat(vec![class, tokens], 1)
            + self.position_embedding.val().unsqueeze_dim::<3>(0);
        let mut x = self.pre_layrnorm.forward(x, self.eps);
        let options = LayerOptions {
            heads: self.heads,
            eps: self.eps,
            quick_gelu: self.quick_gelu,
            causal: false,
        };
        for layer in &self.layers {
            x = layer.forward(x, options);
        }
        let class = x.clone().narrow(1, 0, 1);
        let pooled = self
            .post_layernorm
            .forward(class, self.eps)
            .reshape([batch, hidden]);
        Ok((x, pooled))
    }
}

/// A whole CLIP (transformers `CLIPModel`): both towers, their projections into the shared
/// space, and the logit scale.
#[derive(Module, Debug)]
pub struct ClipModel<B: Backend> {
    /// The text tower.
    pub text: ClipTextEncoder<B>,
    /// The vision tower.
    pub vision: ClipVisionEncoder<B>,
    /// `[projection, text hidden]`.
    text_projection: Param<Tensor<B, 2>>,
    /// `[projection, vision hidden]`.
    visual_projection: Param<Tensor<B, 2>>,
    /// log of the scale of `logits_per_image`.
    logit_scale: Param<Tensor<B, 1>>,
}

impl<B: Backend> ClipModel<B> {
    /// Loads a Hugging Face CLIP file (`model.safetensors` of `openai/clip-vit-large-patch14`)
    /// strictly: every key is one of the towers', the projections' or the logit scale.
    pub fn load(
        path: impl AsRef<Path>,
        config: &ClipConfig,
        device: &B::Device,
    ) -> Result<Self, TextError> {
        let path = path.as_ref();
        let text = ClipTextEncoder::load(path, &config.text_config, device)?;
        let vision = ClipVisionEncoder::load(path, &config.vision_config, device)?;
        let mut ckpt = Checkpoint::open(path)?;
        let d = config.projection_dim;
        let mut matrix = |key: &str, width: usize| -> Result<Param<Tensor<B, 2>>, TextError> {
            Ok(Param::from_tensor(
                ckpt.read_tensor(key, &[d, width])?.into_tensor(device),
            ))
        };
        let text_projection = matrix("text_projection.weight", config.text_config.hidden_size)?;
        let visual_projection =
            matrix("visual_projection.weight", config.vision_config.hidden_size)?;
        let logit_scale = ckpt.read_tensor("logit_scale", &[])?.data;
        Ok(Self {
            text,
            vision,
            text_projection,
            visual_projection,
            logit_scale: Param::from_tensor(Tensor::from_data(
                TensorData::new(logit_scale, [1]),
                device,
            )),
        })
    }

    /// Preprocessed pixels `[batch, 3, size, size]` → image features `[batch, projection]`
    /// (`CLIPModel.get_image_features`, not normalized).
    pub fn image_features(&self, pixels: Tensor<B, 4>) -> Result<Tensor<B, 2>, TextError> {
        let (_, pooled) = self.vision.try_forward(pixels)?;
        Ok(pooled.matmul(self.visual_projection.val().transpose()))
    }

    /// CLIP token ids `[batch, tokens]` → text features `[batch, projection]`
    /// (`CLIPModel.get_text_features`, not normalized).
    pub fn text_features(&self, ids: Tensor<B, 2, Int>) -> Result<Tensor<B, 2>, TextError> {
        let (_, pooled) = self.text.try_forward(ids)?;
        Ok(pooled.matmul(self.text_projection.val().transpose()))
    }

    /// `exp(logit_scale) · cos(image, text)`: `[images, texts]` (`CLIPModel`'s
    /// `logits_per_image`) from features of [`Self::image_features`] and [`Self::text_features`].
    pub fn logits_per_image(&self, images: Tensor<B, 2>, texts: Tensor<B, 2>) -> Tensor<B, 2> {
        let unit = |x: Tensor<B, 2>| {
            let norm = x.clone().powi_scalar(2).sum_dim(1).sqrt();
            x / norm
        };
        let scale = self.logit_scale.val().exp().reshape([1, 1]);
        unit(images).matmul(unit(texts).transpose()) * scale
    }
}
