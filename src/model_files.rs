//! The files of one FLUX.1 model (single files or a diffusers folder), their configs, the checks
//! of their sizes against each other, and their loaders, with errors that name the file.

use std::path::{Path, PathBuf};

use burn::tensor::FloatDType;

use crate::error::{PremierError, SizeAt};
use crate::mmdit::{Flux, FluxConfig, FluxOps, LoadOptions};
use crate::text::{
    ClipTextConfig, ClipTextEncoder, PromptTokenizer, T5Config, T5Encoder, TextEncoder,
};
use crate::vae::{Autoencoder, AutoencoderConfig};

/// FLUX.1 variant: sets the default config, schedule shift, T5 length and step count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Variant {
    /// FLUX.1-dev: guidance-distilled, 28 steps, shifted schedule, 512 T5 tokens.
    #[default]
    Dev,
    /// FLUX.1-schnell: timestep-distilled, 4 steps, unshifted schedule, 256 T5 tokens.
    Schnell,
}

impl Variant {
    /// T5 tokens per prompt.
    pub fn t5_len(self) -> usize {
        match self {
            Variant::Dev => 512,
            Variant::Schnell => 256,
        }
    }

    /// Default sampling steps.
    pub fn steps(self) -> usize {
        match self {
            Variant::Dev => 28,
            Variant::Schnell => 4,
        }
    }

    /// Whether the sampling schedule is shifted with the resolution (dev only).
    pub fn shift(self) -> bool {
        self == Variant::Dev
    }

    /// The transformer's config when no `config.json` says otherwise.
    pub fn flux_config(self) -> FluxConfig {
        match self {
            Variant::Dev => FluxConfig::dev(),
            Variant::Schnell => FluxConfig::schnell(),
        }
    }
}

/// The files of one FLUX.1 model. A part given as a folder is read as diffusers lays it out
/// (`config.json` beside the weights, sharded or not); as a file, as BFL or diffusers keys.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelFiles {
    /// Transformer: BFL `flux1-dev.safetensors` or a diffusers `transformer/` folder.
    pub flux: PathBuf,
    /// Autoencoder: BFL `ae.safetensors` or a diffusers `vae/` folder.
    pub ae: PathBuf,
    /// T5-v1.1-XXL encoder (file or folder of shards).
    pub t5: PathBuf,
    /// CLIP-L text encoder (file or folder).
    pub clip: PathBuf,
    /// T5 `tokenizer.json`; `None`: the one shipped with premier-text.
    pub t5_tokenizer: Option<PathBuf>,
    /// CLIP `tokenizer.json`; `None`: the one shipped with premier-text.
    pub clip_tokenizer: Option<PathBuf>,
}

/// Where a model's parts are as a caller gives them: a diffusers folder, and any part alone
/// (which overrides the folder's).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelPaths {
    /// A diffusers FLUX.1 pipeline folder ([`ModelFiles::from_dir`]).
    pub model_dir: Option<PathBuf>,
    /// The transformer.
    pub flux: Option<PathBuf>,
    /// The autoencoder.
    pub ae: Option<PathBuf>,
    /// T5.
    pub t5: Option<PathBuf>,
    /// CLIP.
    pub clip: Option<PathBuf>,
    /// T5's `tokenizer.json`.
    pub t5_tokenizer: Option<PathBuf>,
    /// CLIP's `tokenizer.json`.
    pub clip_tokenizer: Option<PathBuf>,
}

impl ModelPaths {
    /// Each part given alone, else the folder's; `Err(part)` names the first of `flux`, `ae`,
    /// `t5`, `clip` that neither gives. Tokenizers may be missing (the shipped ones serve).
    pub fn resolve(&self) -> Result<ModelFiles, &'static str> {
        let dir = self.model_dir.as_deref().map(ModelFiles::from_dir);
        let part = |given: &Option<PathBuf>, of_dir: fn(&ModelFiles) -> &PathBuf, name| {
            given
                .clone()
                .or_else(|| dir.as_ref().map(|d| of_dir(d).clone()))
                .ok_or(name)
        };
        let tokenizer = |given: &Option<PathBuf>, of_dir: fn(&ModelFiles) -> &Option<PathBuf>| {
            given
                .clone()
                .or_else(|| dir.as_ref().and_then(|d| of_dir(d).clone()))
        };
        Ok(ModelFiles {
            flux: part(&self.flux, |d| &d.flux, "flux")?,
            ae: part(&self.ae, |d| &d.ae, "ae")?,
            t5: part(&self.t5, |d| &d.t5, "t5")?,
            clip: part(&self.clip, |d| &d.clip, "clip")?,
            t5_tokenizer: tokenizer(&self.t5_tokenizer, |d| &d.t5_tokenizer),
            clip_tokenizer: tokenizer(&self.clip_tokenizer, |d| &d.clip_tokenizer),
        })
    }
}

/// The configs of a model's parts.
#[derive(Debug, Clone)]
pub struct ModelConfigs {
    /// The transformer's.
    pub flux: FluxConfig,
    /// The autoencoder's.
    pub vae: AutoencoderConfig,
    /// T5's.
    pub t5: T5Config,
    /// CLIP's.
    pub clip: ClipTextConfig,
}

/// `config.json` next to (or inside) a model path, if there is one.
pub fn config_beside(path: &Path) -> Option<PathBuf> {
    let dir = if path.is_dir() { path } else { path.parent()? };
    let config = dir.join("config.json");
    config.is_file().then_some(config)
}

impl ModelFiles {
    /// The parts of a diffusers FLUX.1 pipeline folder (`transformer/`, `vae/`, `text_encoder/`,
    /// `text_encoder_2/`, and `tokenizer/`, `tokenizer_2/` where they hold a `tokenizer.json`).
    pub fn from_dir(dir: &Path) -> Self {
        let tokenizer = |sub: &str| {
            let p = dir.join(sub).join("tokenizer.json");
            p.is_file().then_some(p)
        };
        Self {
            flux: dir.join("transformer"),
            ae: dir.join("vae"),
            t5: dir.join("text_encoder_2"),
            clip: dir.join("text_encoder"),
            t5_tokenizer: tokenizer("tokenizer_2"),
            clip_tokenizer: tokenizer("tokenizer"),
        }
    }

    /// The transformer's config: its diffusers `config.json` for a folder, else `variant`'s.
    pub fn flux_config(&self, variant: Variant) -> Result<FluxConfig, PremierError> {
        match config_beside(&self.flux) {
            Some(path) if self.flux.is_dir() => {
                let text = std::fs::read_to_string(&path).map_err(|e| PremierError::Config {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                FluxConfig::from_diffusers_json(&text).map_err(|e| PremierError::Config {
                    path,
                    reason: e.to_string(),
                })
            }
            _ => Ok(variant.flux_config()),
        }
    }

    /// The autoencoder's config: its diffusers `config.json` for a folder, else FLUX.1's.
    pub fn vae_config(&self) -> Result<AutoencoderConfig, PremierError> {
        Ok(match config_beside(&self.ae) {
            Some(c) if self.ae.is_dir() => AutoencoderConfig::from_json_file(c)?,
            _ => AutoencoderConfig::flux(),
        })
    }

    /// T5's config: its `config.json` if there is one, else T5-v1.1-XXL.
    pub fn t5_config(&self) -> Result<T5Config, PremierError> {
        Ok(config_beside(&self.t5)
            .map(T5Config::from_json_file)
            .transpose()?
            .unwrap_or_else(T5Config::v1_1_xxl))
    }

    /// CLIP's config: its `config.json` if there is one, else CLIP ViT-L/14's text tower.
    pub fn clip_config(&self) -> Result<ClipTextConfig, PremierError> {
        Ok(config_beside(&self.clip)
            .map(ClipTextConfig::from_json_file)
            .transpose()?
            .unwrap_or_else(ClipTextConfig::vit_large_patch14))
    }

    /// Every part's config, checked against each other ([`Self::check_sizes`]).
    pub fn configs(&self, variant: Variant) -> Result<ModelConfigs, PremierError> {
        let configs = ModelConfigs {
            flux: self.flux_config(variant)?,
            vae: self.vae_config()?,
            t5: self.t5_config()?,
            clip: self.clip_config()?,
        };
        self.check_sizes(&configs)?;
        Ok(configs)
    }

    /// The transformer reads T5's tokens, CLIP's pooled vector and the VAE's latents (2 × 2
    /// patches): each width must be the one the other file was made with.
    pub fn check_sizes(&self, c: &ModelConfigs) -> Result<(), PremierError> {
        let at = SizeAt::new;
        at(&self.flux, "context_in_dim", c.flux.context_in_dim)
            .must_equal(at(&self.t5, "d_model", c.t5.d_model), "prompt token width")?;
        at(&self.flux, "vec_in_dim", c.flux.vec_in_dim).must_equal(
            at(&self.clip, "hidden_size", c.clip.hidden_size),
            "pooled prompt width",
        )?;
        at(&self.flux, "in_channels", c.flux.in_channels).must_equal(
            at(&self.ae, "4 × latent_channels", 4 * c.vae.latent_channels),
            "latent channels of a 2×2 patch",
        )?;
        Ok(())
    }

    /// The transformer, its weights in `dtype` if given (each tensor cast as it is read).
    pub fn load_flux<B: FluxOps>(
        &self,
        config: &FluxConfig,
        device: &B::Device,
        dtype: Option<FloatDType>,
    ) -> Result<Flux<B>, PremierError> {
        let options = LoadOptions {
            dtype,
            ..LoadOptions::default()
        };
        Ok(Flux::<B>::load_with(&self.flux, config, device, options)?)
    }

    /// The autoencoder.
    pub fn load_vae<B: burn::prelude::Backend>(
        &self,
        config: &AutoencoderConfig,
        device: &B::Device,
    ) -> Result<Autoencoder<B>, PremierError> {
        Ok(Autoencoder::<B>::load(&self.ae, config, device)?)
    }

    /// T5, CLIP and their tokenizers (T5's truncating at `variant`'s length).
    pub fn load_text<B: burn::prelude::Backend>(
        &self,
        configs: &ModelConfigs,
        variant: Variant,
        device: &B::Device,
    ) -> Result<TextEncoder<B>, PremierError> {
        let t5 = T5Encoder::<B>::load(&self.t5, &configs.t5, device)?;
        let clip = ClipTextEncoder::<B>::load(&self.clip, &configs.clip, device)?;
        let t5_tokenizer = match &self.t5_tokenizer {
            Some(p) => PromptTokenizer::t5(p, variant.t5_len())?,
            None => PromptTokenizer::shipped_t5(variant.t5_len())?,
        };
        let clip_tokenizer = match &self.clip_tokenizer {
            Some(p) => PromptTokenizer::clip(p)?,
            None => PromptTokenizer::shipped_clip()?,
        };
        Ok(TextEncoder::new(t5, clip, t5_tokenizer, clip_tokenizer))
    }
}
