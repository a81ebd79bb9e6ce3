//! The whole pipeline on tiny models: tokenizers → T5 + CLIP → adapters → Euler sampling → VAE
//! decode → PNG. Text encoders and VAE are the reference fixtures; FLUX, the adapters and the
//! users are random (sizes chosen to fit the fixtures).

use std::path::PathBuf;

use burn::backend::Flex;
use burn::prelude::*;
use premier_adapter::{AdapterConfig, PreferenceAdapter};
use premier_mmdit::{Flux, FluxConfig};
use premier_pipeline::image_io::{grid, save_png, tensor_to_rgb};
use premier_pipeline::{GenerateRequest, Generator, PipelineError, UserChoice};
use premier_text::{
    ClipTextConfig, ClipTextEncoder, PromptTokenizer, T5Config, T5Encoder, TextEncoder,
};
use premier_users::{UserRef, UserShape, UserTable};
use premier_vae::{Autoencoder, AutoencoderConfig};

type B = Flex;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

fn config<T: serde::de::DeserializeOwned>(json: &str, field: &str) -> T {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture(json)).unwrap()).unwrap();
    serde_json::from_value(v[field].clone()).unwrap()
}

fn tiny_generator() -> Generator<B> {
    let device = Default::default();
    B::seed(&device, 4);
    let t5_tok = PromptTokenizer::t5(fixture("tiny_tokenizers/t5.json"), 8).unwrap();
    let clip_tok = PromptTokenizer::clip(fixture("tiny_tokenizers/clip.json")).unwrap();
    let t5 = T5Encoder::load(
        fixture("t5_tiny_weights.safetensors"),
        &config::<T5Config>("t5_tiny.json", "config"),
        &device,
    )
    .unwrap();
    let clip = ClipTextEncoder::load(
        fixture("clip_text_tiny_weights.safetensors"),
        &config::<ClipTextConfig>("clip_text_tiny.json", "config"),
        &device,
    )
    .unwrap();
    let vae_config: AutoencoderConfig = config("vae_tiny.json", "diffusers_config");
    let vae = Autoencoder::load(
        fixture("vae_tiny_weights_bfl.safetensors"),
        &vae_config,
        &device,
    )
    .unwrap();
    let flux_config = FluxConfig {
        in_channels: 64,
        out_channels: 64,
        vec_in_dim: 32,
        context_in_dim: 32,
        hidden_size: 32,
        axes_dim: vec![4, 6, 6],
        ..FluxConfig::tiny()
    };
    let flux = Flux::init(&flux_config, &device).unwrap();
    let mut adapter =
        PreferenceAdapter::init(&AdapterConfig::small(32, 6, 32, 2), &device).unwrap();
    // A fresh adapter's Δ is ~1e-4; make it visible so users differ.
    for net in [
        adapter.net.as_mut().unwrap(),
        adapter.net2.as_mut().unwrap(),
    ] {
        let n = net.norm_weight.dims()[0];
        net.norm_weight = burn::module::Param::from_tensor(Tensor::ones([n], &device));
    }
    let users = UserTable::init(
        UserShape {
            users: 3,
            tokens: 4,
            dim: 6,
        },
        &device,
    );
    Generator::new(
        flux,
        vae,
        vae_config,
        TextEncoder::new(t5, clip, t5_tok, clip_tok),
        Some(adapter),
        Some(users),
        device,
    )
}

fn request(users: Vec<UserChoice>, alpha: f64) -> GenerateRequest {
    GenerateRequest {
        prompts: vec!["a red circle".into(), "a red circle".into()],
        users,
        seeds: vec![7, 7],
        width: 32,
        height: 32,
        steps: 3,
        guidance: 3.5,
        shift: true,
        alpha,
    }
}

fn max_diff(a: Tensor<B, 4>, b: Tensor<B, 4>) -> f32 {
    (a - b).abs().max().into_scalar()
}

#[test]
fn personalized_batches_are_reproducible_and_alpha_zero_is_the_base() {
    let dir = tempfile::tempdir().unwrap();
    let mut generator = tiny_generator();
    let both = request(
        vec![UserChoice::Base, UserChoice::User(UserRef::Index(1))],
        1.0,
    );
    let mut steps = Vec::new();
    let out = generator
        .generate(&both, &mut |done: usize, total: usize| {
            steps.push((done, total))
        })
        .unwrap();
    assert_eq!(steps, vec![(1, 3), (2, 3), (3, 3)]);
    assert_eq!(out.images.dims(), [2, 3, 32, 32]);
    let base = out.images.clone().narrow(0, 0, 1);
    let user = out.images.clone().narrow(0, 1, 1);
    assert!(
        max_diff(base.clone(), user.clone()) > 1e-3,
        "the user's taste changes the image"
    );

    // Same request again: identical (seeded noise, cached text and Δ).
    let again = generator.generate(&both, &mut ()).unwrap();
    assert_eq!(max_diff(again.images, out.images.clone()), 0.0);
    assert_eq!(generator.text().cached(), 1);
    let (text_bytes, delta_bytes) = generator.cached_bytes();
    assert!(text_bytes > 0 && delta_bytes > 0);

    // Caches bounded below one entry keep nothing, and change nothing drawn.
    generator.set_cache_budgets(text_bytes - 1, delta_bytes / 2 - 1);
    assert_eq!(generator.cached_bytes(), (0, 0));
    let uncached = generator.generate(&both, &mut ()).unwrap();
    assert_eq!(max_diff(uncached.images, out.images.clone()), 0.0);
    assert_eq!(generator.cached_bytes(), (0, 0));
    generator.set_cache_budgets(usize::MAX, usize::MAX);

    // α = 0 gives the base image for the user too; a plain batch gives the base as well.
    let zero = generator
        .generate(
            &request(
                vec![UserChoice::Base, UserChoice::User(UserRef::Index(1))],
                0.0,
            ),
            &mut (),
        )
        .unwrap();
    assert!(max_diff(zero.images.narrow(0, 1, 1), base.clone()) < 1e-6);
    let plain = generator.generate(&request(vec![], 1.0), &mut ()).unwrap();
    assert!(max_diff(plain.images.narrow(0, 0, 1), base) < 1e-6);

    // Images and a grid on disk.
    let rgb = tensor_to_rgb(out.images);
    let sheet = grid(&[rgb.clone(), rgb], 2);
    assert_eq!(sheet.dimensions(), (2 * 32 + 3 * 2, 2 * 32 + 3 * 2));
    let path = dir.path().join("grid.png");
    save_png(&sheet, &path).unwrap();
    assert_eq!(image::open(&path).unwrap().to_rgb8(), sheet);
}

#[test]
fn bad_requests_are_errors() {
    let mut generator = tiny_generator();
    let mut r = request(vec![], 1.0);
    r.width = 40;
    assert!(matches!(
        generator.generate(&r, &mut ()),
        Err(PipelineError::Size { width: 40, .. })
    ));
    let mut r = request(vec![], 1.0);
    r.seeds.pop();
    assert!(matches!(
        generator.generate(&r, &mut ()),
        Err(PipelineError::Request(_))
    ));
    let r = request(
        vec![UserChoice::Base, UserChoice::User(UserRef::Index(9))],
        1.0,
    );
    let err = generator.generate(&r, &mut ()).unwrap_err();
    assert!(err.to_string().contains("unknown user 9"), "{err}");
    // Sizes no machine holds are refused before anything is allocated.
    let mut r = request(vec![], 1.0);
    (r.width, r.height) = (100_000, 100_000);
    let err = generator.generate(&r, &mut ()).unwrap_err();
    assert!(err.to_string().contains("at most 4096"), "{err}");
    for alpha in [f64::NAN, f64::INFINITY] {
        let err = generator
            .generate(&request(vec![], alpha), &mut ())
            .unwrap_err();
        assert!(err.to_string().contains("must be finite"), "{err}");
    }
    // A finite α so large that the sample overflows is an error, not a black image.
    let user = UserChoice::User(UserRef::Index(0));
    let huge = request(vec![user.clone(), user], 1e30);
    let err = generator.generate(&huge, &mut ()).unwrap_err();
    assert!(err.to_string().contains("NaN or infinite"), "{err}");
}
