//! The metrics on the tiny CLIP fixture (`clip_model_tiny`, random weights, so the numbers mean
//! nothing about images; what is checked is what must hold for any CLIP): CLIP-T2I equals the
//! model's own cosine, an image is closest to itself, win rates count wins, ties and losses, and
//! mismatched inputs are errors.

use std::path::PathBuf;

use burn::backend::Flex;
use image::RgbImage;
use premier_eval::{
    clip_score, win_rate, ClipPreference, ClipScorer, EvalError, MeanSe, PreferenceScorer,
};
use premier_text::{ClipConfig, ClipImageProcessor, ClipModel, PromptTokenizer};

type B = Flex;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

/// The tiny CLIP (32-pixel images), its word-level tokenizer and a 32-pixel preprocessing.
fn scorer() -> ClipScorer<B> {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("clip_model_tiny.json")).unwrap())
            .unwrap();
    let config: ClipConfig = serde_json::from_value(json["config"].clone()).unwrap();
    let device = Default::default();
    ClipScorer {
        model: ClipModel::load(
            fixture("clip_model_tiny_weights.safetensors"),
            &config,
            &device,
        )
        .unwrap(),
        processor: ClipImageProcessor {
            shortest_edge: 32,
            crop: 32,
            ..ClipImageProcessor::default()
        },
        tokenizer: PromptTokenizer::clip(fixture("tiny_tokenizers/clip.json")).unwrap(),
        device,
    }
}

/// The photo, and the photo mirrored: two different images.
fn photos() -> (RgbImage, RgbImage) {
    let photo = image::open(fixture("images/chelsea.png"))
        .unwrap()
        .to_rgb8();
    let mirrored = image::imageops::flip_horizontal(&photo);
    (photo, mirrored)
}

#[test]
fn clip_t2i_is_the_models_own_cosine() {
    let scorer = scorer();
    let (photo, mirrored) = photos();
    let prompts = ["a red circle", "a blue square on grass"];
    let cos = scorer
        .t2i(&[photo.clone(), mirrored.clone()], &prompts)
        .unwrap();
    // The same from the model's logits: exp(logit_scale) · cos.
    let pixels = scorer
        .processor
        .pixels::<B>(&[photo, mirrored], &scorer.device)
        .unwrap();
    let ids = scorer.tokenizer.encode(&prompts).unwrap();
    let images = scorer.model.image_features(pixels).unwrap();
    let texts = scorer
        .model
        .text_features(premier_text::ids_tensor::<B>(&ids.ids, &scorer.device))
        .unwrap();
    let logits: Vec<f32> = scorer
        .model
        .logits_per_image(images, texts)
        .into_data()
        .into_vec()
        .unwrap();
    // logits[i][j] = exp(logit_scale) · cos(image i, prompt j): the diagonal over the cosines
    // is one scale.
    let (scale0, scale1) = (logits[0] as f64 / cos[0], logits[3] as f64 / cos[1]);
    assert!(
        (scale0 - scale1).abs() < 1e-4 * scale0.abs() && scale0 > 0.0,
        "{logits:?} {cos:?}"
    );
    assert!(cos.iter().all(|c| (-1.0..=1.0).contains(c)));
    assert_eq!(clip_score(-0.2), 0.0);
    assert!((clip_score(0.3) - 30.0).abs() < 1e-12);
    let err = scorer.t2i(&[photos().0], &prompts).unwrap_err();
    assert!(matches!(err, EvalError::Mismatch(_)), "{err}");
}

#[test]
fn an_image_is_closest_to_itself_and_wins_count() {
    let (photo, mirrored) = photos();
    let mut preference = ClipPreference::new(scorer());
    preference
        .add_user("ann", std::slice::from_ref(&photo))
        .unwrap();
    let scores = preference
        .score("ann", &[photo.clone(), mirrored.clone()])
        .unwrap();
    assert!((scores[0] - 1.0).abs() < 1e-5, "{scores:?}");
    assert!(scores[1] < scores[0], "{scores:?}");
    let won = win_rate(
        &mut preference,
        "ann",
        &[photo.clone()],
        &[mirrored.clone()],
    )
    .unwrap();
    let lost = win_rate(
        &mut preference,
        "ann",
        &[mirrored.clone()],
        &[photo.clone()],
    )
    .unwrap();
    let tied = win_rate(&mut preference, "ann", &[photo.clone()], &[photo.clone()]).unwrap();
    assert_eq!((won, lost, tied), (vec![1.0], vec![0.0], vec![0.5]));
    assert!(matches!(
        preference.score("ben", &[photo.clone()]),
        Err(EvalError::UnknownUser(u)) if u == "ben"
    ));
    assert!(win_rate(&mut preference, "ann", &[photo], &[]).is_err());
}

#[test]
fn means_carry_their_standard_errors() {
    let m = MeanSe::of(&[1.0, 2.0, 3.0]);
    assert_eq!(m.mean, 2.0);
    assert!((m.se - (1.0f64 / 3.0).sqrt()).abs() < 1e-12);
    assert_eq!(MeanSe::of(&[4.0]).se, 0.0);
    assert!(MeanSe::of(&[]).mean.is_nan());
}
