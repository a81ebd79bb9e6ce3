//! The base model: save/load round trip, the shipped files, tokenizer and codec.

use burn::backend::Flex;
use burn::prelude::*;
use premier_mmdit::unpack;
use premier_pipeline::image_io::tensor_to_rgb;
use premier_pipeline::LatentCodec;
use premier_synth::base::{shipped_base_dir, SynthBase, SynthBaseConfig};
use premier_synth::codec::{decode, encode, PatchCodec, LATENT_HW};
use premier_synth::text::{build_tokenizer, load_tokenizer, MAX_TOKENS, VOCAB};
use premier_synth::world::{Content, World, WorldConfig};

#[test]
fn codec_round_trips_pixels_exactly() {
    let world = World::new(WorldConfig::default());
    let images: Vec<_> = (0..3).map(|i| world.liked_image(i, i).rgb).collect();
    let refs: Vec<_> = images.iter().collect();
    let tokens = encode::<Flex>(&refs, &Default::default());
    assert_eq!(tokens.dims(), [3, 64, 48]);
    assert_eq!(decode(tokens), images);
}

#[test]
fn patch_codec_decodes_the_unpacked_tokens_to_the_images() {
    // The sampler draws latents in the codec's space and FLUX packs them: unpacking the tokens
    // of `encode` must give the latent that `decode` turns back into the same images.
    let world = World::new(WorldConfig::default());
    let images: Vec<_> = (0..2).map(|i| world.liked_image(i, i).rgb).collect();
    let refs: Vec<_> = images.iter().collect();
    let (h, w) = LATENT_HW;
    let latent = unpack(encode::<Flex>(&refs, &Default::default()), h, w);
    let space = LatentCodec::<Flex>::space(&PatchCodec);
    assert_eq!(latent.dims(), [2, space.channels, h, w]);
    assert_eq!(space.latent_hw(32, 32), LATENT_HW);
    let pixels = PatchCodec.decode(latent).unwrap();
    assert_eq!(tensor_to_rgb(pixels), images);
    // A latent of another shape is an error, not a panic.
    let wrong = Tensor::<Flex, 4>::zeros([1, 16, h, w], &Default::default());
    assert!(PatchCodec.decode(wrong).is_err());
}

#[test]
fn codec_layout_is_the_documented_one() {
    // The shipped base was trained on this layout: pixel (x 5, y 9), green → token 2·8 + 1,
    // channel 1·16 + (9 % 4)·4 + 5 % 4.
    let mut image = image::RgbImage::new(32, 32);
    image.put_pixel(5, 9, image::Rgb([0, 255, 0]));
    let tokens: Vec<f32> = encode::<Flex>(&[&image], &Default::default())
        .into_data()
        .to_vec()
        .unwrap();
    let hot: Vec<usize> = (0..tokens.len()).filter(|&i| tokens[i] > 0.0).collect();
    assert_eq!(hot, vec![17 * 48 + 21]);
}

#[test]
fn shipped_tokenizer_is_the_one_the_code_builds() {
    let shipped = std::fs::read_to_string(shipped_base_dir().join("tokenizer.json")).unwrap();
    let built = build_tokenizer().unwrap().to_string(true).unwrap();
    assert_eq!(shipped, built);
    let tokenizer = load_tokenizer(&shipped_base_dir()).unwrap();
    let style = premier_synth::world::Style {
        palette: 3,
        background: 2,
        texture: 1,
        pattern: 1,
    };
    let caption = Content::all()[17].prompt_with_style(&style);
    let ids = &tokenizer
        .encode(&[caption.as_str(), "a purple circle"])
        .unwrap()
        .ids;
    assert_eq!(ids[0].len(), MAX_TOKENS);
    let words: Vec<&str> = ids[0].iter().map(|&i| VOCAB[i as usize]).collect();
    assert_eq!(
        words[..13].join(" "),
        "a large yellow dotted triangle on the right with gray background [PAD] [PAD]"
            .split(' ')
            .take(13)
            .collect::<Vec<_>>()
            .join(" ")
    );
    assert_eq!(
        VOCAB[ids[1][1] as usize], "[UNK]",
        "unknown words map to [UNK]"
    );
}

#[test]
fn saved_base_loads_back_and_encodes_the_same() {
    let device = Default::default();
    let config = SynthBaseConfig::default();
    let base = SynthBase::<Flex>::init(&config, &device).unwrap();
    let dir = tempfile::tempdir().unwrap();
    base.save(&config, dir.path()).unwrap();
    let (back, back_config) = SynthBase::<Flex>::load(dir.path(), &device).unwrap();
    assert_eq!(back_config, config);
    let tokenizer = load_tokenizer(dir.path()).unwrap();
    let prompts = ["a small circle on the left", ""];
    let a = base.text.encode(&tokenizer, &prompts).unwrap();
    let b = back.text.encode(&tokenizer, &prompts).unwrap();
    assert_eq!(a.tokens.into_data(), b.tokens.into_data());
    assert_eq!(a.pooled.into_data(), b.pooled.into_data());
}

#[test]
fn shipped_base_loads() {
    let (base, config) = SynthBase::<Flex>::shipped(&Default::default()).unwrap();
    assert_eq!(config, SynthBaseConfig::default());
    assert!(base.flux.num_params() > 100_000);
}

fn tiny_pretraining(
    start: &SynthBase<burn::backend::Autodiff<Flex>>,
    steps: usize,
    ema_decay: Option<f64>,
    workers: usize,
) -> Vec<f32> {
    use premier_synth::pretrain::{continue_pretraining, PretrainConfig};
    let tokenizer = load_tokenizer(&shipped_base_dir()).unwrap();
    let config = PretrainConfig {
        steps,
        batch_size: 4,
        lr: 1e-2,
        warmup_steps: 1,
        seed: 5,
        ema_decay,
        workers,
    };
    let device = Default::default();
    let model =
        continue_pretraining(start.clone(), &config, &tokenizer, &device, |_, _| ()).unwrap();
    values(&model)
}

fn values<B: Backend>(model: &SynthBase<B>) -> Vec<f32> {
    premier_train::params::flat_values(model)
        .into_iter()
        .flat_map(|t| t.into_data().to_vec::<f32>().unwrap())
        .collect()
}

fn tiny_base() -> SynthBase<burn::backend::Autodiff<Flex>> {
    type AB = burn::backend::Autodiff<Flex>;
    let device = Default::default();
    <AB as Backend>::seed(&device, 3);
    SynthBase::<AB>::init(&SynthBaseConfig::with_width(16, 2).unwrap(), &device).unwrap()
}

/// Pretraining's weight average: with decay 0 it is the last weights bit for bit; with decay d
/// after one step it is d · start + (1 − d) · last.
#[test]
fn pretraining_returns_the_moving_average_of_the_weights_when_asked() {
    let start = tiny_base();
    let last = tiny_pretraining(&start, 2, None, 1);
    assert_eq!(
        tiny_pretraining(&start, 2, Some(0.0), 1),
        last,
        "decay 0 keeps the last weights"
    );
    let (before, one) = (values(&start), tiny_pretraining(&start, 1, None, 1));
    let averaged = tiny_pretraining(&start, 1, Some(0.75), 1);
    assert_ne!(one, before, "the step moves the weights");
    for ((a, s), w) in averaged.iter().zip(&before).zip(&one) {
        let expected = 0.75 * s + 0.25 * w;
        assert!(
            (a - expected).abs() <= 1e-6 * expected.abs().max(1.0),
            "{a} vs {expected}"
        );
    }
}

/// Splitting each pretraining batch over two threads takes the same steps (up to float rounding).
#[test]
fn pretraining_on_two_threads_takes_the_same_steps() {
    let start = tiny_base();
    let (one, two) = (
        tiny_pretraining(&start, 3, None, 1),
        tiny_pretraining(&start, 3, None, 2),
    );
    let before = values(&start);
    let scale = one.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let moved = one
        .iter()
        .zip(&before)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    let diff = one
        .iter()
        .zip(&two)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(moved > 1e-3 * scale, "the steps move the weights: {moved}");
    assert!(
        diff <= 1e-5 * scale,
        "one vs two threads: max diff {diff} (scale {scale})"
    );
}

#[test]
fn a_moving_average_decay_outside_zero_to_one_is_refused() {
    use premier_synth::pretrain::{continue_pretraining, PretrainConfig};
    let tokenizer = load_tokenizer(&shipped_base_dir()).unwrap();
    for decay in [1.0, -0.1, f64::NAN] {
        let config = PretrainConfig {
            steps: 1,
            ema_decay: Some(decay),
            ..PretrainConfig::default()
        };
        let error = continue_pretraining(
            tiny_base(),
            &config,
            &tokenizer,
            &Default::default(),
            |_, _| (),
        )
        .err()
        .map(|e| e.to_string());
        assert!(
            error.as_deref().is_some_and(|e| e.contains("ema_decay")),
            "{decay}: {error:?}"
        );
    }
}
