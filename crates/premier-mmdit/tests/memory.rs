//! `FluxConfig::param_count` against the models it builds, and against FLUX.1-dev's published
//! size; the activation model's monotonicity (its calibration against measured peaks is in
//! premier-train's tests/memory.rs, which runs training steps).

mod common;

use burn::module::Module;
use common::{small_config, B};
use premier_mmdit::{Flux, FluxConfig, PassShape};

#[test]
fn param_count_matches_the_built_model() {
    let device = Default::default();
    for config in [
        FluxConfig::tiny(),
        small_config(),
        FluxConfig {
            qkv_bias: false,
            guidance_embed: false,
            mlp_ratio: 3.0,
            depth: 3,
            depth_single_blocks: 2,
            ..small_config()
        },
    ] {
        let flux = Flux::<B>::init(&config, &device).unwrap();
        assert_eq!(config.param_count(), flux.num_params() as u64, "{config:?}");
    }
    // FLUX.1-dev's transformer: 11,901,408,320 parameters (diffusers `FluxTransformer2DModel`);
    // schnell lacks the guidance embedder (256·3072 + 3072 + 3072² + 3072).
    assert_eq!(FluxConfig::dev().param_count(), 11_901_408_320);
    assert_eq!(
        FluxConfig::medium().param_count(),
        36_497_472,
        "docs/benchmarks.md"
    );
    assert_eq!(
        FluxConfig::dev().param_count() - FluxConfig::schnell().param_count(),
        256 * 3072 + 3072 + 3072 * 3072 + 3072
    );
}

#[test]
fn activations_grow_with_tokens_and_batch_and_scores_only_without_fused_attention() {
    let config = FluxConfig::dev();
    let shape = PassShape {
        batch: 1,
        img_tokens: 1024,
        txt_tokens: 512,
        element_bytes: 2,
        fused_attention: true,
    };
    let fused = config.training_activation_bytes(&shape);
    let twice = config.training_activation_bytes(&PassShape { batch: 2, ..shape });
    assert_eq!(twice, 2 * fused, "linear in the batch");
    let unfused = PassShape {
        fused_attention: false,
        ..shape
    };
    // One T × T tensor: 24 heads × 1536² scores. No block keeps one for the backward; the
    // backward that runs holds three in f32, an inference forward two in bf16.
    let scores = 24 * 1536u64 * 1536;
    assert_eq!(
        config.training_activation_bytes(&unfused) - fused,
        3 * scores * 4
    );
    assert_eq!(
        config.inference_activation_bytes(&unfused) - config.inference_activation_bytes(&shape),
        2 * scores * 2
    );
    assert!(config.inference_activation_bytes(&shape) < fused / 10);
    // At 1024² (4096 + 512 tokens) training holds one chunk of query rows per score tensor:
    // ⌊2²⁶ / (24 · 4608)⌋ = 606 rows.
    let large = PassShape {
        img_tokens: 4096,
        ..unfused
    };
    let large_fused = PassShape {
        fused_attention: true,
        ..large
    };
    assert_eq!(
        config.training_activation_bytes(&large) - config.training_activation_bytes(&large_fused),
        3 * 606 * 24 * 4608 * 4
    );
}
