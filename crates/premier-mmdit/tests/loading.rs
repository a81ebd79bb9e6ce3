//! Checkpoint loading: layouts and dtypes that must load to the same model, and bad files that must
//! fail with an error naming the file and key. Bad files are written by the tests.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use burn::prelude::*;
use common::{fixture, max_abs_diff, Fixture, B};
use premier_io::{HostTensor, SafetensorsFile};
use premier_mmdit::{Flux, FluxConfig, FluxInput, LoadError, LoadOptions};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

fn tiny_config() -> FluxConfig {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("tiny_flux.json")).unwrap()).unwrap();
    serde_json::from_value(json["bfl_params"].clone()).unwrap()
}

/// All tensors of a fixture weight file, by name.
fn read_all(name: &str) -> BTreeMap<String, HostTensor> {
    let file = SafetensorsFile::open(&fixture(name)).unwrap();
    let keys: Vec<String> = file.keys().map(str::to_string).collect();
    keys.into_iter()
        .map(|k| (k.clone(), file.read(&k).unwrap()))
        .collect()
}

/// Stored bytes of one tensor.
#[derive(Clone)]
struct Raw {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

fn raw_f32(t: &HostTensor) -> Raw {
    Raw {
        dtype: Dtype::F32,
        shape: t.shape.clone(),
        bytes: t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

fn write(path: &Path, tensors: &BTreeMap<String, Raw>) {
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(k, r)| {
            (
                k.clone(),
                TensorView::new(r.dtype, r.shape.clone(), &r.bytes).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

fn bfl_raw() -> BTreeMap<String, Raw> {
    read_all("tiny_flux_weights_bfl.safetensors")
        .iter()
        .map(|(k, t)| (k.clone(), raw_f32(t)))
        .collect()
}

fn input() -> FluxInput<B> {
    let f = Fixture::open("tiny_flux.safetensors");
    FluxInput {
        img: f.tensor("hidden_states"),
        img_ids: f.tensor::<2>("img_ids").unsqueeze_dim(0),
        txt: f.tensor("encoder_hidden_states"),
        txt_ids: f.tensor::<2>("txt_ids").unsqueeze_dim(0),
        timesteps: f.tensor("timestep"),
        y: f.tensor("pooled_projections"),
        guidance: Some(f.tensor("guidance")),
    }
}

fn load(path: &Path) -> Result<Flux<B>, LoadError> {
    Flux::load(path, &tiny_config(), &Default::default())
}

fn reference_output() -> Tensor<B, 3> {
    Fixture::open("tiny_flux.safetensors").tensor("output")
}

/// bf16 and f16 files load to exactly the model of an f32 file holding the same rounded values.
#[test]
fn half_precision_files_convert_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let f32s = read_all("tiny_flux_weights_bfl.safetensors");
    type Convert = (Dtype, fn(f32) -> (f32, [u8; 2]));
    let cases: [Convert; 2] = [
        (Dtype::BF16, |v| {
            let h = half::bf16::from_f32(v);
            (h.to_f32(), h.to_le_bytes())
        }),
        (Dtype::F16, |v| {
            let h = half::f16::from_f32(v);
            (h.to_f32(), h.to_le_bytes())
        }),
    ];
    for (dtype, convert) in cases {
        let mut half_file = BTreeMap::new();
        let mut rounded_file = BTreeMap::new();
        for (k, t) in &f32s {
            let (rounded, bytes): (Vec<f32>, Vec<[u8; 2]>) =
                t.data.iter().map(|&v| convert(v)).unzip();
            half_file.insert(
                k.clone(),
                Raw {
                    dtype,
                    shape: t.shape.clone(),
                    bytes: bytes.concat(),
                },
            );
            rounded_file.insert(
                k.clone(),
                raw_f32(&HostTensor {
                    shape: t.shape.clone(),
                    data: rounded,
                }),
            );
        }
        let (half_path, rounded_path) = (
            dir.path().join("half.safetensors"),
            dir.path().join("rounded.safetensors"),
        );
        write(&half_path, &half_file);
        write(&rounded_path, &rounded_file);
        let a = load(&half_path).unwrap().forward(input(), None);
        let b = load(&rounded_path).unwrap().forward(input(), None);
        assert_eq!(max_abs_diff(a.clone(), b), 0.0, "{dtype:?}");
        // Rounding the weights moves the output, but not far.
        let drift = max_abs_diff(a, reference_output());
        assert!(drift > 0.0 && drift < 0.1, "{dtype:?} drift {drift}");
    }
}

/// A ComfyUI-style file: transformer under `model.diffusion_model.`, other models beside it.
#[test]
fn prefixed_single_file_loads_and_ignores_other_models() {
    let dir = tempfile::tempdir().unwrap();
    let mut tensors: BTreeMap<String, Raw> = bfl_raw()
        .into_iter()
        .map(|(k, v)| (format!("model.diffusion_model.{k}"), v))
        .collect();
    let extra = raw_f32(&HostTensor {
        shape: vec![2],
        data: vec![1.0, 2.0],
    });
    tensors.insert("vae.decoder.conv_in.bias".into(), extra.clone());
    let path = dir.path().join("flux1-dev-full.safetensors");
    write(&path, &tensors);
    let out = load(&path).unwrap().forward(input(), None);
    assert!(max_abs_diff(out, reference_output()) <= 2e-5);

    // A stray key under the prefix is refused in strict mode.
    tensors.insert(
        "model.diffusion_model.double_blocks.0.lora_up.weight".into(),
        extra,
    );
    write(&path, &tensors);
    match load(&path) {
        Err(LoadError::UnexpectedKey {
            key,
            count,
            path: p,
        }) => {
            assert_eq!(key, "model.diffusion_model.double_blocks.0.lora_up.weight");
            assert_eq!((count, p), (1, path.clone()));
        }
        other => panic!("expected UnexpectedKey, got {other:?}"),
    }
    let lenient = Flux::<B>::load_with(
        &path,
        &tiny_config(),
        &Default::default(),
        LoadOptions {
            strict: false,
            ..LoadOptions::default()
        },
    );
    assert!(lenient.is_ok());
}

/// A diffusers pipeline folder whose transformer is split into two shards with an index.
#[test]
fn sharded_diffusers_folder_loads() {
    let dir = tempfile::tempdir().unwrap();
    let transformer = dir.path().join("transformer");
    std::fs::create_dir(&transformer).unwrap();
    let all: Vec<(String, Raw)> = read_all("tiny_flux_weights_diffusers.safetensors")
        .iter()
        .map(|(k, t)| (k.clone(), raw_f32(t)))
        .collect();
    let (first, second) = all.split_at(all.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (i, part) in [first, second].iter().enumerate() {
        let name = format!("diffusion_pytorch_model-0000{}-of-00002.safetensors", i + 1);
        write(&transformer.join(&name), &part.iter().cloned().collect());
        for (k, _) in part.iter() {
            weight_map.insert(k.clone(), name.clone().into());
        }
    }
    let index = serde_json::json!({ "metadata": { "total_size": 0 }, "weight_map": weight_map });
    std::fs::write(
        transformer.join("diffusion_pytorch_model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    for path in [dir.path().to_path_buf(), transformer.clone()] {
        let out = load(&path).unwrap().forward(input(), None);
        assert!(
            max_abs_diff(out, reference_output()) <= 2e-5,
            "{}",
            path.display()
        );
    }

    // An index naming a shard that is not there names that shard.
    std::fs::remove_file(transformer.join("diffusion_pytorch_model-00002-of-00002.safetensors"))
        .unwrap();
    match load(&transformer) {
        Err(LoadError::Io { path, .. }) => {
            assert!(path.ends_with("diffusion_pytorch_model-00002-of-00002.safetensors"))
        }
        other => panic!("expected Io, got {other:?}"),
    }
    // A broken index is reported as such.
    std::fs::write(
        transformer.join("diffusion_pytorch_model.safetensors.index.json"),
        "{\"weights\": 3}",
    )
    .unwrap();
    assert!(matches!(
        load(&transformer),
        Err(LoadError::BadIndex { .. })
    ));
}

#[test]
fn missing_key_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.safetensors");
    let mut tensors = bfl_raw();
    tensors.remove("double_blocks.1.txt_mlp.2.bias");
    write(&path, &tensors);
    match load(&path) {
        Err(LoadError::MissingKey { key, path: p }) => {
            assert_eq!((key.as_str(), p), ("double_blocks.1.txt_mlp.2.bias", path));
        }
        other => panic!("expected MissingKey, got {other:?}"),
    }
}

#[test]
fn wrong_shape_is_named_with_both_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shape.safetensors");
    let mut tensors = bfl_raw();
    tensors.insert(
        "txt_in.bias".into(),
        raw_f32(&HostTensor {
            shape: vec![33],
            data: vec![0.0; 33],
        }),
    );
    write(&path, &tensors);
    let err = load(&path).unwrap_err();
    match &err {
        LoadError::ShapeMismatch {
            key,
            expected,
            found,
            ..
        } => {
            assert_eq!(
                (key.as_str(), expected.as_slice(), found.as_slice()),
                ("txt_in.bias", &[32][..], &[33][..])
            );
        }
        other => panic!("expected ShapeMismatch, got {other:?}"),
    }
    assert!(err.to_string().contains("shape.safetensors"), "{err}");
}

#[test]
fn unsupported_dtype_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ints.safetensors");
    let mut tensors = bfl_raw();
    tensors.insert(
        "txt_in.bias".into(),
        Raw {
            dtype: Dtype::I32,
            shape: vec![32],
            bytes: vec![0; 128],
        },
    );
    write(&path, &tensors);
    match load(&path) {
        Err(LoadError::UnsupportedDtype { key, dtype, .. }) => {
            assert_eq!((key.as_str(), dtype.as_str()), ("txt_in.bias", "I32"))
        }
        other => panic!("expected UnsupportedDtype, got {other:?}"),
    }
}

#[test]
fn truncated_and_garbage_files_are_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture("tiny_flux_weights_bfl.safetensors")).unwrap();
    let path = dir.path().join("truncated.safetensors");
    std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    let err = load(&path).unwrap_err();
    assert!(
        matches!(err, LoadError::Corrupt { ref reason, .. } if reason.contains("truncated")),
        "{err}"
    );
    // The tensor that runs past the end is named, with its byte range.
    let reason = err.to_string();
    assert!(
        reason.contains("tensor `") && reason.contains("of the data, but the file holds only"),
        "{reason}"
    );

    // Bytes after the data are not called a truncation.
    let appended = dir.path().join("appended.safetensors");
    let mut longer = bytes.clone();
    longer.extend_from_slice(&[0u8; 7]);
    std::fs::write(&appended, &longer).unwrap();
    let err = load(&appended).unwrap_err();
    assert!(
        matches!(err, LoadError::Corrupt { ref reason, .. }
            if reason.starts_with("7 bytes after the last tensor's data")),
        "{err}"
    );
    // A folder where a file was expected says so.
    let err = SafetensorsFile::open(dir.path()).err().unwrap();
    assert!(err.to_string().contains("is a folder"), "{err}");

    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"definitely not a checkpoint").unwrap();
    assert!(matches!(load(&garbage), Err(LoadError::Corrupt { .. })));

    assert!(matches!(
        load(&dir.path().join("absent.safetensors")),
        Err(LoadError::Io { .. })
    ));
    // An empty folder: no safetensors there, nor a diffusers pipeline's `transformer/`.
    let empty = tempfile::tempdir().unwrap();
    let err = load(empty.path()).err().unwrap();
    assert!(matches!(err, LoadError::NoSafetensors { .. }), "{err:?}");
    assert!(err.to_string().contains("`transformer/`"), "{err}");
    // Safetensors holding no FLUX transformer in either layout.
    let other = dir.path().join("other.safetensors");
    premier_io::write_safetensors(
        &other,
        &[(
            "encoder.weight".to_string(),
            premier_io::HostTensor {
                shape: vec![2],
                data: vec![1.0, 2.0],
            },
        )],
        premier_io::SaveDtype::F32,
    )
    .unwrap();
    let err = load(&other).err().unwrap();
    assert!(matches!(err, LoadError::UnknownLayout { .. }), "{err:?}");
    assert!(err.to_string().contains("no FLUX transformer"), "{err}");
}

#[test]
fn config_mismatch_names_the_field() {
    let path = fixture("tiny_flux_weights_bfl.safetensors");
    let device = Default::default();
    let cases: [(&str, FluxConfig); 4] = [
        (
            "depth",
            FluxConfig {
                depth: 3,
                ..tiny_config()
            },
        ),
        (
            "depth_single_blocks",
            FluxConfig {
                depth_single_blocks: 1,
                ..tiny_config()
            },
        ),
        (
            "guidance_embed",
            FluxConfig {
                guidance_embed: false,
                ..tiny_config()
            },
        ),
        (
            "context_in_dim",
            FluxConfig {
                context_in_dim: 64,
                ..tiny_config()
            },
        ),
    ];
    for (want, config) in cases {
        match Flux::<B>::load(&path, &config, &device) {
            Err(LoadError::ConfigMismatch { field, .. }) => assert_eq!(field, want),
            other => panic!("{want}: expected ConfigMismatch, got {other:?}"),
        }
    }
    // The dev config against a tiny file fails on the first visible size.
    let err = Flux::<B>::load(&path, &FluxConfig::dev(), &device).unwrap_err();
    assert!(
        matches!(
            err,
            LoadError::ConfigMismatch {
                field: "hidden_size",
                in_config: 3072,
                in_file: 32,
                ..
            }
        ),
        "{err}"
    );
}

/// Loading straight into bf16 (each tensor cast as it arrives) gives the model an f32 load cast
/// afterwards would: the same weights bit for bit, the same output, returned in f32.
#[test]
fn loads_straight_into_bf16() {
    let path = fixture("tiny_flux_weights_bfl.safetensors");
    let bf16 = burn::tensor::FloatDType::BF16;
    let direct = Flux::<B>::load_with(
        &path,
        &tiny_config(),
        &Default::default(),
        LoadOptions {
            dtype: Some(bf16),
            ..LoadOptions::default()
        },
    )
    .unwrap();
    let cast = load(&path).unwrap().with_weight_dtype(bf16);
    assert_eq!(direct.weight_dtype(), burn::tensor::DType::BF16);
    let (a, b) = (direct.forward(input(), None), cast.forward(input(), None));
    assert_eq!(a.dtype(), burn::tensor::DType::F32);
    assert_eq!(max_abs_diff(a.clone(), b), 0.0);
    // And it is the bf16 model, close to the reference but not equal to it.
    let err = max_abs_diff(a, reference_output());
    assert!(err > 0.0 && err < 0.1, "{err}");
}

/// The error of opening a file of `header` (JSON) and `data_bytes` zero bytes written at `path`.
fn open_raw(path: &std::path::Path, header: &[u8], data_bytes: usize) -> String {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend(std::iter::repeat_n(0u8, data_bytes));
    std::fs::write(path, &bytes).unwrap();
    SafetensorsFile::open(path).err().unwrap().to_string()
}

#[test]
fn overlapping_offsets_name_both_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("overlap.safetensors");
    // `a` claims 12 bytes for a 2-float tensor (its end is wrong), so it overlaps `b`.
    let header = br#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}"#;
    let err = open_raw(&path, header, 16);
    assert!(
        err.contains("`b` spans bytes 8..16")
            && err.contains("`a` before it spans 0..12")
            && err.contains("overlap"),
        "{err}"
    );
}

#[test]
fn a_shape_that_disagrees_with_its_offsets_names_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shape.safetensors");
    // `b` says [3] floats (12 bytes) but its offsets span 8.
    let header = br#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[3],"data_offsets":[8,16]}}"#;
    let err = open_raw(&path, header, 16);
    assert!(
        err.contains("shape.safetensors")
            && err.contains("`b` is F32 of shape [3], 12 bytes")
            && err.contains("8..16 span 8 bytes"),
        "{err}"
    );
}

/// Random byte mutations of a valid file (mostly in its header, where the offsets and shapes
/// are) and random truncations: opening and reading every tensor must always end in `Ok` or a
/// typed error, never a panic. A fixed-seed xorshift keeps the cases reproducible.
#[test]
fn mutated_headers_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let valid = std::fs::read(fixture("tiny_flux_weights_bfl.safetensors")).unwrap();
    let header_len = 8 + u64::from_le_bytes(valid[..8].try_into().unwrap()) as usize;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let path = dir.path().join("mutated.safetensors");
    for case in 0..400 {
        let mut bytes = valid.clone();
        match case % 4 {
            // A few bytes of the header (digits of offsets and shapes, quotes, brackets).
            0 | 1 => {
                for _ in 0..1 + next() % 4 {
                    let at = (next() as usize) % header_len;
                    bytes[at] = (next() % 256) as u8;
                }
            }
            // The length prefix.
            2 => bytes[(next() % 8) as usize] = (next() % 256) as u8,
            // Cut anywhere.
            _ => bytes.truncate((next() as usize) % bytes.len()),
        }
        std::fs::write(&path, &bytes).unwrap();
        let outcome = std::panic::catch_unwind(|| {
            if let Ok(file) = SafetensorsFile::open(&path) {
                let keys: Vec<String> = file.keys().map(str::to_string).collect();
                for key in keys {
                    let _ = file.read(&key);
                    let _ = file.read_ids(&key);
                    let _ = file.read_f64(&key);
                }
            }
        });
        assert!(outcome.is_ok(), "case {case} panicked");
    }
}
