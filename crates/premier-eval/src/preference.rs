//! How well an image fits a user's taste, and win rates against the base model.

use std::collections::BTreeMap;

use burn::prelude::*;
use image::RgbImage;

use crate::clip_scorer::{dot, ClipScorer};
use crate::error::EvalError;

/// Scores how well images fit a user's taste (higher is better). [`ClipPreference`] is this
/// crate's proxy; a ViPer-style judge implements the same trait.
pub trait PreferenceScorer {
    /// One score per image, for `user`.
    fn score(&mut self, user: &str, images: &[RgbImage]) -> Result<Vec<f64>, EvalError>;
}

/// The preference proxy: the mean CLIP cosine of an image to the user's held-out liked images.
/// Not the paper's ViPer score (an 8B vision-language judge); it rewards images near what the
/// user liked in CLIP's space, content included.
pub struct ClipPreference<B: Backend> {
    scorer: ClipScorer<B>,
    liked: BTreeMap<String, Vec<Vec<f32>>>,
}

impl<B: Backend> ClipPreference<B> {
    /// A proxy scoring with `scorer`, with no users yet.
    pub fn new(scorer: ClipScorer<B>) -> Self {
        Self {
            scorer,
            liked: BTreeMap::new(),
        }
    }

    /// Adds (or replaces) `user`'s held-out liked images.
    pub fn add_user(&mut self, user: &str, liked: &[RgbImage]) -> Result<(), EvalError> {
        if liked.is_empty() {
            return Err(EvalError::Mismatch(format!(
                "user {user:?}: no liked images given"
            )));
        }
        let embeddings = self.scorer.image_embeddings(liked)?;
        self.liked.insert(user.to_string(), embeddings);
        Ok(())
    }
}

impl<B: Backend> PreferenceScorer for ClipPreference<B> {
    fn score(&mut self, user: &str, images: &[RgbImage]) -> Result<Vec<f64>, EvalError> {
        let liked = self
            .liked
            .get(user)
            .ok_or_else(|| EvalError::UnknownUser(user.to_string()))?;
        let embeddings = self.scorer.image_embeddings(images)?;
        Ok(embeddings.iter().map(|e| mean_cosine(e, liked)).collect())
    }
}

/// The preference proxy of one unit image embedding: its mean cosine to the unit embeddings of
/// the user's liked images.
pub(crate) fn mean_cosine(embedding: &[f32], liked: &[Vec<f32>]) -> f64 {
    liked.iter().map(|l| dot(embedding, l)).sum::<f64>() / liked.len() as f64
}

/// Per pair: 1 when `personalized` scores above `base`, ½ on a tie, 0 below.
pub(crate) fn wins(personalized: &[f64], base: &[f64]) -> Vec<f64> {
    personalized
        .iter()
        .zip(base)
        .map(|(p, b)| match p.partial_cmp(b) {
            Some(std::cmp::Ordering::Greater) => 1.0,
            Some(std::cmp::Ordering::Equal) => 0.5,
            _ => 0.0,
        })
        .collect()
}

/// Per pair, 1 when the personalized image scores above the base image (same prompt and seed),
/// ½ on a tie, 0 below: its mean is the win rate (the ViPer-rate analog).
pub fn win_rate(
    scorer: &mut impl PreferenceScorer,
    user: &str,
    personalized: &[RgbImage],
    base: &[RgbImage],
) -> Result<Vec<f64>, EvalError> {
    if personalized.len() != base.len() {
        return Err(EvalError::Mismatch(format!(
            "{} personalized and {} base images: they pair up by prompt and seed",
            personalized.len(),
            base.len()
        )));
    }
    let (p, b) = (scorer.score(user, personalized)?, scorer.score(user, base)?);
    Ok(wins(&p, &b))
}
