//! Saving and loading adapters in the official layout, the ablation switches, and bad files.

use std::collections::BTreeSet;
use std::path::PathBuf;

use burn::backend::Flex;
use burn::prelude::*;
use burn::tensor::Distribution;
use premier_adapter::{AdapterConfig, AdapterError, PreferenceAdapter};
use premier_io::LoadError;
use premier_io::{write_safetensors, HostTensor, SafetensorsFile, SaveDtype};

type B = Flex;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

fn fixture_config() -> AdapterConfig {
    AdapterConfig {
        text_dim: 32,
        user_dim: 8,
        width: 32,
        heads: 8,
        layers: 3,
        hidden: 32,
        blocks: 2,
        shared: true,
        distinct: true,
    }
}

fn inputs() -> (Tensor<B, 3>, Tensor<B, 3>) {
    let device = Default::default();
    B::seed(&device, 1);
    (
        Tensor::random([2, 5, 32], Distribution::Normal(0.0, 1.0), &device),
        Tensor::random([2, 4, 8], Distribution::Normal(0.0, 1.0), &device),
    )
}

fn max_diff<const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> f32 {
    (a - b).abs().max().into_scalar()
}

#[test]
fn saved_keys_are_exactly_the_official_ones_and_reload_identically() {
    let device = Default::default();
    let dir = tempfile::tempdir().unwrap();
    let adapter = PreferenceAdapter::<B>::load(
        fixture("adapter_small_weights.safetensors"),
        &fixture_config(),
        &device,
    )
    .unwrap();
    let path = dir.path().join("mod_adapter.safetensors");
    adapter.save(&path, SaveDtype::F32).unwrap();

    let official: BTreeSet<String> =
        SafetensorsFile::open(&fixture("adapter_small_weights.safetensors"))
            .unwrap()
            .keys()
            .map(str::to_string)
            .collect();
    let saved_file = SafetensorsFile::open(&path).unwrap();
    let saved: BTreeSet<String> = saved_file.keys().map(str::to_string).collect();
    assert_eq!(saved, official);
    // Same values as the official file, key by key (PyTorch layout restored on save).
    let official_file =
        SafetensorsFile::open(&fixture("adapter_small_weights.safetensors")).unwrap();
    for key in &official {
        assert_eq!(
            saved_file.read(key).unwrap(),
            official_file.read(key).unwrap(),
            "{key}"
        );
    }

    let back = PreferenceAdapter::<B>::load(&path, &fixture_config(), &device).unwrap();
    let (text, user) = inputs();
    let a = adapter.forward(text.clone(), user.clone());
    let b = back.forward(text, user);
    assert_eq!(max_diff(a.shared.unwrap(), b.shared.unwrap()), 0.0);
    assert_eq!(max_diff(a.distinct.unwrap(), b.distinct.unwrap()), 0.0);

    // bf16, as the released file: loads and stays close.
    adapter.save(&path, SaveDtype::Bf16).unwrap();
    let half = PreferenceAdapter::<B>::load(&path, &fixture_config(), &device).unwrap();
    let (text, user) = inputs();
    let c = half.forward(text.clone(), user.clone());
    let drift = max_diff(
        c.shared.unwrap(),
        adapter.forward(text, user).shared.unwrap(),
    );
    assert!(drift > 0.0 && drift < 0.1, "{drift}");
}

#[test]
fn fresh_adapter_follows_the_official_init() {
    let device = Default::default();
    B::seed(&device, 2);
    let config = AdapterConfig::small(16, 8, 32, 3);
    let adapter = PreferenceAdapter::<B>::init(&config, &device).unwrap();
    let params = adapter.to_tensors();
    for (key, t) in &params {
        let n = t.data.len() as f32;
        let mean = t.data.iter().sum::<f32>() / n;
        let std = (t.data.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / n).sqrt();
        if key.ends_with("bias") {
            assert!(t.data.iter().all(|&v| v == 0.0), "{key}");
        } else if t.data.len() >= 256 {
            assert!(
                (std - 0.01).abs() < 0.002 && mean.abs() < 0.002,
                "{key}: mean {mean} std {std}"
            );
        }
    }
    // Δ of a fresh adapter is tiny: LayerNorm weights ~ N(0, 1e-4).
    let delta = adapter.forward(
        Tensor::random([1, 5, 16], Distribution::Normal(0.0, 1.0), &device),
        Tensor::random([1, 4, 8], Distribution::Normal(0.0, 1.0), &device),
    );
    assert!(delta.distinct.unwrap().abs().max().into_scalar() < 0.1);
}

#[test]
fn switched_off_nets_are_absent_and_files_must_agree() {
    let device = Default::default();
    let only_distinct = AdapterConfig {
        shared: false,
        ..fixture_config()
    };
    let (text, user) = inputs();
    // A full file for a one-net config: the unused `net.*` keys are refused (strict).
    match PreferenceAdapter::<B>::load(
        fixture("adapter_small_weights.safetensors"),
        &only_distinct,
        &device,
    ) {
        Err(AdapterError::File(LoadError::UnexpectedKey { key, count, .. })) => {
            assert!(key.starts_with("net."), "{key}");
            assert_eq!(count, 50);
        }
        other => panic!("{other:?}"),
    }
    let adapter = PreferenceAdapter::<B>::init(&only_distinct, &device).unwrap();
    let delta = adapter.forward(text, user);
    assert!(delta.shared.is_none() && delta.distinct.is_some());
    assert!(adapter
        .to_tensors()
        .iter()
        .all(|(k, _)| k.starts_with("net2.")));
    let off = AdapterConfig {
        shared: false,
        distinct: false,
        ..fixture_config()
    };
    assert!(matches!(
        PreferenceAdapter::<B>::init(&off, &device),
        Err(AdapterError::Config(_))
    ));
}

#[test]
fn bad_files_name_file_and_key() {
    let device = Default::default();
    let dir = tempfile::tempdir().unwrap();
    let official = SafetensorsFile::open(&fixture("adapter_small_weights.safetensors")).unwrap();
    let all: Vec<(String, HostTensor)> = official
        .keys()
        .map(|k| (k.to_string(), official.read(k).unwrap()))
        .collect();
    let path = dir.path().join("bad.safetensors");

    let missing: Vec<_> = all
        .iter()
        .filter(|(k, _)| k != "net2.perceiver_blocks.1.ln_ff.linear.bias")
        .cloned()
        .collect();
    write_safetensors(&path, &missing, SaveDtype::F32).unwrap();
    match PreferenceAdapter::<B>::load(&path, &fixture_config(), &device) {
        Err(AdapterError::File(LoadError::MissingKey { key, .. })) => {
            assert_eq!(key, "net2.perceiver_blocks.1.ln_ff.linear.bias")
        }
        other => panic!("{other:?}"),
    }

    let mut nan = all.clone();
    let entry = nan
        .iter_mut()
        .find(|(k, _)| k == "net.perceiver_blocks.0.attn.in_proj_weight")
        .unwrap();
    entry.1.data[7] = f32::NAN;
    // premier's writer refuses NaN, so the bad file is written with the raw crate.
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = nan
        .iter()
        .map(|(k, t)| {
            let b = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
            (k.clone(), t.shape.clone(), b)
        })
        .collect();
    let views = bytes.iter().map(|(k, shape, b)| {
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b);
        (k.clone(), view.unwrap())
    });
    safetensors::serialize_to_file(views, None, &path).unwrap();
    match PreferenceAdapter::<B>::load(&path, &fixture_config(), &device) {
        Err(AdapterError::File(LoadError::NonFinite { key, path: p })) => {
            assert_eq!(
                (key.as_str(), p),
                ("net.perceiver_blocks.0.attn.in_proj_weight", path.clone())
            )
        }
        other => panic!("{other:?}"),
    }

    // The released sizes against the tiny file: the first tensor read reports both shapes.
    match PreferenceAdapter::<B>::load(
        fixture("adapter_small_weights.safetensors"),
        &AdapterConfig::released(),
        &device,
    ) {
        Err(AdapterError::File(LoadError::ShapeMismatch {
            key,
            expected,
            found,
            ..
        })) => {
            assert_eq!(
                (key.as_str(), expected, found),
                ("net.text_proj_in.weight", vec![3072, 4096], vec![32, 32])
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn param_count_matches_the_built_adapters() {
    let device = Default::default();
    for config in [
        fixture_config(),
        AdapterConfig::small(24, 6, 16, 3),
        AdapterConfig {
            shared: false,
            ..AdapterConfig::small(24, 6, 16, 3)
        },
        AdapterConfig {
            distinct: false,
            layers: 1,
            ..fixture_config()
        },
    ] {
        let adapter = PreferenceAdapter::<B>::init(&config, &device).unwrap();
        assert_eq!(
            config.param_count(),
            adapter.num_params() as u64,
            "{config:?}"
        );
    }
    // The released adapters (the count alone; building them would take 3.6 GB).
    assert_eq!(AdapterConfig::released().param_count(), 907_229_184);
}
