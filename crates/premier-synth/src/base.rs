//! The world's base model: a small FLUX.1-shaped transformer and the text encoder, saved as a BFL
//! checkpoint (`flux.safetensors`, loadable by `Flux::load`), `text.safetensors`,
//! `tokenizer.json` and `config.json`.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use premier_io::{write_safetensors, write_via_temp, SaveDtype};
use premier_mmdit::{ConfigError, Flux, FluxConfig, ForwardError, LoadError};
use premier_pipeline::PipelineError;
use premier_text::TextError;
use serde::{Deserialize, Serialize};

use crate::codec::TOKEN_CHANNELS;
use crate::text::{build_tokenizer, SynthTextEncoder};

/// Sizes of the base model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SynthBaseConfig {
    /// The transformer's sizes (`config.json` of the base folder).
    pub flux: FluxConfig,
}

impl Default for SynthBaseConfig {
    /// Width 64, 4 heads, 2 double and 2 single blocks, no guidance embedding (like schnell).
    fn default() -> Self {
        Self {
            flux: FluxConfig {
                in_channels: TOKEN_CHANNELS,
                out_channels: TOKEN_CHANNELS,
                vec_in_dim: 32,
                context_in_dim: 32,
                hidden_size: 64,
                mlp_ratio: 4.0,
                num_heads: 4,
                depth: 2,
                depth_single_blocks: 2,
                axes_dim: vec![4, 6, 6],
                theta: 10_000,
                qkv_bias: true,
                guidance_embed: false,
            },
        }
    }
}

impl SynthBaseConfig {
    /// The default with another width and head count; the head width is split over the RoPE
    /// axes (time, y, x) as 1:3:3 in multiples of 2, as the default's [4, 6, 6].
    pub fn with_width(hidden: usize, heads: usize) -> Result<Self, ConfigError> {
        let mut config = Self::default();
        let head = hidden / heads.max(1);
        if heads == 0 || hidden % heads != 0 || head % 2 != 0 {
            return Err(ConfigError {
                reason: format!("hidden {hidden} must split into {heads} heads of even width"),
            });
        }
        let spatial = (head * 3 / 7) / 2 * 2;
        config.flux.hidden_size = hidden;
        config.flux.num_heads = heads;
        config.flux.axes_dim = vec![head - 2 * spatial, spatial, spatial];
        config.flux.validate()?;
        Ok(config)
    }
}

/// Errors of saving or loading the base model.
#[derive(Debug, thiserror::Error)]
pub enum BaseError {
    #[error(transparent)]
    /// Reading or writing a weights file (names the file and key).
    Weights(#[from] LoadError),
    #[error(transparent)]
    /// The tokenizer or the text encoder.
    Text(#[from] TextError),
    #[error(transparent)]
    /// An invalid transformer config.
    Config(#[from] ConfigError),
    #[error(transparent)]
    /// A forward pass during pretraining.
    Forward(#[from] ForwardError),
    #[error(transparent)]
    /// Sampling images (the transformer's forward or the decode).
    Sample(#[from] PipelineError),
    /// A file of the base folder that cannot be read or written.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    #[error("pretraining config: {0}")]
    /// Pretraining settings that cannot run (what is wrong is said).
    Pretrain(String),
}

/// The base model: FLUX and the text encoder.
#[derive(Module, Debug)]
pub struct SynthBase<B: Backend> {
    /// The FLUX-shaped transformer.
    pub flux: Flux<B>,
    /// Its text encoder (tokens and pooled vector).
    pub text: SynthTextEncoder<B>,
}

/// Folder of the base model shipped with this crate.
pub fn shipped_base_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("base")
}

impl<B: Backend> SynthBase<B> {
    /// A randomly initialised model.
    pub fn init(config: &SynthBaseConfig, device: &B::Device) -> Result<Self, BaseError> {
        let flux = Flux::init(&config.flux, device)?;
        Ok(Self {
            flux,
            text: SynthTextEncoder::init(
                config.flux.context_in_dim,
                config.flux.vec_in_dim,
                device,
            ),
        })
    }

    /// Writes `flux.safetensors`, `text.safetensors`, `tokenizer.json` and `config.json` into
    /// `dir`, each atomically.
    pub fn save(&self, config: &SynthBaseConfig, dir: &Path) -> Result<(), BaseError> {
        let fail = |path: &Path, reason: String| BaseError::File {
            path: path.to_path_buf(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| fail(dir, e.to_string()))?;
        self.flux
            .save(dir.join("flux.safetensors"), SaveDtype::F32)?;
        write_safetensors(
            &dir.join("text.safetensors"),
            &self.text.to_tensors(),
            SaveDtype::F32,
        )?;
        let write_atomic = |name: &str, text: String| -> Result<(), BaseError> {
            let path = dir.join(name);
            write_via_temp(&path, |tmp| {
                std::fs::write(tmp, text).map_err(|e| e.to_string())
            })
            .map_err(|e| fail(&path, e))
        };
        let tokenizer = build_tokenizer().map_err(|e| fail(dir, e))?;
        write_atomic(
            "tokenizer.json",
            tokenizer
                .to_string(true)
                .map_err(|e| fail(dir, e.to_string()))?,
        )?;
        write_atomic(
            "config.json",
            serde_json::to_string_pretty(config).map_err(|e| fail(dir, e.to_string()))?,
        )
    }

    /// Reads a folder written by [`Self::save`].
    pub fn load(dir: &Path, device: &B::Device) -> Result<(Self, SynthBaseConfig), BaseError> {
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).map_err(|e| BaseError::File {
            path: config_path.clone(),
            reason: e.to_string(),
        })?;
        let config: SynthBaseConfig = serde_json::from_str(&text).map_err(|e| BaseError::File {
            path: config_path,
            reason: e.to_string(),
        })?;
        let flux = Flux::load(dir.join("flux.safetensors"), &config.flux, device)?;
        let text = SynthTextEncoder::load(
            &dir.join("text.safetensors"),
            config.flux.context_in_dim,
            config.flux.vec_in_dim,
            device,
        )?;
        Ok((Self { flux, text }, config))
    }

    /// The model shipped with this crate.
    pub fn shipped(device: &B::Device) -> Result<(Self, SynthBaseConfig), BaseError> {
        Self::load(&shipped_base_dir(), device)
    }
}
