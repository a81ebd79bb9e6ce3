//! CLIP embeddings of images and prompts, and CLIP-T2I.

use burn::prelude::*;
use image::RgbImage;
use premier_text::{ClipImageProcessor, ClipModel, PromptTokenizer};

use crate::error::EvalError;

/// torchmetrics' `CLIPScore` of one image and prompt from their cosine: `100 · max(cos, 0)`.
pub fn clip_score(cosine: f64) -> f64 {
    100.0 * cosine.max(0.0)
}

/// A CLIP model with its image preprocessing and tokenizer.
pub struct ClipScorer<B: Backend> {
    /// Both towers and their projections.
    pub model: ClipModel<B>,
    /// How images become pixels.
    pub processor: ClipImageProcessor,
    /// How prompts become ids (padded with EOS to the model's positions).
    pub tokenizer: PromptTokenizer,
    /// Where the model runs.
    pub device: B::Device,
}

/// Rows scaled to unit length: `[n, d]`.
fn unit<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let norm = x.clone().powi_scalar(2).sum_dim(1).sqrt();
    x / norm
}

/// `[n, d]` → one `Vec` per row.
pub(crate) fn rows<B: Backend>(x: Tensor<B, 2>) -> Vec<Vec<f32>> {
    let [n, d] = x.dims();
    let values = x
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .unwrap_or_default();
    (0..n)
        .map(|i| values[i * d..(i + 1) * d].to_vec())
        .collect()
}

/// The dot product of two unit vectors: their cosine.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
}

impl<B: Backend> ClipScorer<B> {
    /// Unit image embeddings, one per image: `[images, projection]` as rows.
    pub fn image_embeddings(&self, images: &[RgbImage]) -> Result<Vec<Vec<f32>>, EvalError> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let pixels = self.processor.pixels::<B>(images, &self.device)?;
        Ok(rows(unit(self.model.image_features(pixels)?)))
    }

    /// Unit prompt embeddings, one per prompt.
    pub fn text_embeddings(&self, prompts: &[&str]) -> Result<Vec<Vec<f32>>, EvalError> {
        if prompts.is_empty() {
            return Ok(Vec::new());
        }
        let batch = self.tokenizer.encode(prompts)?;
        let ids = premier_text::ids_tensor::<B>(&batch.ids, &self.device);
        Ok(rows(unit(self.model.text_features(ids)?)))
    }

    /// CLIP-T2I of each image with its prompt (`images[i]` with `prompts[i]`): the cosines;
    /// [`clip_score`] turns one into torchmetrics' `CLIPScore`.
    pub fn t2i(&self, images: &[RgbImage], prompts: &[&str]) -> Result<Vec<f64>, EvalError> {
        if images.len() != prompts.len() {
            return Err(EvalError::Mismatch(format!(
                "{} images and {} prompts: give one prompt per image",
                images.len(),
                prompts.len()
            )));
        }
        Ok(cosines(
            &self.image_embeddings(images)?,
            &self.text_embeddings(prompts)?,
        ))
    }
}

/// The cosine of each pair of unit embeddings (`a[i]` with `b[i]`): CLIP-T2I from image and
/// prompt embeddings computed once.
pub fn cosines(a: &[Vec<f32>], b: &[Vec<f32>]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| dot(x, y)).collect()
}
