//! Parity with transformers (fixtures `t5_tiny`, `clip_text_tiny`): atol 1e-4 on outputs of
//! magnitude ~1 (fixture README).

use std::path::PathBuf;

use burn::backend::Flex;
use burn::prelude::*;
use premier_io::SafetensorsFile;
use premier_text::{
    relative_position_bucket, ClipTextConfig, ClipTextEncoder, T5Config, T5Encoder, TextError,
};

type B = Flex;
const ATOL: f32 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

fn config_json(name: &str) -> serde_json::Value {
    serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(fixture(name)).unwrap())
        .unwrap()["config"]
        .clone()
}

fn ids(f: &SafetensorsFile, key: &str) -> Tensor<B, 2, Int> {
    let (shape, data) = f.read_ids(key).unwrap();
    Tensor::from_data(TensorData::new(data, shape), &Default::default())
}

fn tensor<const D: usize>(f: &SafetensorsFile, key: &str) -> Tensor<B, D> {
    f.read(key).unwrap().into_tensor(&Default::default())
}

fn assert_close<const D: usize>(what: &str, got: Tensor<B, D>, want: Tensor<B, D>) {
    assert_eq!(got.dims(), want.dims(), "{what}");
    let diff = (got - want).abs().max().into_scalar();
    eprintln!("{what}: max |diff| = {diff:e}");
    assert!(diff <= ATOL, "{what}: {diff:e}");
}

fn t5() -> T5Encoder<B> {
    let config: T5Config = serde_json::from_value(config_json("t5_tiny.json")).unwrap();
    T5Encoder::load(
        fixture("t5_tiny_weights.safetensors"),
        &config,
        &Default::default(),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn t5_matches_transformers_without_mask() {
    let f = SafetensorsFile::open(&fixture("t5_tiny.safetensors")).unwrap();
    let model = t5();
    assert_close(
        "position_bias",
        model.position_bias(9, &Default::default()),
        tensor(&f, "position_bias"),
    );
    let hidden: Tensor<B, 4> = tensor(&f, "hidden_states");
    assert_close(
        "embeddings",
        model.embed(ids(&f, "input_ids")),
        hidden.narrow(0, 0, 1).squeeze_dim(0),
    );
    let out = model.forward(ids(&f, "input_ids"));
    assert_close("last_hidden_state", out, tensor(&f, "last_hidden_state"));
}

#[test]
fn t5_buckets_follow_transformers() {
    // Bidirectional, 32 buckets, max distance 128: exact below 8, log-spaced up to 15, then capped.
    let got: Vec<usize> = [-200, -128, -20, -8, -7, -1, 0, 1, 7, 8, 20, 127, 500]
        .iter()
        .map(|&r| relative_position_bucket(r, 32, 128))
        .collect();
    assert_eq!(got, vec![15, 15, 10, 8, 7, 1, 0, 17, 23, 24, 26, 31, 31]);
}

#[test]
fn clip_matches_transformers_and_pools_at_the_first_eos() {
    let f = SafetensorsFile::open(&fixture("clip_text_tiny.safetensors")).unwrap();
    let config: ClipTextConfig =
        serde_json::from_value(config_json("clip_text_tiny.json")).unwrap();
    let model = ClipTextEncoder::<B>::load(
        fixture("clip_text_tiny_weights.safetensors"),
        &config,
        &Default::default(),
    )
    .unwrap();
    let (hidden, pooled) = model.forward(ids(&f, "input_ids"));
    assert_close("last_hidden_state", hidden, tensor(&f, "last_hidden_state"));
    assert_close("pooler_output", pooled, tensor(&f, "pooler_output"));
}

#[test]
fn bad_ids_and_wrong_checkpoints_are_errors() {
    let model = t5();
    let bad = Tensor::<B, 2, Int>::from_data(
        TensorData::new(vec![5i64, 128], [1, 2]),
        &Default::default(),
    );
    assert!(matches!(
        model.try_forward(bad),
        Err(TextError::TokenOutOfRange {
            id: 128,
            vocab: 128
        })
    ));

    // A CLIP file given to the T5 loader says which key it lacks.
    let config: T5Config = serde_json::from_value(config_json("t5_tiny.json")).unwrap();
    let err = T5Encoder::<B>::load(
        fixture("clip_text_tiny_weights.safetensors"),
        &config,
        &Default::default(),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("encoder.embed_tokens.weight"),
        "{err}"
    );
}
