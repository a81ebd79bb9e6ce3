//! Training batches from an encoder cache: a dataset's users with the cache keys of their images
//! and captions, and per step the posterior samples and text features as tensors.

use std::path::Path;

use burn::prelude::*;
use premier_io::HostTensor;
use premier_mmdit::pack;
use rand::SeedableRng;
use rand_distr::Distribution as _;

use crate::cache::{caption_hash, image_hash, CacheError, CachedLatent, CachedText, EncodedCache};
use crate::data::Dataset;

/// Encoded images and captions of a batch.
#[derive(Debug, Clone)]
pub struct EncodedBatch<B: Backend> {
    /// Packed latents sampled from the posteriors: `[batch, img_tokens, 4 · channels]`.
    pub x0: Tensor<B, 3>,
    /// Latent height and width before packing.
    pub latent_hw: (usize, usize),
    /// `[batch, txt_tokens, text_dim]`.
    pub text: Tensor<B, 3>,
    /// `[batch, vec_dim]`.
    pub pooled: Tensor<B, 2>,
}

/// A dataset's users resolved to cache keys.
pub struct CachedUsers {
    /// User ids in table-row order.
    pub ids: Vec<String>,
    /// Per user: (image hash, caption hash) of each sample.
    pub samples: Vec<Vec<(String, String)>>,
    /// Per user: the captions, in sample order (validation prompts come from here).
    pub captions: Vec<Vec<String>>,
    cache: EncodedCache,
}

/// `parts` (one shape) stacked along a new first axis: the shape and the values.
fn stack(
    parts: &[&HostTensor],
    what: &str,
    cache: &Path,
) -> Result<(Vec<usize>, Vec<f32>), CacheError> {
    let fail = |reason: String| CacheError::Io {
        path: cache.to_path_buf(),
        reason,
    };
    let Some(first) = parts.first() else {
        return Err(fail(format!("no {what} to batch")));
    };
    let shape = first.shape.clone();
    let mut data = Vec::with_capacity(parts.len() * first.data.len());
    for p in parts {
        if p.shape != shape {
            return Err(fail(format!(
                "{what} of shapes {:?} and {:?} in one batch",
                shape, p.shape
            )));
        }
        data.extend_from_slice(&p.data);
    }
    let mut dims = vec![parts.len()];
    dims.extend(shape);
    Ok((dims, data))
}

/// What one training sample of a cache holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampleDims {
    /// Channels of the (unpacked) latent; a packed token holds 4 × as many.
    pub latent_channels: usize,
    /// Packed image tokens.
    pub img_tokens: usize,
    /// T5 tokens of a caption.
    pub txt_tokens: usize,
    /// Width of a T5 token, and of the pooled CLIP vector.
    pub text_dim: usize,
    /// Width of the pooled CLIP vector.
    pub pooled_dim: usize,
}

impl CachedUsers {
    /// Hashes every image of `dataset` and checks that it and its caption are in `cache`
    /// (an error names the first file or caption missing).
    pub fn new(dataset: &Dataset, mut cache: EncodedCache) -> Result<Self, CacheError> {
        let mut samples = Vec::with_capacity(dataset.users.len());
        let mut captions = Vec::with_capacity(dataset.users.len());
        for user in &dataset.users {
            let mut keys = Vec::with_capacity(user.samples.len());
            for s in &user.samples {
                let image = image_hash(&s.image)?;
                if !cache.has_image(&image) {
                    return Err(CacheError::Missing {
                        cache: cache.dir().to_path_buf(),
                        what: "image",
                        hash: format!("{image} ({})", s.image.display()),
                    });
                }
                let caption = caption_hash(&s.caption);
                if !cache.has_caption(&caption) {
                    return Err(CacheError::Missing {
                        cache: cache.dir().to_path_buf(),
                        what: "caption",
                        hash: format!("{caption} ({:?})", s.caption),
                    });
                }
                keys.push((image, caption));
            }
            samples.push(keys);
            captions.push(user.samples.iter().map(|s| s.caption.clone()).collect());
        }
        // Opening a shard maps it; fail here rather than mid-run on a damaged cache.
        if let Some((image, caption)) = samples.iter().flatten().next() {
            let latent = cache.latent(image)?;
            cache.text(caption)?;
            let shape = &latent.mean.shape;
            if shape.len() != 3 || shape[1] % 2 != 0 || shape[2] % 2 != 0 {
                return Err(CacheError::Io {
                    path: cache.dir().to_path_buf(),
                    reason: format!(
                        "latents must be [channels, h, w] with even h and w, found {shape:?}"
                    ),
                });
            }
        }
        Ok(Self {
            ids: dataset.users.iter().map(|u| u.id.clone()).collect(),
            samples,
            captions,
            cache,
        })
    }

    /// The sizes of the first sample (every sample of a cache has the same: one resolution,
    /// one prompt length, one set of encoders); `None` for an empty dataset.
    pub fn sample_dims(&mut self) -> Result<Option<SampleDims>, CacheError> {
        let Some((image, caption)) = self.samples.iter().flatten().next().cloned() else {
            return Ok(None);
        };
        let latent = self.cache.latent(&image)?;
        let text = self.cache.text(&caption)?;
        let (c, h, w) = (
            latent.mean.shape[0],
            latent.mean.shape[1],
            latent.mean.shape[2],
        );
        Ok(Some(SampleDims {
            latent_channels: c,
            img_tokens: (h / 2) * (w / 2),
            txt_tokens: text.tokens.shape[0],
            text_dim: text.tokens.shape[1],
            pooled_dim: text.pooled.shape[0],
        }))
    }

    /// The cache these samples are read from.
    pub fn cache_dir(&self) -> &std::path::Path {
        self.cache.dir()
    }

    /// A hash of the users and their samples' cache keys, in order: equal exactly when a run
    /// would draw the same batches from both.
    pub fn fingerprint(&self) -> String {
        let mut text = String::new();
        for (id, samples) in self.ids.iter().zip(&self.samples) {
            text.push_str(&format!("{id:?}:"));
            for (image, caption) in samples {
                text.push_str(&format!("{image},{caption};"));
            }
            text.push('\n');
        }
        crate::cache::content_hash(text.as_bytes())
    }

    /// A hash of one user's samples' cache keys, in order (what a cold start of the user
    /// depends on).
    pub fn user_fingerprint(&self, user: usize) -> String {
        let mut text = String::new();
        for (image, caption) in self.samples.get(user).into_iter().flatten() {
            text.push_str(&format!("{image},{caption};"));
        }
        crate::cache::content_hash(text.as_bytes())
    }

    /// The batch of `(user, sample)` picks, each latent drawn from its posterior with the noise
    /// of `seed` (so a step's batch is the same whenever it is replayed).
    pub fn batch<B: Backend>(
        &mut self,
        picks: &[(usize, usize)],
        seed: u64,
        device: &B::Device,
    ) -> Result<EncodedBatch<B>, CacheError> {
        let mut latents = Vec::with_capacity(picks.len());
        let mut texts = Vec::with_capacity(picks.len());
        for &(u, i) in picks {
            let (image, caption) = &self.samples[u][i];
            latents.push(self.cache.latent(image)?);
            texts.push(self.cache.text(caption)?);
        }
        let latents: Vec<&CachedLatent> = latents.iter().collect();
        let texts: Vec<&CachedText> = texts.iter().collect();
        posterior_batch(&latents, &texts, seed, self.cache.dir(), device)
    }

    /// Features of one caption (which must be in the cache): tokens `[1, txt_tokens, text_dim]`
    /// and pooled `[1, vec_dim]`.
    pub fn text<B: Backend>(
        &mut self,
        caption: &str,
        device: &B::Device,
    ) -> Result<(Tensor<B, 3>, Tensor<B, 2>), CacheError> {
        let hash = caption_hash(caption);
        let text = self.cache.text(&hash).map_err(|e| match e {
            CacheError::Missing { cache, what, .. } => CacheError::Missing {
                cache,
                what,
                hash: format!("{hash} ({caption:?})"),
            },
            other => other,
        })?;
        text_tensors(&text, self.cache.dir(), device)
    }
}

/// One caption's features as tensors: tokens `[1, txt_tokens, text_dim]` and pooled
/// `[1, vec_dim]`. `origin` names where they came from in errors.
pub(crate) fn text_tensors<B: Backend>(
    text: &CachedText,
    origin: &Path,
    device: &B::Device,
) -> Result<(Tensor<B, 3>, Tensor<B, 2>), CacheError> {
    let (tokens_dims, tokens) = stack(&[&text.tokens], "text tokens", origin)?;
    let (pooled_dims, pooled) = stack(&[&text.pooled], "pooled text", origin)?;
    Ok((
        Tensor::from_data(TensorData::new(tokens, tokens_dims), device),
        Tensor::from_data(TensorData::new(pooled, pooled_dims), device),
    ))
}

/// A batch of encoded samples: each latent drawn from its posterior with the noise of `seed`,
/// and the captions' features stacked. `origin` names where they came from in errors.
pub fn posterior_batch<B: Backend>(
    latents: &[&CachedLatent],
    texts: &[&CachedText],
    seed: u64,
    origin: &Path,
    device: &B::Device,
) -> Result<EncodedBatch<B>, CacheError> {
    let means: Vec<&HostTensor> = latents.iter().map(|l| &l.mean).collect();
    let logvars: Vec<&HostTensor> = latents.iter().map(|l| &l.logvar).collect();
    let (dims, mean) = stack(&means, "latent means", origin)?;
    let (logvar_dims, logvar) = stack(&logvars, "latent log-variances", origin)?;
    if dims != logvar_dims || dims.len() != 4 || dims[2] % 2 != 0 || dims[3] % 2 != 0 {
        return Err(CacheError::Io {
            path: origin.to_path_buf(),
            reason: format!(
                "latents must be [channels, h, w] with even h, w and a log-variance of the \
                 same shape; found mean {:?}, log-variance {:?}",
                &dims[1..],
                &logvar_dims[1..]
            ),
        });
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let sample: Vec<f32> = mean
        .iter()
        .zip(&logvar)
        .map(|(m, lv)| {
            let eps: f32 = rand_distr::StandardNormal.sample(&mut rng);
            m + (lv / 2.0).exp() * eps
        })
        .collect();
    let latent_hw = (dims[2], dims[3]);
    let x0 = pack(Tensor::<B, 4>::from_data(
        TensorData::new(sample, dims),
        device,
    ));
    let tokens: Vec<&HostTensor> = texts.iter().map(|t| &t.tokens).collect();
    let pooled: Vec<&HostTensor> = texts.iter().map(|t| &t.pooled).collect();
    let (text_dims, text) = stack(&tokens, "text tokens", origin)?;
    let (pooled_dims, pooled) = stack(&pooled, "pooled text", origin)?;
    Ok(EncodedBatch {
        x0,
        latent_hw,
        text: Tensor::from_data(TensorData::new(text, text_dims), device),
        pooled: Tensor::from_data(TensorData::new(pooled, pooled_dims), device),
    })
}
