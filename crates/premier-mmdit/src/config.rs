//! Hyper-parameters of the FLUX.1 transformer, named as BFL's `FluxParams`.

use burn::config::Config;

/// FLUX.1 MM-DiT hyper-parameters.
///
/// Field names (and so the serde names) are those of `FluxParams` in black-forest-labs/flux
/// `src/flux/model.py`, so a BFL config reads unchanged. [`FluxConfig::from_diffusers_json`] reads a
/// diffusers `transformer/config.json` instead.
#[derive(Config, Debug, PartialEq)]
pub struct FluxConfig {
    /// Channels of a packed latent token (16 latent channels × 2 × 2 = 64 for FLUX.1).
    pub in_channels: usize,
    /// Channels of the predicted velocity per token.
    pub out_channels: usize,
    /// Width of the pooled text vector `y` (CLIP-L pooled: 768).
    pub vec_in_dim: usize,
    /// Width of the text tokens (T5-XXL: 4096).
    pub context_in_dim: usize,
    /// Model width.
    pub hidden_size: usize,
    /// MLP width as a multiple of `hidden_size`.
    pub mlp_ratio: f64,
    /// Attention heads; `hidden_size / num_heads` must equal `axes_dim.sum()`.
    pub num_heads: usize,
    /// Number of double-stream blocks.
    pub depth: usize,
    /// Number of single-stream blocks.
    pub depth_single_blocks: usize,
    /// RoPE channels per position axis (index, row, column); each entry even.
    pub axes_dim: Vec<usize>,
    /// RoPE base.
    pub theta: usize,
    /// Whether the fused qkv projections have a bias.
    pub qkv_bias: bool,
    /// Whether the model embeds a guidance scale (dev: yes, schnell: no).
    pub guidance_embed: bool,
}

impl FluxConfig {
    /// FLUX.1-dev (BFL `util.py`, `configs["flux-dev"]`).
    pub fn dev() -> Self {
        Self {
            in_channels: 64,
            out_channels: 64,
            vec_in_dim: 768,
            context_in_dim: 4096,
            hidden_size: 3072,
            mlp_ratio: 4.0,
            num_heads: 24,
            depth: 19,
            depth_single_blocks: 38,
            axes_dim: vec![16, 56, 56],
            theta: 10_000,
            qkv_bias: true,
            guidance_embed: true,
        }
    }

    /// FLUX.1-schnell: dev without the guidance embedder (BFL `configs["flux-schnell"]`).
    pub fn schnell() -> Self {
        Self {
            guidance_embed: false,
            ..Self::dev()
        }
    }

    /// The medium configuration of the shared benchmarks (docs/benchmarks.md): 36,497,472
    /// parameters, width 512, 8 heads, 2 double and 4 single blocks, text 256, pooled 128.
    pub fn medium() -> Self {
        Self {
            in_channels: 64,
            out_channels: 64,
            vec_in_dim: 128,
            context_in_dim: 256,
            hidden_size: 512,
            mlp_ratio: 4.0,
            num_heads: 8,
            depth: 2,
            depth_single_blocks: 4,
            axes_dim: vec![8, 28, 28],
            theta: 10_000,
            qkv_bias: true,
            guidance_embed: true,
        }
    }

    /// A very small FLUX-shaped model for tests and CPU experiments: width 16, 2 heads, 2 double
    /// and 1 single block, 8 input channels (2 latent channels × 2 × 2), text width 16, pooled 12.
    pub fn tiny() -> Self {
        Self {
            in_channels: 8,
            out_channels: 8,
            vec_in_dim: 12,
            context_in_dim: 16,
            hidden_size: 16,
            mlp_ratio: 2.0,
            num_heads: 2,
            depth: 2,
            depth_single_blocks: 1,
            axes_dim: vec![2, 2, 4],
            theta: 10_000,
            qkv_bias: true,
            guidance_embed: true,
        }
    }

    /// Channels per attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    /// Width of the MLP hidden layer.
    pub fn mlp_hidden(&self) -> usize {
        (self.hidden_size as f64 * self.mlp_ratio) as usize
    }

    /// Checks the relations between fields that the model relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |reason: String| Err(ConfigError { reason });
        if self.num_heads == 0 || self.hidden_size % self.num_heads != 0 {
            return fail(format!(
                "hidden_size {} is not divisible by num_heads {}",
                self.hidden_size, self.num_heads
            ));
        }
        let axes: usize = self.axes_dim.iter().sum();
        if axes != self.head_dim() {
            return fail(format!(
                "axes_dim {:?} sums to {axes}, but the head dim is {}",
                self.axes_dim,
                self.head_dim()
            ));
        }
        if self.axes_dim.iter().any(|d| d % 2 != 0) {
            return fail(format!("axes_dim {:?} has an odd entry", self.axes_dim));
        }
        if self.axes_dim.len() != 3 {
            return fail(format!(
                "axes_dim {:?} must have 3 entries (index, row, column)",
                self.axes_dim
            ));
        }
        Ok(())
    }

    /// Reads a diffusers `FluxTransformer2DModel` config.json (unknown fields ignored).
    pub fn from_diffusers_json(text: &str) -> Result<Self, ConfigError> {
        #[derive(serde::Deserialize)]
        struct Diffusers {
            in_channels: usize,
            out_channels: Option<usize>,
            num_layers: usize,
            num_single_layers: usize,
            attention_head_dim: usize,
            num_attention_heads: usize,
            joint_attention_dim: usize,
            pooled_projection_dim: usize,
            guidance_embeds: bool,
            axes_dims_rope: Vec<usize>,
        }
        let d: Diffusers = serde_json::from_str(text).map_err(|e| ConfigError {
            reason: format!("not a diffusers FLUX transformer config: {e}"),
        })?;
        let config = Self {
            in_channels: d.in_channels,
            out_channels: d.out_channels.unwrap_or(d.in_channels),
            vec_in_dim: d.pooled_projection_dim,
            context_in_dim: d.joint_attention_dim,
            hidden_size: d.attention_head_dim * d.num_attention_heads,
            mlp_ratio: 4.0,
            num_heads: d.num_attention_heads,
            depth: d.num_layers,
            depth_single_blocks: d.num_single_layers,
            axes_dim: d.axes_dims_rope,
            theta: 10_000,
            qkv_bias: true,
            guidance_embed: d.guidance_embeds,
        };
        config.validate()?;
        Ok(config)
    }
}

/// A [`FluxConfig`] whose fields contradict each other.
#[derive(Debug, thiserror::Error)]
#[error("invalid FLUX config: {reason}")]
pub struct ConfigError {
    /// What is wrong.
    pub reason: String,
}
