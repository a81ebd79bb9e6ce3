//! `premier encode`: every image and caption of a dataset through the encoders once, into a
//! cache that training reads instead of loading the VAE, T5 and CLIP.

use std::path::PathBuf;

use anyhow::Context;
use burn::prelude::*;
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::dataset::DataArgs;
use crate::models::ModelArgs;
use crate::progress::Progress;
use crate::BackendKind;
use premier::encoders::{FluxEncoders, Preprocess};
use premier::synth::base::SynthBase;
use premier::synth::encoders::SynthEncoders;
use premier::synth::text::load_tokenizer;
use premier::train::cache::{weights_fingerprint, EncodedCache};
use premier::train::encode::{encode_dataset, EncodeOptions, Encoders};

/// `premier encode`'s settings (its TOML file; the options override it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EncodeConfig {
    /// Images (or captions) per encoder call.
    pub batch_size: usize,
    /// Encoder calls per shard file (the unit an interrupted encode resumes from).
    pub batches_per_shard: usize,
    /// Side of the square training images (FLUX.1).
    pub resolution: u32,
    /// How an image becomes that square: `resize` (whatever its aspect, as the official
    /// training) or `center-crop`.
    pub preprocess: Preprocess,
    /// More captions to encode (validation prompts); the empty prompt is always encoded.
    pub prompts: Vec<String>,
}

impl Default for EncodeConfig {
    fn default() -> Self {
        Self {
            batch_size: 8,
            batches_per_shard: 16,
            resolution: 512,
            preprocess: Preprocess::Resize,
            prompts: Vec::new(),
        }
    }
}

/// `premier encode`: a dataset's images and captions encoded once into a cache.
#[derive(Debug, Clone, Args)]
pub struct EncodeArgs {
    /// Where the FLUX.1 files (or the synthetic base) are.
    #[command(flatten)]
    pub model: ModelArgs,
    /// The dataset and the cache folder to write.
    #[command(flatten)]
    pub data: DataArgs,
    /// A TOML file of [`EncodeConfig`] fields; the options below override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// More captions to encode (validation prompts), added to the file's.
    #[arg(long = "prompt")]
    pub prompts: Vec<String>,
    /// Images (or captions) per encoder call (default 8).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Encoder calls per shard file, the unit an interrupted encode resumes from (default 16).
    #[arg(long)]
    pub batches_per_shard: Option<usize>,
    /// Side of the square training images (FLUX.1; default 512).
    #[arg(long)]
    pub resolution: Option<u32>,
    /// Resize the shorter side and crop the centre, instead of resizing the whole image to the
    /// square as the official training does (which distorts images that are not square).
    #[arg(long)]
    pub center_crop: bool,
    /// Which backend runs the encoders.
    #[arg(long, value_enum, default_value = "flex")]
    pub backend: BackendKind,
}

impl EncodeArgs {
    /// Defaults, then the TOML file, then the command line.
    pub fn resolve_config(&self) -> anyhow::Result<EncodeConfig> {
        let mut c = crate::dataset::config_file(self.config.as_deref(), EncodeConfig::default())?;
        c.batch_size = self.batch_size.unwrap_or(c.batch_size);
        c.batches_per_shard = self.batches_per_shard.unwrap_or(c.batches_per_shard);
        c.resolution = self.resolution.unwrap_or(c.resolution);
        if self.center_crop {
            c.preprocess = Preprocess::CenterCrop;
        }
        c.prompts.extend(self.prompts.iter().cloned());
        Ok(c)
    }
}

/// Runs `premier encode`.
pub fn run(args: EncodeArgs) -> anyhow::Result<()> {
    match args.backend {
        BackendKind::Flex => encode::<burn::backend::Flex>(args, Default::default()),
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => encode::<burn::backend::Cuda<f32>>(args, Default::default()),
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => encode::<burn::backend::Wgpu>(args, Default::default()),
        #[allow(unreachable_patterns)]
        other => anyhow::bail!(
            "backend {other:?} is not in this build: rebuild with `--features {}`",
            format!("{other:?}").to_lowercase()
        ),
    }
}

fn encode<B: Backend>(args: EncodeArgs, device: B::Device) -> anyhow::Result<()> {
    let config = args.resolve_config()?;
    if args.model.synth_base.is_none() {
        crate::check_side("resolution", config.resolution as usize)?;
    }
    let dataset = args.data.read()?;
    let mut encoders: Box<dyn Encoders> = match &args.model.synth_base {
        Some(dir) => {
            let (base, _) = SynthBase::<B>::load(dir, &device)
                .with_context(|| format!("synth base {}", dir.display()))?;
            Box::new(SynthEncoders {
                text: base.text,
                tokenizer: load_tokenizer(dir)?,
                base_fingerprint: weights_fingerprint(dir)?,
                device,
            })
        }
        None => {
            eprintln!("loading the autoencoder, T5 and CLIP…");
            Box::new(FluxEncoders::<B>::load(
                &args.model.files()?,
                args.model.variant,
                config.resolution,
                config.preprocess,
                &device,
            )?)
        }
    };
    let mut cache = EncodedCache::open(&args.data.cache, true)?;
    let mut extra = vec![String::new()];
    extra.extend(config.prompts.iter().cloned());
    let bar = Progress::new(0, "items");
    let report = encode_dataset(
        &dataset,
        &extra,
        &mut cache,
        encoders.as_mut(),
        &EncodeOptions {
            batch_size: config.batch_size,
            batches_per_shard: config.batches_per_shard,
            skip_bad: args.data.skip_bad,
        },
        &mut |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        },
    )?;
    bar.finish_and_clear();
    println!(
        "{}: encoded {} images and {} captions ({} images and {} captions were already cached){}",
        args.data.cache.display(),
        report.images_encoded,
        report.captions_encoded,
        report.images_cached,
        report.captions_cached,
        if report.skipped.is_empty() && dataset.skipped.is_empty() {
            String::new()
        } else {
            format!(
                "; skipped {} bad entries",
                report.skipped.len() + dataset.skipped.len()
            )
        }
    );
    Ok(())
}
