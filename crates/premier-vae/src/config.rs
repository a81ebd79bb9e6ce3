//! Autoencoder sizes, named as the diffusers `AutoencoderKL` config.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::VaeError;

/// `AutoencoderKL` hyper-parameters (diffusers `vae/config.json`; unknown fields ignored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AutoencoderConfig {
    /// Image channels in (RGB: 3).
    #[serde(default = "three")]
    pub in_channels: usize,
    /// Image channels out (RGB: 3).
    #[serde(default = "three")]
    pub out_channels: usize,
    /// Latent channels (FLUX.1: 16).
    pub latent_channels: usize,
    /// Channels per resolution level (BFL `ch · ch_mult`).
    pub block_out_channels: Vec<usize>,
    /// Resnets per encoder level (the decoder has one more).
    pub layers_per_block: usize,
    /// Groups of every GroupNorm (32).
    pub norm_num_groups: usize,
    /// The latent space FLUX sees is `(z − shift_factor) · scaling_factor` (FLUX.1: 0.3611).
    pub scaling_factor: f64,
    /// See `scaling_factor` (FLUX.1: 0.1159).
    #[serde(default)]
    pub shift_factor: f64,
}

fn three() -> usize {
    3
}

impl AutoencoderConfig {
    /// FLUX.1's autoencoder (BFL `ae_params`): 128/256/512/512 channels, 2 resnets, 16 latents.
    pub fn flux() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            latent_channels: 16,
            block_out_channels: vec![128, 256, 512, 512],
            layers_per_block: 2,
            norm_num_groups: 32,
            scaling_factor: 0.3611,
            shift_factor: 0.1159,
        }
    }

    /// Reads a diffusers `config.json`.
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<Self, VaeError> {
        let path = path.as_ref();
        let fail = |reason: String| VaeError::Config {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        serde_json::from_str(&text).map_err(|e| fail(e.to_string()))
    }

    /// Downsampling factor between image and latent: 2^(levels - 1).
    pub fn downsampling(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }
}
