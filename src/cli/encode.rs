//! `premier encode`: every image and caption of a dataset through the encoders once, into a
//! cache that training reads instead of loading the VAE, T5 and CLIP.

use anyhow::Context;
use burn::prelude::*;
use clap::Args;

use super::dataset::{progress_bar, DataArgs};
use super::models::ModelArgs;
use super::BackendKind;
use crate::encoders::FluxEncoders;
use crate::synth::base::SynthBase;
use crate::synth::encoders::SynthEncoders;
use crate::synth::text::load_tokenizer;
use crate::train::cache::EncodedCache;
use crate::train::encode::{encode_dataset, EncodeOptions, Encoders};

#[derive(Debug, Clone, Args)]
pub struct EncodeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub data: DataArgs,
    /// More captions to encode (validation prompts); the empty prompt is always encoded.
    #[arg(long = "prompt")]
    pub prompts: Vec<String>,
    /// Images (or captions) per encoder call.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Encoder calls per shard file (the unit an interrupted encode resumes from).
    #[arg(long, default_value_t = 16)]
    pub batches_per_shard: usize,
    /// Side of the square training images (FLUX.1; resized and center-cropped).
    #[arg(long, default_value_t = 512)]
    pub resolution: u32,
    #[arg(long, value_enum, default_value = "flex")]
    pub backend: BackendKind,
}

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
    let dataset = args.data.read()?;
    let mut encoders: Box<dyn Encoders> = match &args.model.synth_base {
        Some(dir) => {
            let (base, _) = SynthBase::<B>::load(dir, &device)
                .with_context(|| format!("synth base {}", dir.display()))?;
            Box::new(SynthEncoders {
                text: base.text,
                tokenizer: load_tokenizer(dir)?,
                device,
            })
        }
        None => {
            eprintln!("loading the autoencoder, T5 and CLIP…");
            let (vae, vae_config) = args.model.load_vae::<B>(&device)?;
            let (t5, clip, t5_tokenizer, clip_tokenizer) = args.model.load_text::<B>(&device)?;
            Box::new(FluxEncoders {
                vae,
                vae_config,
                t5,
                clip,
                t5_tokenizer,
                clip_tokenizer,
                resolution: args.resolution,
                device,
            })
        }
    };
    let mut cache = EncodedCache::open(&args.data.cache, true)?;
    let mut extra = vec![String::new()];
    extra.extend(args.prompts.iter().cloned());
    let bar = progress_bar(0, "items");
    let report = encode_dataset(
        &dataset,
        &extra,
        &mut cache,
        encoders.as_mut(),
        &EncodeOptions {
            batch_size: args.batch_size,
            batches_per_shard: args.batches_per_shard,
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
