//! Device memory of a personalized generation, estimated before the models are loaded (what
//! `premier generate` prints). With every model loaded at once the weights add up; loading one
//! model at a time (`premier generate --low-memory`: T5 and CLIP encode the prompts and are
//! released, then the adapters compute Δ, then FLUX denoises, then the VAE decodes) needs only the
//! largest stage. The backbone's activations follow `premier_mmdit::memory`.

use std::fmt;

use premier_mmdit::memory::format_bytes as gib;
use premier_mmdit::{FluxConfig, PassShape};
use premier_vae::AutoencoderConfig;

/// Bytes of each part of a generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GenerationMemory {
    /// T5 and CLIP weights and one encoding's activations.
    pub text_encoders: u64,
    /// Adapters and user table, and one Δ computation's activations.
    pub adapters: u64,
    /// Δ of every image, kept from the adapters' stage to the end of denoising (f32).
    pub deltas: u64,
    /// The transformer's weights.
    pub backbone: u64,
    /// One FLUX forward at its widest.
    pub denoise_activations: u64,
    /// The autoencoder's weights.
    pub vae: u64,
    /// The decoder at full resolution.
    pub decode_activations: u64,
}

/// What the estimate needs to know.
#[derive(Debug, Clone)]
pub struct GenerationPlan<'a> {
    /// The transformer's config.
    pub flux: &'a FluxConfig,
    /// The autoencoder's config.
    pub vae: &'a AutoencoderConfig,
    /// Stored parameter counts (from the files' headers).
    pub text_encoder_params: u64,
    /// The autoencoder's stored parameter count.
    pub vae_params: u64,
    /// Adapter and table parameters (0 without personalization).
    pub adapter_params: u64,
    /// Widest layer of the text encoders (T5-XXL: its 10240-wide feed-forward).
    pub text_width: usize,
    /// Images denoised together, their side in pixels, the T5 tokens per prompt.
    pub images: usize,
    /// Image width in pixels.
    pub width: usize,
    /// Image height in pixels.
    pub height: usize,
    /// T5 tokens per prompt (dev: 512).
    pub txt_tokens: usize,
    /// Bytes per weight and activation of the models (2: bf16, 4: f32).
    pub element_bytes: usize,
    /// Bytes per adapter weight.
    pub adapter_bytes: usize,
    /// Side of the VAE's decoding tiles in latent pixels (`None`: the whole image at once).
    pub vae_tile: Option<usize>,
    /// Whether the backend's attention keeps no score matrix (`FluxOps::FUSED_ATTENTION`).
    pub fused_attention: bool,
}

impl GenerationMemory {
    /// Each stage's bytes for `plan`, from the configs and parameter counts alone.
    pub fn estimate(plan: &GenerationPlan<'_>) -> Self {
        let e = plan.element_bytes as u64;
        let flux = plan.flux;
        let factor = plan.vae.downsampling();
        let (h, w) = (plan.height / factor, plan.width / factor);
        let shape = PassShape {
            batch: plan.images,
            img_tokens: (h / 2) * (w / 2),
            txt_tokens: plan.txt_tokens,
            element_bytes: plan.element_bytes,
            fused_attention: plan.fused_attention,
        };
        let tokens = (plan.images * plan.txt_tokens) as u64;
        let personalized = plan.adapter_params > 0;
        // Δ_shared and one Δ_distinct per double block, f32, per prompt token.
        let delta = tokens * (flux.hidden_size * (1 + flux.depth)) as u64 * 4;
        // The decoder's second level upsampled to full resolution, its conv and norm outputs and
        // the residual: four tensors of that width at the image's size.
        let level = plan.vae.block_out_channels.get(1).copied().unwrap_or(0) as u64;
        let tile_px = |side: usize| plan.vae_tile.map_or(side, |t| side.min(t * factor));
        let pixels = (plan.images * tile_px(plan.width) * tile_px(plan.height)) as u64;
        Self {
            text_encoders: plan.text_encoder_params * e + 4 * tokens * plan.text_width as u64 * e,
            adapters: plan.adapter_params * plan.adapter_bytes as u64
                + if personalized { 2 * delta } else { 0 },
            deltas: if personalized { delta } else { 0 },
            backbone: flux.weight_bytes(plan.element_bytes),
            denoise_activations: flux.inference_activation_bytes(&shape),
            vae: plan.vae_params * e,
            decode_activations: 4 * level * pixels * e,
        }
    }

    /// Every model resident from the start.
    pub fn resident_peak(&self) -> u64 {
        self.text_encoders
            + self.adapters
            + self.deltas
            + self.backbone
            + self.vae
            + self.denoise_activations.max(self.decode_activations)
    }

    /// One model at a time: the largest stage, and its name.
    pub fn staged_peak(&self) -> (u64, &'static str) {
        [
            (self.text_encoders, "T5 and CLIP"),
            (self.adapters + self.deltas, "the adapters"),
            (
                self.backbone + self.deltas + self.denoise_activations,
                "FLUX",
            ),
            (self.vae + self.decode_activations, "the VAE decoder"),
        ]
        .into_iter()
        .max_by_key(|(bytes, _)| *bytes)
        .unwrap_or((0, "nothing"))
    }
}

impl fmt::Display for GenerationMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (staged, stage) = self.staged_peak();
        write!(
            f,
            "{} with every model loaded (FLUX {} + T5 and CLIP {} + adapters {} + VAE {} + \
             activations {}); {} loading one model at a time (--low-memory; largest stage: {stage})",
            gib(self.resident_peak()),
            gib(self.backbone),
            gib(self.text_encoders),
            gib(self.adapters + self.deltas),
            gib(self.vae),
            gib(self.denoise_activations.max(self.decode_activations)),
            gib(staged),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// T5-XXL's encoder (4.76 B) and CLIP-L's text tower (123 M); the FLUX VAE (83.8 M).
    const T5_CLIP: u64 = 4_762_310_656 + 123_060_480;
    const VAE: u64 = 83_819_683;

    fn dev_plan(
        flux: &FluxConfig,
        vae: &AutoencoderConfig,
        adapter_bytes: usize,
    ) -> GenerationMemory {
        GenerationMemory::estimate(&GenerationPlan {
            flux,
            vae,
            text_encoder_params: T5_CLIP,
            vae_params: VAE,
            adapter_params: 907_229_184 + 30_720_000,
            text_width: 10_240,
            images: 1,
            width: 512,
            height: 512,
            txt_tokens: 512,
            element_bytes: 2,
            adapter_bytes,
            vae_tile: None,
            fused_attention: false,
        })
    }

    #[test]
    fn flux_dev_at_512_fits_24_gib_only_one_model_at_a_time() {
        let (flux, vae) = (FluxConfig::dev(), AutoencoderConfig::flux());
        let m = dev_plan(&flux, &vae, 2);
        eprintln!("FLUX.1-dev 512², bf16 adapters: {m}");
        let (staged, stage) = m.staged_peak();
        assert_eq!(stage, "FLUX");
        assert!(staged < 23 << 30, "{m}");
        assert!(m.resident_peak() > 30 << 30, "{m}");
        // bf16 adapters halve their part.
        let f32_adapters = dev_plan(&flux, &vae, 4);
        assert_eq!(
            f32_adapters.adapters - m.adapters,
            2 * (907_229_184 + 30_720_000)
        );
        assert!(m.to_string().contains("largest stage: FLUX"), "{m}");
    }

    #[test]
    fn without_personalization_no_delta_is_kept() {
        let (flux, vae) = (FluxConfig::dev(), AutoencoderConfig::flux());
        let mut plan = GenerationPlan {
            flux: &flux,
            vae: &vae,
            text_encoder_params: T5_CLIP,
            vae_params: VAE,
            adapter_params: 0,
            text_width: 10_240,
            images: 2,
            width: 512,
            height: 512,
            txt_tokens: 512,
            element_bytes: 2,
            adapter_bytes: 2,
            vae_tile: None,
            fused_attention: false,
        };
        let base = GenerationMemory::estimate(&plan);
        let tiled = GenerationMemory::estimate(&GenerationPlan {
            vae_tile: Some(32),
            ..plan.clone()
        });
        assert_eq!(
            4 * tiled.decode_activations,
            base.decode_activations,
            "256² tiles of 512²"
        );
        assert_eq!((base.adapters, base.deltas), (0, 0));
        plan.images = 1;
        let one = GenerationMemory::estimate(&plan);
        assert!(one.denoise_activations < base.denoise_activations);
        assert_eq!(2 * one.decode_activations, base.decode_activations);
    }
}
