//! Which model the commands run: FLUX.1 files (single files or diffusers folders) or the synthetic
//! world's base model, whose codec and text encoder stand in for the VAE, T5 and CLIP.

use std::path::PathBuf;

use anyhow::Context;
use burn::prelude::*;
use clap::Args;
use image::RgbImage;

use burn::tensor::FloatDType;

use crate::{BackendKind, Precision};
use premier::mmdit::{Flux, FluxConfig, FluxOps, TextModulation};
use premier::model_files::{ModelFiles, ModelPaths, Variant};
use premier::pipeline::image_io::tensor_to_rgb;
use premier::pipeline::{denoise_latents, LatentCodec, Sampling, VaeCodec};
use premier::synth::base::SynthBase;
use premier::synth::codec::PatchCodec;
use premier::text::{TextConditioning, TextEncoder};
use premier::vae::{Autoencoder, AutoencoderConfig};

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
    /// Which FLUX.1 model the files are (sets the sizes and the default steps).
    #[arg(long, value_enum, default_value = "dev")]
    pub variant: Variant,
}

impl ModelArgs {
    /// The model files from `--model-dir` and the single-path options (which override the
    /// folder's parts).
    pub fn files(&self) -> anyhow::Result<ModelFiles> {
        let paths = ModelPaths {
            model_dir: self.model_dir.clone(),
            flux: self.flux.clone(),
            ae: self.ae.clone(),
            t5: self.t5.clone(),
            clip: self.clip.clone(),
            t5_tokenizer: self.t5_tokenizer.clone(),
            clip_tokenizer: self.clip_tokenizer.clone(),
        };
        paths
            .resolve()
            .map_err(|flag| anyhow::anyhow!("give --model-dir or --{flag} (or --synth-base)"))
    }

    /// Whether the synthetic base replaces the FLUX.1 files.
    pub fn is_synth(&self) -> bool {
        self.synth_base.is_some()
    }

    /// The backbone's config without loading it: the synth base's `config.json`, else the
    /// FLUX.1 files'.
    pub fn backbone_config(&self) -> anyhow::Result<FluxConfig> {
        if let Some(dir) = &self.synth_base {
            let path = dir.join("config.json");
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("synth base config {}", path.display()))?;
            let config: premier::synth::base::SynthBaseConfig = serde_json::from_str(&text)
                .with_context(|| format!("synth base config {}", path.display()))?;
            return Ok(config.flux);
        }
        Ok(self.files()?.flux_config(self.variant)?)
    }

    /// The transformer alone (what training needs), its weights in `dtype` if given (each
    /// tensor cast as it is read).
    pub fn load_flux<B: FluxOps>(
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
        let files = self.files()?;
        Ok(files.load_flux(&files.flux_config(self.variant)?, device, dtype)?)
    }

    /// The autoencoder and its config (validation images and generation decode with it).
    pub fn load_vae<B: Backend>(
        &self,
        device: &B::Device,
    ) -> anyhow::Result<(Autoencoder<B>, AutoencoderConfig)> {
        let files = self.files()?;
        let config = files.vae_config()?;
        Ok((files.load_vae(&config, device)?, config))
    }

    /// T5, CLIP and their tokenizers, the sizes of every part checked against each other.
    pub fn load_text<B: Backend>(&self, device: &B::Device) -> anyhow::Result<TextEncoder<B>> {
        let files = self.files()?;
        Ok(files.load_text(&files.configs(self.variant)?, self.variant, device)?)
    }
}

/// Draws images from text features (and Δ), however the model turns latents into pixels: the
/// pipeline's one noise → denoise → decode path on the model's codec.
pub struct ImageSampler<B: Backend> {
    /// The codec: the synth world's patches or FLUX.1's autoencoder.
    codec: Codec<B>,
    /// Image side in pixels.
    side: usize,
    /// Sampling steps.
    steps: usize,
    /// Distilled guidance (dev).
    guidance: f32,
    /// Whether the schedule is shifted by resolution (dev: yes; schnell: no).
    shift: bool,
}

/// The codec an [`ImageSampler`] decodes with.
enum Codec<B: Backend> {
    /// The synthetic world's pixel patches.
    Patches,
    /// FLUX.1's autoencoder and its config.
    Vae(Box<Autoencoder<B>>, AutoencoderConfig),
}

impl<B: FluxOps> ImageSampler<B> {
    /// The sampler of `model` (loads the autoencoder for FLUX.1). The synthetic world draws its
    /// own size in its own steps, unshifted, without guidance.
    pub fn for_model(
        model: &ModelArgs,
        side: usize,
        steps: Option<usize>,
        guidance: f32,
        device: &B::Device,
    ) -> anyhow::Result<Self> {
        if model.is_synth() {
            return Ok(Self {
                codec: Codec::Patches,
                side: premier::synth::world::IMAGE_SIZE,
                steps: premier::synth::sample::SAMPLING_STEPS,
                guidance: 0.0,
                shift: false,
            });
        }
        let (vae, config) = model.load_vae::<B>(device)?;
        Ok(Self {
            codec: Codec::Vae(Box::new(vae), config),
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
        let sampling = Sampling {
            seeds,
            width: self.side,
            height: self.side,
            steps: self.steps,
            guidance: self.guidance,
            shift: self.shift,
        };
        let codec: Box<dyn LatentCodec<B> + '_> = match &self.codec {
            Codec::Patches => Box::new(PatchCodec),
            Codec::Vae(vae, config) => Box::new(VaeCodec {
                vae,
                config,
                tiling: None,
            }),
        };
        let latent = denoise_latents(flux, &sampling, codec.space(), text, delta, &mut ())?;
        Ok(tensor_to_rgb(codec.decode(latent)?))
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
