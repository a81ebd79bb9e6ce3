//! The world's encoders for `premier encode`: the lossless patch codec in place of FLUX's VAE, and
//! the base model's text encoder in place of T5 + CLIP.

use burn::prelude::*;
use image::RgbImage;
use premier_io::HostTensor;
use premier_mmdit::unpack;
use premier_text::PromptTokenizer;
use premier_train::cache::{CachedLatent, CachedText, EncoderIdentity};
use premier_train::encode::{split_rows, Encoders};

use crate::codec::{encode, LATENT_HW};
use crate::text::SynthTextEncoder;
use crate::world::IMAGE_SIZE;

/// Log-variance of the codec's "posterior": the codec is deterministic, and `exp(−1e4 / 2)`
/// underflows to exactly 0, so a posterior sample is the mean itself.
pub const DETERMINISTIC_LOGVAR: f32 = -1e4;

/// Codec + the base model's text encoder.
pub struct SynthEncoders<B: Backend> {
    /// The base's text encoder.
    pub text: SynthTextEncoder<B>,
    /// The base's tokenizer.
    pub tokenizer: PromptTokenizer,
    /// [`weights_fingerprint`](premier_train::cache::weights_fingerprint) of the base's folder
    /// (its text encoder and tokenizer are what encode the captions).
    pub base_fingerprint: String,
    /// Where the encoders run.
    pub device: B::Device,
}

impl<B: Backend> Encoders for SynthEncoders<B> {
    /// Images must be the world's size; the latent is the codec's tokens unpacked to
    /// `[channels, h, w]`, so packing gives the tokens back exactly.
    fn encode_images(&mut self, images: &[RgbImage]) -> Result<Vec<CachedLatent>, String> {
        if let Some(bad) = images
            .iter()
            .find(|i| i.dimensions() != (IMAGE_SIZE as u32, IMAGE_SIZE as u32))
        {
            return Err(format!(
                "the world's codec takes {IMAGE_SIZE}×{IMAGE_SIZE} images, not {}×{}",
                bad.width(),
                bad.height()
            ));
        }
        let refs: Vec<&RgbImage> = images.iter().collect();
        let tokens = encode::<B>(&refs, &self.device);
        let latents = unpack(tokens, LATENT_HW.0, LATENT_HW.1);
        Ok(split_rows(latents)
            .into_iter()
            .map(|mean| CachedLatent {
                logvar: HostTensor {
                    shape: mean.shape.clone(),
                    data: vec![DETERMINISTIC_LOGVAR; mean.data.len()],
                },
                mean,
            })
            .collect())
    }

    fn encode_captions(&mut self, captions: &[String]) -> Result<Vec<CachedText>, String> {
        let refs: Vec<&str> = captions.iter().map(String::as_str).collect();
        let text = self
            .text
            .encode(&self.tokenizer, &refs)
            .map_err(|e| e.to_string())?;
        Ok(split_rows(text.tokens)
            .into_iter()
            .zip(split_rows(text.pooled))
            .map(|(tokens, pooled)| CachedText { tokens, pooled })
            .collect())
    }

    fn identity(&self) -> EncoderIdentity {
        EncoderIdentity {
            images: format!(
                "the synthetic world's lossless patch codec ({IMAGE_SIZE}×{IMAGE_SIZE} images, \
                 no resizing)"
            ),
            text: format!(
                "the synthetic base's text encoder (base {})",
                self.base_fingerprint
            ),
        }
    }
}
