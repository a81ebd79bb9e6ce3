//! What the training loops read: encoded samples grouped by user ([`UserSamples`]), from an
//! encoder cache on disk ([`CachedUsers`], what `premier train` and `premier cold-start` read)
//! or from memory ([`EncodedUsers`]: a user's liked images encoded by an app, or the synthetic
//! world of the quickstart). The stage-1 loop ([`crate::run::train_stage1`]) and the cold-start
//! loop ([`crate::new_user::fit_new_users`]) run on any of them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::prelude::*;

use crate::batches::{posterior_batch, text_tensors, CachedUsers, EncodedBatch, SampleDims};
use crate::cache::{content_hash, CacheError, CachedLatent, CachedText};

/// Encoded training samples grouped by user, in table-row order.
pub trait UserSamples {
    /// The users' ids, in table-row order.
    fn ids(&self) -> &[String];

    /// How many samples `user` has (`None`: no such user).
    fn sample_count(&self, user: usize) -> Option<usize>;

    /// Samples of every user.
    fn counts(&self) -> Vec<usize> {
        (0..self.ids().len())
            .map(|u| self.sample_count(u).unwrap_or(0))
            .collect()
    }

    /// Where the samples come from, named in errors (a cache folder).
    fn origin(&self) -> &Path;

    /// A hash of the users and their samples, equal exactly when a run would draw the same
    /// batches from both (a checkpoint records it; a resume on other samples is refused).
    fn fingerprint(&self) -> String;

    /// The sizes of a sample (all samples share them); `None` when there are none.
    fn sample_dims(&mut self) -> Result<Option<SampleDims>, CacheError>;

    /// The batch of `(user, sample)` picks, each latent drawn from its posterior with the
    /// noise of `seed` (so a step's batch is the same whenever it is replayed).
    fn batch<B: Backend>(
        &mut self,
        picks: &[(usize, usize)],
        seed: u64,
        device: &B::Device,
    ) -> Result<EncodedBatch<B>, CacheError>;

    /// Features of `caption` (the empty prompt of the dispersion loss): tokens
    /// `[1, txt_tokens, text_dim]` and pooled `[1, vec_dim]`.
    fn text<B: Backend>(
        &mut self,
        caption: &str,
        device: &B::Device,
    ) -> Result<(Tensor<B, 3>, Tensor<B, 2>), CacheError>;
}

impl UserSamples for CachedUsers {
    fn ids(&self) -> &[String] {
        &self.ids
    }

    fn sample_count(&self, user: usize) -> Option<usize> {
        self.samples.get(user).map(Vec::len)
    }

    fn origin(&self) -> &Path {
        self.cache_dir()
    }

    fn fingerprint(&self) -> String {
        CachedUsers::fingerprint(self)
    }

    fn sample_dims(&mut self) -> Result<Option<SampleDims>, CacheError> {
        CachedUsers::sample_dims(self)
    }

    fn batch<B: Backend>(
        &mut self,
        picks: &[(usize, usize)],
        seed: u64,
        device: &B::Device,
    ) -> Result<EncodedBatch<B>, CacheError> {
        CachedUsers::batch(self, picks, seed, device)
    }

    fn text<B: Backend>(
        &mut self,
        caption: &str,
        device: &B::Device,
    ) -> Result<(Tensor<B, 3>, Tensor<B, 2>), CacheError> {
        CachedUsers::text(self, caption, device)
    }
}

/// One encoded sample: the image's latent posterior and its caption's features.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedSample {
    /// `[channels, h, w]`, in the backbone's latent space.
    pub latent: CachedLatent,
    /// The caption's features.
    pub text: CachedText,
}

/// Users' samples encoded in memory, and the features of the captions a run asks for by name
/// (the empty prompt, for the dispersion loss).
#[derive(Debug, Clone)]
pub struct EncodedUsers {
    /// User ids, in table-row order.
    pub ids: Vec<String>,
    /// Per user, its samples.
    pub samples: Vec<Vec<EncodedSample>>,
    /// Features by caption.
    pub captions: BTreeMap<String, CachedText>,
    /// Named in errors ("the new user's images", "the synthetic world").
    pub origin: PathBuf,
}

impl EncodedUsers {
    /// One user's samples, one per (latent, text) pair.
    pub fn one_user(
        id: impl Into<String>,
        latents: Vec<CachedLatent>,
        texts: Vec<CachedText>,
        origin: impl Into<PathBuf>,
    ) -> Self {
        Self {
            ids: vec![id.into()],
            samples: vec![latents
                .into_iter()
                .zip(texts)
                .map(|(latent, text)| EncodedSample { latent, text })
                .collect()],
            captions: BTreeMap::new(),
            origin: origin.into(),
        }
    }
}

impl UserSamples for EncodedUsers {
    fn ids(&self) -> &[String] {
        &self.ids
    }

    fn sample_count(&self, user: usize) -> Option<usize> {
        self.samples.get(user).map(Vec::len)
    }

    fn origin(&self) -> &Path {
        &self.origin
    }

    fn fingerprint(&self) -> String {
        let mut bytes = Vec::new();
        for (id, samples) in self.ids.iter().zip(&self.samples) {
            bytes.extend_from_slice(format!("{id:?}:{}\n", samples.len()).as_bytes());
            for s in samples {
                for t in [
                    &s.latent.mean,
                    &s.latent.logvar,
                    &s.text.tokens,
                    &s.text.pooled,
                ] {
                    bytes.extend(t.shape.iter().flat_map(|d| (*d as u64).to_le_bytes()));
                    bytes.extend(t.data.iter().flat_map(|v| v.to_le_bytes()));
                }
            }
        }
        content_hash(&bytes)
    }

    fn sample_dims(&mut self) -> Result<Option<SampleDims>, CacheError> {
        let Some(s) = self.samples.iter().flatten().next() else {
            return Ok(None);
        };
        let (latent, text) = (&s.latent.mean.shape, &s.text.tokens.shape);
        if latent.len() != 3 || text.len() != 2 || s.text.pooled.shape.len() != 1 {
            return Err(CacheError::Io {
                path: self.origin.clone(),
                reason: format!(
                    "samples must hold latents [channels, h, w], text tokens [tokens, width] and \
                     a pooled vector [width]; found {latent:?}, {text:?} and {:?}",
                    s.text.pooled.shape
                ),
            });
        }
        Ok(Some(SampleDims {
            latent_channels: latent[0],
            img_tokens: (latent[1] / 2) * (latent[2] / 2),
            txt_tokens: text[0],
            text_dim: text[1],
            pooled_dim: s.text.pooled.shape[0],
        }))
    }

    fn batch<B: Backend>(
        &mut self,
        picks: &[(usize, usize)],
        seed: u64,
        device: &B::Device,
    ) -> Result<EncodedBatch<B>, CacheError> {
        let mut chosen = Vec::with_capacity(picks.len());
        for &(u, i) in picks {
            let sample =
                self.samples
                    .get(u)
                    .and_then(|s| s.get(i))
                    .ok_or_else(|| CacheError::Io {
                        path: self.origin.clone(),
                        reason: format!("no sample {i} of user {u}"),
                    })?;
            chosen.push(sample);
        }
        let latents: Vec<&CachedLatent> = chosen.iter().map(|s| &s.latent).collect();
        let texts: Vec<&CachedText> = chosen.iter().map(|s| &s.text).collect();
        posterior_batch(&latents, &texts, seed, &self.origin, device)
    }

    fn text<B: Backend>(
        &mut self,
        caption: &str,
        device: &B::Device,
    ) -> Result<(Tensor<B, 3>, Tensor<B, 2>), CacheError> {
        let text = self
            .captions
            .get(caption)
            .ok_or_else(|| CacheError::Missing {
                cache: self.origin.clone(),
                what: "caption",
                hash: format!("{caption:?}"),
            })?;
        text_tensors(text, &self.origin, device)
    }
}
