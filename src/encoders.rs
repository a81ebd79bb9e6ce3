//! FLUX.1's encoders for `premier encode`: the autoencoder's posterior of each image (resized to a
//! square resolution, as the official training does, or centre-cropped first) in the
//! transformer's latent space, and T5 tokens + CLIP pooled per caption.

use burn::prelude::*;
use image::imageops::FilterType;
use image::RgbImage;

use crate::error::PremierError;
use crate::model_files::{ModelFiles, Variant};
use crate::pipeline::image_io::rgb_to_tensor;
use crate::text::{ids_tensor, ClipTextEncoder, PromptTokenizer, T5Encoder};
use crate::train::cache::{weights_fingerprint, CachedLatent, CachedText, EncoderIdentity};
use crate::train::encode::{split_rows, Encoders};
use crate::vae::{Autoencoder, AutoencoderConfig};

/// The VAE and text encoders of a FLUX.1 model.
pub struct FluxEncoders<B: Backend> {
    /// The autoencoder (its posterior of each image).
    pub vae: Autoencoder<B>,
    /// Its config (latent shift and scale).
    pub vae_config: AutoencoderConfig,
    /// Per-token caption features.
    pub t5: T5Encoder<B>,
    /// Pooled caption vectors.
    pub clip: ClipTextEncoder<B>,
    /// T5's tokenizer.
    pub t5_tokenizer: PromptTokenizer,
    /// CLIP's tokenizer.
    pub clip_tokenizer: PromptTokenizer,
    /// Side of the square training images (a multiple of 16).
    pub resolution: u32,
    /// How an image becomes a `resolution`² square.
    pub preprocess: Preprocess,
    /// [`weights_fingerprint`](crate::train::cache::weights_fingerprint)s of the autoencoder's
    /// file and of the text encoders' and tokenizers' files, in the cache's identity.
    pub vae_fingerprint: String,
    /// See `vae_fingerprint`.
    pub text_fingerprint: String,
    /// Where the encoders run.
    pub device: B::Device,
}

impl<B: Backend> FluxEncoders<B> {
    /// The autoencoder, T5 and CLIP of `files` (their sizes checked against each other), with
    /// the fingerprints of their files that a cache records.
    pub fn load(
        files: &ModelFiles,
        variant: Variant,
        resolution: u32,
        preprocess: Preprocess,
        device: &B::Device,
    ) -> Result<Self, PremierError> {
        let configs = files.configs(variant)?;
        let vae = files.load_vae::<B>(&configs.vae, device)?;
        let text = files.load_text::<B>(&configs, variant, device)?;
        let fingerprint = |path: &std::path::Path| {
            weights_fingerprint(path).map_err(|e| PremierError::Config {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })
        };
        let mut text_fingerprint = Vec::new();
        for path in [Some(&files.t5), Some(&files.clip)]
            .into_iter()
            .chain([files.t5_tokenizer.as_ref(), files.clip_tokenizer.as_ref()])
            .flatten()
        {
            text_fingerprint.push(fingerprint(path)?);
        }
        Ok(Self {
            vae,
            vae_config: configs.vae,
            t5: text.t5,
            clip: text.clip,
            t5_tokenizer: text.t5_tokenizer,
            clip_tokenizer: text.clip_tokenizer,
            resolution,
            preprocess,
            vae_fingerprint: fingerprint(&files.ae)?,
            text_fingerprint: text_fingerprint.join("+"),
            device: device.clone(),
        })
    }
}

/// How a training image becomes a square.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preprocess {
    /// Resized to the square whatever its aspect (bilinear, antialiased), as the official
    /// dataset's `transforms.Resize((512, 512))` does (SPEC §4.1).
    #[default]
    Resize,
    /// The shorter side resized (Lanczos3) to the square's side and the centre cropped: no
    /// distortion, the borders lost.
    CenterCrop,
}

impl Preprocess {
    /// `image` as a `side`×`side` square.
    pub fn apply(self, image: &RgbImage, side: u32) -> RgbImage {
        match self {
            // torchvision resizes a PIL image with PIL's bilinear filter, antialiased when it
            // shrinks; the image crate's Triangle filter widens with the scale the same way
            // (close, not bit-identical to PIL).
            Preprocess::Resize => image::imageops::resize(image, side, side, FilterType::Triangle),
            Preprocess::CenterCrop => center_square(image, side),
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Preprocess::Resize => "resized to the square (bilinear, as the official training)",
            Preprocess::CenterCrop => "shorter side resized (Lanczos3) and centre-cropped",
        }
    }
}

/// Resizes the shorter side to `side` and crops the centre to `side`×`side`.
pub fn center_square(image: &RgbImage, side: u32) -> RgbImage {
    let (w, h) = image.dimensions();
    let scale = side as f32 / w.min(h) as f32;
    let (nw, nh) = (
        ((w as f32 * scale).round() as u32).max(side),
        ((h as f32 * scale).round() as u32).max(side),
    );
    let resized = image::imageops::resize(image, nw, nh, FilterType::Lanczos3);
    image::imageops::crop_imm(&resized, (nw - side) / 2, (nh - side) / 2, side, side).to_image()
}

impl<B: Backend> Encoders for FluxEncoders<B> {
    /// The posterior of `(z − shift) · scale`: mean `(μ − shift) · scale` and log-variance
    /// `logvar + 2 ln scale`, so a sample of it is the scaled sample the released training uses.
    fn encode_images(&mut self, images: &[RgbImage]) -> Result<Vec<CachedLatent>, String> {
        let pixels = Tensor::cat(
            images
                .iter()
                .map(|i| rgb_to_tensor(&self.preprocess.apply(i, self.resolution), &self.device))
                .collect(),
            0,
        );
        let posterior = self.vae.try_encode(pixels).map_err(|e| e.to_string())?;
        let scale = self.vae_config.scaling_factor;
        let mean = (posterior.mean - self.vae_config.shift_factor) * scale;
        let logvar = posterior.logvar + 2.0 * scale.ln();
        Ok(split_rows(mean)
            .into_iter()
            .zip(split_rows(logvar))
            .map(|(mean, logvar)| CachedLatent { mean, logvar })
            .collect())
    }

    fn encode_captions(&mut self, captions: &[String]) -> Result<Vec<CachedText>, String> {
        let refs: Vec<&str> = captions.iter().map(String::as_str).collect();
        let t5_ids = self.t5_tokenizer.encode(&refs).map_err(|e| e.to_string())?;
        let clip_ids = self
            .clip_tokenizer
            .encode(&refs)
            .map_err(|e| e.to_string())?;
        for &i in t5_ids.truncated.iter().chain(&clip_ids.truncated) {
            tracing::warn!(
                caption = refs[i],
                "caption truncated to the text encoders' length"
            );
        }
        let tokens = self
            .t5
            .try_forward(ids_tensor(&t5_ids.ids, &self.device))
            .map_err(|e| e.to_string())?;
        let (_, pooled) = self
            .clip
            .try_forward(ids_tensor(&clip_ids.ids, &self.device))
            .map_err(|e| e.to_string())?;
        Ok(split_rows(tokens)
            .into_iter()
            .zip(split_rows(pooled))
            .map(|(tokens, pooled)| CachedText { tokens, pooled })
            .collect())
    }

    fn identity(&self) -> EncoderIdentity {
        EncoderIdentity {
            images: format!(
                "the FLUX autoencoder {} ({:?}) at {}×{} px, {}",
                self.vae_fingerprint,
                self.vae_config,
                self.resolution,
                self.resolution,
                self.preprocess.describe()
            ),
            text: format!(
                "T5 + CLIP {} ({} and {} tokens)",
                self.text_fingerprint,
                self.t5_tokenizer.max_length(),
                self.clip_tokenizer.max_length()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_keeps_the_whole_image_and_the_crop_drops_its_borders() {
        // 40 × 20, a red band on the leftmost 4 columns, grey elsewhere.
        let image = RgbImage::from_fn(40, 20, |x, _| {
            image::Rgb(if x < 4 { [255, 0, 0] } else { [128, 128, 128] })
        });
        let resized = Preprocess::Resize.apply(&image, 16);
        let cropped = Preprocess::CenterCrop.apply(&image, 16);
        assert_eq!(resized.dimensions(), (16, 16));
        assert_eq!(cropped.dimensions(), (16, 16));
        // The band survives the squash (in the first of 16 columns), and is cut by the crop.
        assert!(
            resized.get_pixel(0, 8)[0] > 200,
            "{:?}",
            resized.get_pixel(0, 8)
        );
        assert!(
            cropped.pixels().all(|p| p[0] < 160),
            "the crop kept the border"
        );
        assert_eq!(Preprocess::default(), Preprocess::Resize);
        assert_ne!(
            Preprocess::Resize.describe(),
            Preprocess::CenterCrop.describe()
        );
    }
}
