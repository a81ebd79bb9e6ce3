//! `premier encode`'s loop: every image and caption of a dataset through the encoders once, into
//! an [`EncodedCache`]. Entries already in the cache are skipped, so an interrupted encode resumes
//! where its last complete shard ended.
//!
//! The encoders are a trait so the loop serves FLUX's VAE + T5 + CLIP and the synthetic world's
//! codec and text encoder alike.

use std::collections::BTreeSet;
use std::path::PathBuf;

use image::RgbImage;
use premier_io::HostTensor;

use crate::cache::{
    caption_hash, image_hash, CacheError, CachedLatent, CachedText, EncodedCache, EncoderIdentity,
};
use crate::data::Dataset;

/// Turns images and captions into what training reads.
pub trait Encoders {
    /// Posteriors of `images` in the backbone's latent space (already shifted and scaled, so
    /// `mean + exp(logvar / 2) · ε` is what FLUX is trained on), `[channels, h, w]` each.
    fn encode_images(&mut self, images: &[RgbImage]) -> Result<Vec<CachedLatent>, String>;
    /// T5 tokens `[txt_tokens, text_dim]` and CLIP pooled `[vec_dim]` of each caption.
    fn encode_captions(&mut self, captions: &[String]) -> Result<Vec<CachedText>, String>;
    /// What these encoders are (weights, configs, resolution, preprocessing), recorded in the
    /// cache so that a cache is never extended by other encoders.
    fn identity(&self) -> EncoderIdentity;
}

/// How the loop runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncodeOptions {
    /// Images (or captions) per encoder call.
    pub batch_size: usize,
    /// Encoder calls per shard file: the unit of resumption.
    pub batches_per_shard: usize,
    /// An image that cannot be read is a warning and a count instead of an error.
    pub skip_bad: bool,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        Self {
            batch_size: 8,
            batches_per_shard: 16,
            skip_bad: false,
        }
    }
}

fn all_finite(t: &premier_io::HostTensor) -> bool {
    t.data.iter().all(|x| x.is_finite())
}

/// What an encode did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncodeReport {
    /// Images run through the image encoder.
    pub images_encoded: usize,
    /// Already in the cache (an earlier or interrupted run), or the same file twice.
    pub images_cached: usize,
    /// Captions run through the text encoders.
    pub captions_encoded: usize,
    /// Captions already in the cache, or the same caption twice.
    pub captions_cached: usize,
    /// Images skipped with `skip_bad`: "path: reason".
    pub skipped: Vec<String>,
}

/// Errors of the encode loop.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// Reading or writing the cache failed.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// An image could not be read, or its latent is not finite.
    #[error("{path}: {reason}")]
    Image {
        /// The image file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// An encoder failed or returned bad output; the message says why.
    #[error("encoder: {0}")]
    Encoder(String),
}

/// `[batch, …]` on a device → one host tensor `[…]` per row (how encoders hand back a batch).
pub fn split_rows<B: burn::prelude::Backend, const D: usize>(
    t: burn::prelude::Tensor<B, D>,
) -> Vec<HostTensor> {
    let all = HostTensor::from_tensor(t);
    let n = all.shape[0];
    let per = all.data.len() / n.max(1);
    (0..n)
        .map(|i| HostTensor {
            shape: all.shape[1..].to_vec(),
            data: all.data[i * per..(i + 1) * per].to_vec(),
        })
        .collect()
}

/// An encoder must return one output per input.
fn one_each(got: usize, given: usize, outputs: &str, inputs: &str) -> Result<(), EncodeError> {
    if got == given {
        Ok(())
    } else {
        Err(EncodeError::Encoder(format!(
            "{got} {outputs} for {given} {inputs}"
        )))
    }
}

/// Reads an image file as RGB.
pub fn read_rgb(path: &std::path::Path) -> Result<RgbImage, EncodeError> {
    image::open(path)
        .map(|i| i.to_rgb8())
        .map_err(|e| EncodeError::Image {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

/// Encodes the images and captions of `dataset`, plus `extra_captions` (the empty prompt for the
/// dispersion loss, validation prompts), that `cache` lacks. `progress(done, total)` counts
/// items (images then captions).
pub fn encode_dataset(
    dataset: &Dataset,
    extra_captions: &[String],
    cache: &mut EncodedCache,
    encoders: &mut dyn Encoders,
    options: &EncodeOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<EncodeReport, EncodeError> {
    cache.claim(&encoders.identity())?;
    let mut report = EncodeReport::default();
    let batch = options.batch_size.max(1);
    let per_shard = batch * options.batches_per_shard.max(1);

    // Unique images by content; unreadable files are found here, before any encoding.
    let mut todo_images: Vec<(String, PathBuf)> = Vec::new();
    let mut seen = BTreeSet::new();
    for sample in dataset.users.iter().flat_map(|u| &u.samples) {
        let hash = match image_hash(&sample.image) {
            Ok(h) => h,
            Err(e) if options.skip_bad => {
                tracing::warn!("skipping: {e}");
                report.skipped.push(e.to_string());
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if cache.has_image(&hash) || !seen.insert(hash.clone()) {
            report.images_cached += 1;
        } else {
            todo_images.push((hash, sample.image.clone()));
        }
    }
    let mut todo_captions: Vec<(String, String)> = Vec::new();
    let mut seen = BTreeSet::new();
    let captions = dataset
        .users
        .iter()
        .flat_map(|u| u.samples.iter().map(|s| s.caption.clone()))
        .chain(extra_captions.iter().cloned());
    for caption in captions {
        let hash = caption_hash(&caption);
        if cache.has_caption(&hash) || !seen.insert(hash.clone()) {
            report.captions_cached += 1;
        } else {
            todo_captions.push((hash, caption));
        }
    }

    let total = todo_images.len() + todo_captions.len();
    let mut done = 0;
    progress(done, total);
    for shard in todo_images.chunks(per_shard) {
        let mut entries = Vec::with_capacity(shard.len());
        for chunk in shard.chunks(batch) {
            let mut images = Vec::with_capacity(chunk.len());
            let mut hashes = Vec::with_capacity(chunk.len());
            let mut paths = Vec::with_capacity(chunk.len());
            for (hash, path) in chunk {
                match read_rgb(path) {
                    Ok(rgb) => {
                        images.push(rgb);
                        hashes.push(hash.clone());
                        paths.push(path);
                    }
                    Err(e) if options.skip_bad => {
                        tracing::warn!("skipping: {e}");
                        report.skipped.push(e.to_string());
                    }
                    Err(e) => return Err(e),
                }
            }
            if !images.is_empty() {
                let latents = encoders
                    .encode_images(&images)
                    .map_err(EncodeError::Encoder)?;
                one_each(latents.len(), images.len(), "latents", "images")?;
                // Caught here, where the image is known, not at the cache's writer.
                if let Some(i) = latents
                    .iter()
                    .position(|l| !all_finite(&l.mean) || !all_finite(&l.logvar))
                {
                    return Err(EncodeError::Image {
                        path: paths[i].clone(),
                        reason: "its latent holds NaN or infinite values (the autoencoder's \
                                 weights?); nothing of this shard was written"
                            .into(),
                    });
                }
                report.images_encoded += latents.len();
                entries.extend(hashes.into_iter().zip(latents));
            }
            done += chunk.len();
            progress(done, total);
        }
        cache.add_latents(entries)?;
    }
    for shard in todo_captions.chunks(per_shard) {
        let mut entries = Vec::with_capacity(shard.len());
        for chunk in shard.chunks(batch) {
            let captions: Vec<String> = chunk.iter().map(|(_, c)| c.clone()).collect();
            let texts = encoders
                .encode_captions(&captions)
                .map_err(EncodeError::Encoder)?;
            one_each(texts.len(), captions.len(), "text features", "captions")?;
            if let Some(i) = texts
                .iter()
                .position(|t| !all_finite(&t.tokens) || !all_finite(&t.pooled))
            {
                return Err(EncodeError::Encoder(format!(
                    "caption {:?}: its text features hold NaN or infinite values (the text \
                     encoders' weights?); nothing of this shard was written",
                    captions[i]
                )));
            }
            report.captions_encoded += texts.len();
            entries.extend(chunk.iter().map(|(h, _)| h.clone()).zip(texts));
            done += chunk.len();
            progress(done, total);
        }
        cache.add_texts(entries)?;
    }
    Ok(report)
}
