//! Parity of the whole CLIP (both towers, projections, logit scale) with transformers'
//! `CLIPModel` on the `clip_model_tiny` fixture (tests/fixtures/README.md §11): every output
//! within 1e-5 of its largest magnitude; and the errors for wrong pixels and wrong files.

use std::path::PathBuf;

use burn::backend::Flex;
use burn::prelude::*;
use premier_io::SafetensorsFile;
use premier_text::{ClipConfig, ClipModel, ClipVisionConfig, ClipVisionEncoder, TextError};

type B = Flex;
/// Relative to the largest magnitude of the reference output.
const RTOL: f32 = 1e-5;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

fn config() -> ClipConfig {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("clip_model_tiny.json")).unwrap())
            .unwrap();
    serde_json::from_value(json["config"].clone()).unwrap()
}

fn model() -> ClipModel<B> {
    ClipModel::load(
        fixture("clip_model_tiny_weights.safetensors"),
        &config(),
        &Default::default(),
    )
    .unwrap()
}

fn tensor<const D: usize>(f: &SafetensorsFile, key: &str) -> Tensor<B, D> {
    f.read(key).unwrap().into_tensor(&Default::default())
}

fn assert_close<const D: usize>(what: &str, got: Tensor<B, D>, want: Tensor<B, D>) {
    assert_eq!(got.dims(), want.dims(), "{what}");
    let scale = want.clone().abs().max().into_scalar();
    let diff = (got - want).abs().max().into_scalar();
    eprintln!("{what}: max |diff| = {diff:e} (largest |value| {scale:e})");
    assert!(
        diff <= RTOL * scale,
        "{what}: {diff:e} > {RTOL:e} · {scale:e}"
    );
}

#[test]
fn clip_model_matches_transformers() {
    let f = SafetensorsFile::open(&fixture("clip_model_tiny.safetensors")).unwrap();
    let model = model();
    let pixels = tensor::<4>(&f, "pixel_values");
    let (hidden, pooled) = model.vision.try_forward(pixels.clone()).unwrap();
    assert_close(
        "vision last_hidden_state",
        hidden,
        tensor(&f, "vision_last_hidden_state"),
    );
    assert_close(
        "vision pooler_output",
        pooled,
        tensor(&f, "vision_pooler_output"),
    );
    let images = model.image_features(pixels).unwrap();
    assert_close(
        "image_features",
        images.clone(),
        tensor(&f, "image_features"),
    );
    let (shape, ids) = f.read_ids("input_ids").unwrap();
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, shape), &Default::default());
    let texts = model.text_features(ids).unwrap();
    assert_close("text_features", texts.clone(), tensor(&f, "text_features"));
    assert_close(
        "logits_per_image",
        model.logits_per_image(images, texts),
        tensor(&f, "logits_per_image"),
    );
}

#[test]
fn wrong_pixels_and_wrong_files_are_named_errors() {
    let model = model();
    let wrong = Tensor::<B, 4>::zeros([1, 3, 31, 32], &Default::default());
    let err = model.image_features(wrong).unwrap_err();
    assert!(
        matches!(&err, TextError::Image { reason } if reason.contains("[3, 32, 32]")),
        "{err}"
    );
    // The text tower's file has no vision tower: the missing key is named.
    let vision: ClipVisionConfig = config().vision_config;
    let err = ClipVisionEncoder::<B>::load(
        fixture("clip_text_tiny_weights.safetensors"),
        &vision,
        &Default::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("vision_model."), "{err}");
    // A config whose image is not whole patches is refused, naming the file.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    let mut json = serde_json::to_value(config()).unwrap();
    json["vision_config"]["patch_size"] = 5.into();
    std::fs::write(&path, json.to_string()).unwrap();
    let err = ClipConfig::from_json_file(&path).unwrap_err();
    assert!(
        err.to_string().contains("config.json") && err.to_string().contains("patch_size"),
        "{err}"
    );
}
