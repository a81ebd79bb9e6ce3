//! The metrics on the tiny CLIP fixture (`clip_model_tiny`, random weights, so the numbers mean
//! nothing about images; what is checked is what must hold for any CLIP): CLIP-T2I equals the
//! model's own cosine, an image is closest to itself, win rates count wins, ties and losses, and
//! mismatched inputs are errors.

use std::path::PathBuf;

use burn::backend::Flex;
use image::RgbImage;
use premier_eval::{
    clip_score, cosines, win_rate, ClipPreference, ClipScorer, EvalError, MeanSe, PreferenceScorer,
};
use premier_text::{ClipConfig, ClipImageProcessor, ClipModel, PromptTokenizer};

type B = Flex;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

/// The tiny CLIP fixture (random weights, 32-pixel images) on `device`.
fn tiny_clip<Bk: burn::tensor::backend::Backend>(device: &Bk::Device) -> ClipModel<Bk> {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("clip_model_tiny.json")).unwrap())
            .unwrap();
    let config: ClipConfig = serde_json::from_value(json["config"].clone()).unwrap();
    ClipModel::load(
        fixture("clip_model_tiny_weights.safetensors"),
        &config,
        device,
    )
    .unwrap()
}

/// The tiny CLIP (32-pixel images), its word-level tokenizer and a 32-pixel preprocessing.
fn scorer() -> ClipScorer<B> {
    let device = Default::default();
    ClipScorer {
        model: tiny_clip(&device),
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

/// A photo scores higher CLIP-T2I with its own caption than with another photo's. No trained CLIP
/// can be fetched here, so the tiny CLIP is first trained (CLIP's symmetric contrastive loss, Adam)
/// to pair four real photos with four captions, on random crops and mirror images of them; the
/// whole photos are then scored through `ClipScorer` (its preprocessing and tokenizer), which the
/// training never saw. The captions are arbitrary labels in the tiny tokenizer's vocabulary.
/// Before training one photo of four is paired, so the check can fail; after 10 steps all four
/// are, and they stay so to the end.
#[test]
fn a_photo_scores_higher_with_its_own_caption_once_clip_has_learned_the_pairs() {
    use burn::backend::Autodiff;
    use burn::module::AutodiffModule;
    use burn::optim::{AdamConfig, GradientsParams, Optimizer};
    use burn::prelude::*;
    use burn::tensor::activation::log_softmax;
    type AB = Autodiff<Flex>;

    let names = [
        "chelsea.png",
        "astronaut_small.png",
        "coffee_small.png",
        "grace_hopper_small.png",
    ];
    let photos: Vec<RgbImage> = names
        .iter()
        .map(|n| {
            image::open(fixture(&format!("images/{n}")))
                .unwrap()
                .to_rgb8()
        })
        .collect();
    let captions = [
        "a red circle",
        "a blue square",
        "a red square on grass",
        "a blue circle on grass",
    ];
    // How many photos have their own caption as the closest of the four.
    let paired = |scorer: &ClipScorer<B>| -> usize {
        let images = scorer.image_embeddings(&photos).unwrap();
        let texts = scorer.text_embeddings(&captions).unwrap();
        (0..photos.len())
            .filter(|&i| {
                let own = cosines(&images[i..=i], &texts[i..=i])[0];
                (0..captions.len())
                    .filter(|&j| j != i)
                    .all(|j| cosines(&images[i..=i], &texts[j..=j])[0] < own)
            })
            .count()
    };
    let untrained = scorer();
    let before = paired(&untrained);
    assert!(before < photos.len(), "the random CLIP pairs them already");

    let device = Default::default();
    let mut model = tiny_clip::<AB>(&device);
    let ids = untrained.tokenizer.encode(&captions).unwrap();
    let ids = premier_text::ids_tensor::<AB>(&ids.ids, &device);
    let n = photos.len();
    let eye = Tensor::<AB, 2, Int>::eye(n, &device).float();
    let mut optimizer = AdamConfig::new().init();
    // A random view of a photo: a crop of 60–100 % of each side, mirrored half the time.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    const STEPS: usize = 150;
    for step in 0..STEPS {
        let views: Vec<RgbImage> = photos
            .iter()
            .map(|photo| {
                let (w, h) = photo.dimensions();
                let scale = 0.6 + 0.4 * uniform();
                let (cw, ch) = ((w as f64 * scale) as u32, (h as f64 * scale) as u32);
                let x = ((w - cw) as f64 * uniform()) as u32;
                let y = ((h - ch) as f64 * uniform()) as u32;
                let view = image::imageops::crop_imm(photo, x, y, cw, ch).to_image();
                if uniform() < 0.5 {
                    image::imageops::flip_horizontal(&view)
                } else {
                    view
                }
            })
            .collect();
        let pixels = untrained.processor.pixels::<AB>(&views, &device).unwrap();
        let images = model.image_features(pixels).unwrap();
        let texts = model.text_features(ids.clone()).unwrap();
        let logits = model.logits_per_image(images, texts);
        // Cross-entropy of each image over the captions and of each caption over the images.
        let nll = |logits: Tensor<AB, 2>| -(log_softmax(logits, 1) * eye.clone()).sum() / n as f64;
        let loss = (nll(logits.clone()) + nll(logits.transpose())) / 2.0;
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        // Decaying to 0, so the last steps do not jump away from the pairing.
        let lr = 1e-3 * (1.0 - step as f64 / STEPS as f64);
        model = optimizer.step(lr, model, grads);
    }
    let trained = ClipScorer {
        model: model.valid(),
        ..untrained
    };
    assert_eq!(paired(&trained), photos.len(), "before training: {before}");
}
