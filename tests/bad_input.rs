//! Bad input a careful user can give (issue 13): each case must end in a typed error that names
//! the offending file, key or flag — never a panic, a silent wrong result or lost data.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::backend::Flex;
use premier::mmdit::load::{write_safetensors, HostTensor, SafetensorsFile, SaveDtype};
use premier::mmdit::{Flux, FluxConfig, LoadError};
use premier::synth::base::SynthBase;
use premier::text::{ClipTextConfig, ClipTextEncoder, T5Config, T5Encoder};
use premier::vae::{Autoencoder, AutoencoderConfig};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

type B = Flex;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn json(name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name)).unwrap()).unwrap()
}

/// Copies the safetensors file `src` to `dst` (f32) with element 0 of its first tensor (by
/// name) set to `value`; returns that tensor's name. Written with the raw `safetensors` crate,
/// since premier's own writer refuses non-finite values.
fn poisoned_copy(src: &Path, dst: &Path, value: f32) -> String {
    let file = SafetensorsFile::open(src).unwrap();
    let mut tensors: BTreeMap<String, HostTensor> = file
        .keys()
        .map(|k| (k.to_string(), file.read(k).unwrap()))
        .collect();
    let key = tensors.keys().next().unwrap().clone();
    tensors.get_mut(&key).unwrap().data[0] = value;
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(k, t)| {
            let b = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
            (k.clone(), t.shape.clone(), b)
        })
        .collect();
    let views = bytes.iter().map(|(k, shape, b)| {
        (
            k.clone(),
            TensorView::new(Dtype::F32, shape.clone(), b).unwrap(),
        )
    });
    safetensors::serialize_to_file(views, None, dst).unwrap();
    key
}

/// The error must name `path` and `key` and say why. The model crates wrap `LoadError`
/// transparently, so the message is what is checked; Flux's error is checked by type as well.
fn assert_non_finite(err: &dyn std::error::Error, path: &Path, key: &str) {
    let message = err.to_string();
    assert!(
        message.contains(&path.display().to_string())
            && message.contains(&format!("`{key}`"))
            && message.contains("NaN or infinite"),
        "expected NaN/inf in `{key}` of {}, got: {message}",
        path.display()
    );
}

#[test]
fn non_finite_weights_are_refused_by_every_model_loader() {
    let dir = tempfile::tempdir().unwrap();
    let device = Default::default();
    for (i, value) in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY]
        .into_iter()
        .enumerate()
    {
        let flux_config: FluxConfig =
            serde_json::from_value(json("tiny_flux.json")["bfl_params"].clone()).unwrap();
        for name in [
            "tiny_flux_weights_bfl.safetensors",
            "tiny_flux_weights_diffusers.safetensors",
        ] {
            let path = dir.path().join(format!("{i}-{name}"));
            let key = poisoned_copy(&fixture(name), &path, value);
            let err = Flux::<B>::load(&path, &flux_config, &device).unwrap_err();
            assert_non_finite(&err, &path, &key);
            assert!(
                matches!(&err, LoadError::NonFinite { path: p, key: k } if *p == path && *k == key)
            );
        }

        let vae_config: AutoencoderConfig =
            serde_json::from_value(json("vae_tiny.json")["diffusers_config"].clone()).unwrap();
        for name in [
            "vae_tiny_weights_bfl.safetensors",
            "vae_tiny_weights_diffusers.safetensors",
        ] {
            let path = dir.path().join(format!("{i}-{name}"));
            let key = poisoned_copy(&fixture(name), &path, value);
            let err = Autoencoder::<B>::load(&path, &vae_config, &device).unwrap_err();
            assert_non_finite(&err, &path, &key);
        }

        let path = dir.path().join(format!("{i}-t5.safetensors"));
        let key = poisoned_copy(&fixture("t5_tiny_weights.safetensors"), &path, value);
        let t5_config: T5Config =
            serde_json::from_value(json("t5_tiny.json")["config"].clone()).unwrap();
        let err = T5Encoder::<B>::load(&path, &t5_config, &device).unwrap_err();
        assert_non_finite(&err, &path, &key);

        let path = dir.path().join(format!("{i}-clip.safetensors"));
        let key = poisoned_copy(&fixture("clip_text_tiny_weights.safetensors"), &path, value);
        let clip_config: ClipTextConfig =
            serde_json::from_value(json("clip_text_tiny.json")["config"].clone()).unwrap();
        let err = ClipTextEncoder::<B>::load(&path, &clip_config, &device).unwrap_err();
        assert_non_finite(&err, &path, &key);

        // The synth world's base, both of its weight files.
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/premier-synth/base");
        for poisoned in ["flux.safetensors", "text.safetensors"] {
            let base = dir.path().join(format!("{i}-base-{poisoned}"));
            std::fs::create_dir(&base).unwrap();
            for f in [
                "config.json",
                "tokenizer.json",
                "flux.safetensors",
                "text.safetensors",
            ] {
                std::fs::copy(shipped.join(f), base.join(f)).unwrap();
            }
            let path = base.join(poisoned);
            let key = poisoned_copy(&shipped.join(poisoned), &path, value);
            let err = SynthBase::<B>::load(&base, &device).unwrap_err();
            assert_non_finite(&err, &path, &key);
        }
    }
}

#[test]
fn nothing_non_finite_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("table.safetensors");
    let good = HostTensor {
        shape: vec![2],
        data: vec![1.0, 2.0],
    };
    let bad = HostTensor {
        shape: vec![3],
        data: vec![0.0, f32::NAN, 1.0],
    };
    for dtype in [SaveDtype::F32, SaveDtype::Bf16] {
        let err = write_safetensors(
            &path,
            &[("good".into(), good.clone()), ("emb".into(), bad.clone())],
            dtype,
        )
        .unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, LoadError::Write { .. }), "{message}");
        assert!(
            message.contains("`emb`") && message.contains("NaN"),
            "{message}"
        );
        assert!(!path.exists(), "a refused write left {}", path.display());
    }
    // The same call with finite values writes the file.
    write_safetensors(&path, &[("good".into(), good)], SaveDtype::F32).unwrap();
    assert!(path.exists());
}
