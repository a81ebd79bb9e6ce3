//! Which model the commands run: FLUX.1 files (single files or diffusers folders) or the synthetic
//! world's base model, whose codec and text encoder stand in for the VAE, T5 and CLIP.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use burn::prelude::*;
use clap::{Args, ValueEnum};
use image::RgbImage;

use burn::tensor::FloatDType;

use super::{BackendKind, Precision};
use crate::mmdit::{
    img_ids, pack, txt_ids, unpack, Flux, FluxConfig, FluxOps, LoadOptions, TextModulation,
};
use crate::pipeline::image_io::tensor_to_rgb;
use crate::pipeline::{denoise, schedule, seeded_noise};
use crate::synth::base::SynthBase;
use crate::text::{
    ClipTextConfig, ClipTextEncoder, PromptTokenizer, T5Config, T5Encoder, TextConditioning,
};
use crate::vae::{unscale_latent, Autoencoder, AutoencoderConfig};

/// FLUX.1 variant: sets the default config, schedule shift, T5 length and step count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Variant {
    Dev,
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
}

/// Where the model files are.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// The synthetic world's base model folder (`crates/premier-synth/base`), instead of FLUX.1
    /// files: its codec and text encoder replace the VAE, T5 and CLIP.
    #[arg(long, conflicts_with_all = ["model_dir", "flux", "ae", "t5", "clip"])]
    pub synth_base: Option<PathBuf>,
    /// A diffusers FLUX.1 folder (transformer/, vae/, text_encoder/, text_encoder_2/, tokenizer/,
    /// tokenizer_2/); the single-path options below override its parts.
    #[arg(long)]
    pub model_dir: Option<PathBuf>,
    /// Transformer: BFL `flux1-dev.safetensors` or a diffusers transformer folder.
    #[arg(long)]
    pub flux: Option<PathBuf>,
    /// Autoencoder: BFL `ae.safetensors` or a diffusers vae folder.
    #[arg(long)]
    pub ae: Option<PathBuf>,
    /// T5-v1.1-XXL encoder (file or folder of shards).
    #[arg(long)]
    pub t5: Option<PathBuf>,
    /// CLIP-L text encoder (file or folder).
    #[arg(long)]
    pub clip: Option<PathBuf>,
    /// T5 tokenizer.json (default: the one shipped with premier-text).
    #[arg(long)]
    pub t5_tokenizer: Option<PathBuf>,
    /// CLIP tokenizer.json (default: the one shipped with premier-text).
    #[arg(long)]
    pub clip_tokenizer: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "dev")]
    pub variant: Variant,
}

/// The files of one FLUX.1 model, resolved from `--model-dir` and the single-path options.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelFiles {
    pub flux: PathBuf,
    pub ae: PathBuf,
    pub t5: PathBuf,
    pub clip: PathBuf,
    pub t5_tokenizer: Option<PathBuf>,
    pub clip_tokenizer: Option<PathBuf>,
}

impl ModelFiles {
    pub fn resolve(args: &ModelArgs) -> anyhow::Result<Self> {
        let part = |given: &Option<PathBuf>, sub: &str, flag: &str| -> anyhow::Result<PathBuf> {
            match (given, &args.model_dir) {
                (Some(p), _) => Ok(p.clone()),
                (None, Some(dir)) => Ok(dir.join(sub)),
                (None, None) => bail!("give --model-dir or --{flag} (or --synth-base)"),
            }
        };
        let tokenizer = |given: &Option<PathBuf>, sub: &str| {
            given.clone().or_else(|| {
                let p = args.model_dir.as_ref()?.join(sub).join("tokenizer.json");
                p.is_file().then_some(p)
            })
        };
        Ok(Self {
            flux: part(&args.flux, "transformer", "flux")?,
            ae: part(&args.ae, "vae", "ae")?,
            t5: part(&args.t5, "text_encoder_2", "t5")?,
            clip: part(&args.clip, "text_encoder", "clip")?,
            t5_tokenizer: tokenizer(&args.t5_tokenizer, "tokenizer_2"),
            clip_tokenizer: tokenizer(&args.clip_tokenizer, "tokenizer"),
        })
    }
}

/// `config.json` next to (or inside) a model path, if there is one.
pub fn config_beside(path: &Path) -> Option<PathBuf> {
    let dir = if path.is_dir() { path } else { path.parent()? };
    let config = dir.join("config.json");
    config.is_file().then_some(config)
}

impl ModelArgs {
    pub fn is_synth(&self) -> bool {
        self.synth_base.is_some()
    }

    /// The transformer's config: from a diffusers `config.json`, else the variant's.
    pub fn flux_config(&self, files: &ModelFiles) -> anyhow::Result<FluxConfig> {
        Ok(match config_beside(&files.flux) {
            Some(c) if files.flux.is_dir() => {
                FluxConfig::from_diffusers_json(&std::fs::read_to_string(&c)?)?
            }
            _ => match self.variant {
                Variant::Dev => FluxConfig::dev(),
                Variant::Schnell => FluxConfig::schnell(),
            },
        })
    }

    /// The backbone's config without loading it: the synth base's `config.json`, else
    /// [`Self::flux_config`].
    pub fn backbone_config(&self) -> anyhow::Result<FluxConfig> {
        if let Some(dir) = &self.synth_base {
            let path = dir.join("config.json");
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("synth base config {}", path.display()))?;
            let config: crate::synth::base::SynthBaseConfig = serde_json::from_str(&text)
                .with_context(|| format!("synth base config {}", path.display()))?;
            return Ok(config.flux);
        }
        self.flux_config(&ModelFiles::resolve(self)?)
    }

    pub fn vae_config(&self, files: &ModelFiles) -> anyhow::Result<AutoencoderConfig> {
        Ok(match config_beside(&files.ae) {
            Some(c) if files.ae.is_dir() => AutoencoderConfig::from_json_file(c)?,
            _ => AutoencoderConfig::flux(),
        })
    }

    /// The transformer alone (what training needs), its weights in `dtype` if given (each
    /// tensor cast as it is read).
    pub fn load_flux<B: Backend>(
        &self,
        device: &B::Device,
        dtype: Option<FloatDType>,
    ) -> anyhow::Result<Flux<B>> {
        if let Some(dir) = &self.synth_base {
            let (base, _) = SynthBase::<B>::load(dir, device)
                .with_context(|| format!("synth base {}", dir.display()))?;
            return Ok(match dtype {
                Some(dtype) => base.flux.with_weight_dtype(dtype),
                None => base.flux,
            });
        }
        let files = ModelFiles::resolve(self)?;
        let options = LoadOptions {
            dtype,
            ..LoadOptions::default()
        };
        Ok(Flux::<B>::load_with(
            &files.flux,
            &self.flux_config(&files)?,
            device,
            options,
        )?)
    }

    /// The autoencoder and its config (validation images and generation decode with it).
    pub fn load_vae<B: Backend>(
        &self,
        device: &B::Device,
    ) -> anyhow::Result<(Autoencoder<B>, AutoencoderConfig)> {
        let files = ModelFiles::resolve(self)?;
        let config = self.vae_config(&files)?;
        Ok((Autoencoder::<B>::load(&files.ae, &config, device)?, config))
    }

    /// T5's config: its `config.json` if there is one, else T5-v1.1-XXL.
    pub fn t5_config(&self, files: &ModelFiles) -> anyhow::Result<T5Config> {
        Ok(config_beside(&files.t5)
            .map(T5Config::from_json_file)
            .transpose()?
            .unwrap_or_else(T5Config::v1_1_xxl))
    }

    /// T5, CLIP and their tokenizers.
    pub fn load_text<B: Backend>(
        &self,
        device: &B::Device,
    ) -> anyhow::Result<(
        T5Encoder<B>,
        ClipTextEncoder<B>,
        PromptTokenizer,
        PromptTokenizer,
    )> {
        let files = ModelFiles::resolve(self)?;
        let t5_config = self.t5_config(&files)?;
        let clip_config = config_beside(&files.clip)
            .map(ClipTextConfig::from_json_file)
            .transpose()?
            .unwrap_or_else(ClipTextConfig::vit_large_patch14);
        let t5 = T5Encoder::<B>::load(&files.t5, &t5_config, device)?;
        let clip = ClipTextEncoder::<B>::load(&files.clip, &clip_config, device)?;
        let t5_len = self.variant.t5_len();
        let t5_tokenizer = match &files.t5_tokenizer {
            Some(p) => PromptTokenizer::t5(p, t5_len)?,
            None => PromptTokenizer::shipped_t5(t5_len)?,
        };
        let clip_tokenizer = match &files.clip_tokenizer {
            Some(p) => PromptTokenizer::clip(p)?,
            None => PromptTokenizer::shipped_clip()?,
        };
        Ok((t5, clip, t5_tokenizer, clip_tokenizer))
    }
}

/// Draws images from text features (and Δ), however the model turns latents into pixels.
pub enum ImageSampler<B: Backend> {
    /// The synthetic world: its codec, 12 steps, no guidance, unshifted schedule.
    Synth,
    /// FLUX.1: the autoencoder; `side`×`side` images.
    Flux {
        vae: Box<Autoencoder<B>>,
        config: AutoencoderConfig,
        side: usize,
        steps: usize,
        guidance: f32,
        shift: bool,
    },
}

impl<B: FluxOps> ImageSampler<B> {
    /// The sampler of `model` (loads the autoencoder for FLUX.1).
    pub fn for_model(
        model: &ModelArgs,
        side: usize,
        steps: Option<usize>,
        guidance: f32,
        device: &B::Device,
    ) -> anyhow::Result<Self> {
        if model.is_synth() {
            return Ok(Self::Synth);
        }
        let (vae, config) = model.load_vae::<B>(device)?;
        Ok(Self::Flux {
            vae: Box::new(vae),
            config,
            side,
            steps: steps.unwrap_or(model.variant.steps()),
            guidance,
            shift: model.variant == Variant::Dev,
        })
    }

    /// One image per row of `text` (and of `delta`), from the noise of `seeds[i]`.
    pub fn sample(
        &self,
        flux: &Flux<B>,
        text: &TextConditioning<B>,
        delta: Option<&TextModulation<B>>,
        seeds: &[u64],
    ) -> anyhow::Result<Vec<RgbImage>> {
        match self {
            Self::Synth => Ok(crate::synth::sample::sample(
                flux,
                text,
                delta,
                seeds,
                crate::synth::sample::SAMPLING_STEPS,
            )?),
            Self::Flux {
                vae,
                config,
                side,
                steps,
                guidance,
                shift,
            } => {
                let device = text.tokens.device();
                let n = seeds.len();
                let factor = config.downsampling();
                let (h, w) = (side / factor, side / factor);
                let noise = seeded_noise::<B>(seeds, config.latent_channels, h, w, &device);
                let latent = denoise(
                    flux,
                    pack(noise),
                    img_ids(n, h, w, &device),
                    text.tokens.clone(),
                    txt_ids(n, text.tokens.dims()[1], &device),
                    text.pooled.clone(),
                    Some(Tensor::full([n], *guidance, &device)),
                    &schedule(*steps, (h / 2) * (w / 2), *shift),
                    delta,
                    &mut (),
                )?;
                let pixels = vae.try_decode(unscale_latent(unpack(latent, h, w), config))?;
                Ok(tensor_to_rgb(pixels))
            }
        }
    }
}

/// Float type of the frozen backbone's weights: as asked, else bf16 on CUDA and the backend's
/// default elsewhere.
pub fn backbone_dtype(asked: Option<Precision>, backend: BackendKind) -> Option<FloatDType> {
    let bf16 = match asked {
        Some(p) => p == Precision::Bf16,
        None => backend == BackendKind::Cuda,
    };
    bf16.then_some(FloatDType::BF16)
}
