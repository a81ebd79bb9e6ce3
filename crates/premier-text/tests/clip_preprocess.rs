//! CLIP's image preprocessing against transformers' `CLIPImageProcessorPil` on a real non-square
//! photo (`clip_preprocess` fixture, tests/fixtures/README.md §12): the resized and cropped bytes
//! exactly at 224 (landscape and portrait), the normalized pixels within 1e-5 at a small size.

use std::path::PathBuf;

use burn::backend::Flex;
use burn::prelude::*;
use premier_io::SafetensorsFile;
use premier_text::{ClipImageProcessor, TextError};

type B = Flex;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

/// chelsea.png (451 × 300), and the same photo turned 90° clockwise.
fn photos() -> [(&'static str, image::RgbImage); 2] {
    let photo = image::open(fixture("images/chelsea.png"))
        .unwrap()
        .to_rgb8();
    let portrait = image::imageops::rotate90(&photo);
    [("landscape", photo), ("portrait", portrait)]
}

#[test]
fn resized_and_cropped_bytes_equal_pil() {
    let f = SafetensorsFile::open(&fixture("clip_preprocess.safetensors")).unwrap();
    let processor = ClipImageProcessor::default();
    for (name, photo) in photos() {
        let ours = processor.resize_and_crop(&photo).unwrap();
        assert_eq!(ours.dimensions(), (224, 224), "{name}");
        let (shape, theirs) = f.read_ids(&format!("{name}_224_bytes")).unwrap();
        assert_eq!(shape, [3, 224, 224]);
        let mut differ = 0;
        for c in 0..3 {
            for (i, p) in ours.pixels().enumerate() {
                if p.0[c] as i64 != theirs[c * 224 * 224 + i] {
                    differ += 1;
                }
            }
        }
        assert_eq!(differ, 0, "{name}: {differ} bytes differ from PIL's");
    }
}

#[test]
fn normalized_pixels_match_the_processor() {
    let f = SafetensorsFile::open(&fixture("clip_preprocess.safetensors")).unwrap();
    let small = ClipImageProcessor {
        shortest_edge: 64,
        crop: 56,
        ..ClipImageProcessor::default()
    };
    for (name, photo) in photos() {
        let ours = small
            .pixels::<B>(std::slice::from_ref(&photo), &Default::default())
            .unwrap();
        let theirs: Tensor<B, 3> = f
            .read(&format!("{name}_64_56_pixel_values"))
            .unwrap()
            .into_tensor(&Default::default());
        let diff = (ours.reshape([3, 56, 56]) - theirs)
            .abs()
            .max()
            .into_scalar();
        assert!(diff <= 1e-5, "{name}: max |diff| {diff:e}");
    }
}

#[test]
fn bad_settings_and_images_are_errors() {
    let wide = ClipImageProcessor {
        crop: 300,
        ..ClipImageProcessor::default()
    };
    let photo = image::RgbImage::new(40, 30);
    assert!(matches!(
        wide.resize_and_crop(&photo),
        Err(TextError::Image { .. })
    ));
    let empty = image::RgbImage::new(0, 30);
    let err = ClipImageProcessor::default()
        .resize_and_crop(&empty)
        .unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("preprocessor_config.json");
    let config = |resample: u32| {
        let text = format!(
            r#"{{"size": {{"shortest_edge": 224}}, "crop_size": {{"height": 224, "width": 224}},
                "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "resample": {resample}}}"#
        );
        std::fs::write(&path, text).unwrap();
    };
    config(2);
    let err = ClipImageProcessor::from_json_file(&path).unwrap_err();
    assert!(err.to_string().contains("resample 2"), "{err}");
    config(3);
    let read = ClipImageProcessor::from_json_file(&path).unwrap();
    assert_eq!(
        (read.shortest_edge, read.crop, read.mean),
        (224, 224, [0.5; 3])
    );
}
