//! The base model: save/load round trip, the shipped files, tokenizer and codec.

use burn::backend::Flex;
use burn::prelude::*;
use premier_synth::base::{shipped_base_dir, SynthBase, SynthBaseConfig};
use premier_synth::codec::{decode, encode};
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
