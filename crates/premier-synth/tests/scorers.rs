//! The scorers on hand-made images: exact styles score 1, wrong ones low; content reads back.

use premier_synth::render::{render, Jitter};
use premier_synth::score::{
    analyse, detect_content, image_distance, preference_score, prompt_fidelity,
};
use premier_synth::world::{Content, Style, Taste, World, WorldConfig, FACTOR_SIZES};

fn one_hot(style: Style) -> Taste {
    Taste {
        factors: std::array::from_fn(|f| {
            let mut v = vec![0.0; FACTOR_SIZES[f]];
            v[style.factor(f)] = 1.0;
            v
        }),
    }
}

fn all_styles() -> Vec<Style> {
    let mut out = Vec::new();
    for palette in 0..FACTOR_SIZES[0] {
        for background in 0..FACTOR_SIZES[1] {
            for texture in 0..FACTOR_SIZES[2] {
                for pattern in 0..FACTOR_SIZES[3] {
                    out.push(Style {
                        palette,
                        background,
                        texture,
                        pattern,
                    });
                }
            }
        }
    }
    out
}

#[test]
fn exact_style_scores_one_and_every_content_reads_back() {
    for content in Content::all() {
        for style in all_styles() {
            let image = render(content, style, &Jitter::default());
            let score = preference_score(&image, &one_hot(style));
            assert!(
                score > 0.97,
                "{content:?} {style:?}: score {score}, {:?}",
                analyse(&image)
            );
            assert_eq!(
                detect_content(&image),
                Some(content),
                "{style:?}: {:?}",
                analyse(&image)
            );
            assert_eq!(prompt_fidelity(&image, &content), 1.0);
        }
    }
}

#[test]
fn each_wrong_factor_costs_about_a_quarter() {
    let content = Content::all()[4];
    let liked = Style {
        palette: 0,
        background: 1,
        texture: 0,
        pattern: 0,
    };
    let taste = one_hot(liked);
    let wrong = [
        Style {
            palette: 2,
            ..liked
        },
        Style {
            background: 0,
            ..liked
        },
        Style {
            texture: 1,
            ..liked
        },
        Style {
            pattern: 1,
            ..liked
        },
    ];
    for style in wrong {
        let score = preference_score(&render(content, style, &Jitter::default()), &taste);
        assert!((0.7..0.8).contains(&score), "{style:?}: {score}");
    }
    let all_wrong = Style {
        palette: 2,
        background: 0,
        texture: 1,
        pattern: 1,
    };
    let score = preference_score(&render(content, all_wrong, &Jitter::default()), &taste);
    assert!(score < 0.05, "all wrong: {score}");
}

#[test]
fn mixed_taste_accepts_either_liked_value() {
    let content = Content::all()[0];
    let mut taste = one_hot(Style {
        palette: 0,
        background: 0,
        texture: 0,
        pattern: 0,
    });
    taste.factors[0] = vec![0.5, 0.5, 0.0, 0.0];
    for palette in [0, 1] {
        let style = Style {
            palette,
            background: 0,
            texture: 0,
            pattern: 0,
        };
        let score = preference_score(&render(content, style, &Jitter::default()), &taste);
        assert!(score > 0.97, "palette {palette}: {score}");
    }
}

#[test]
fn jittered_images_still_read_correctly() {
    let world = World::new(WorldConfig::default());
    let mut content_hits = 0;
    let mut total = 0;
    for user in 0..world.users.len() {
        for image in world.liked_images(user) {
            let score = preference_score(&image.rgb, &one_hot(image.style));
            assert!(
                score > 0.8,
                "{:?} {:?}: {score}",
                image.content,
                image.style
            );
            content_hits += (detect_content(&image.rgb) == Some(image.content)) as usize;
            total += 1;
        }
    }
    assert!(
        content_hits as f32 >= 0.97 * total as f32,
        "content read back for {content_hits} of {total}"
    );
}

#[test]
fn distance_is_zero_for_the_same_image_and_grows_with_difference() {
    let content = Content::all()[3];
    let style = Style {
        palette: 1,
        background: 2,
        texture: 0,
        pattern: 0,
    };
    let a = render(content, style, &Jitter::default());
    assert_eq!(image_distance(&a, &a), 0.0);
    let other_palette = render(
        content,
        Style {
            palette: 3,
            ..style
        },
        &Jitter::default(),
    );
    let other_background = render(
        content,
        Style {
            background: 1,
            ..style
        },
        &Jitter::default(),
    );
    let near = image_distance(&a, &other_palette);
    let far = image_distance(&a, &other_background);
    assert!(near > 0.0 && far > near, "palette {near}, background {far}");
}

#[test]
fn blank_image_has_no_content_and_low_preference() {
    let blank = image::RgbImage::from_pixel(32, 32, image::Rgb([30, 30, 40]));
    assert_eq!(detect_content(&blank), None);
    let taste = one_hot(Style {
        palette: 0,
        background: 0,
        texture: 0,
        pattern: 0,
    });
    // Background and pattern (plain) right, palette and texture unreadable: one half.
    let score = preference_score(&blank, &taste);
    assert!((0.48..0.52).contains(&score), "{score}");
}

#[test]
fn textures_and_patterns_read_back_on_every_content() {
    for content in Content::all() {
        for style in all_styles() {
            for jitter in [
                Jitter::default(),
                Jitter {
                    radius: -0.4,
                    foreground: [12.0, -12.0, 12.0],
                    background: [-6.0, 6.0, -6.0],
                },
            ] {
                let a = analyse(&render(content, style, &jitter));
                let (holes, speckle) = (a.holes, a.speckle);
                if style.texture == 1 {
                    assert!(holes >= 0.75, "{content:?} {style:?}: holes {holes}");
                } else {
                    assert!(holes <= 0.05, "{content:?} {style:?}: holes {holes}");
                }
                if style.pattern == 1 {
                    assert!(speckle >= 0.15, "{content:?} {style:?}: speckle {speckle}");
                } else {
                    assert!(
                        speckle.abs() <= 0.01,
                        "{content:?} {style:?}: speckle {speckle}"
                    );
                }
            }
        }
    }
}
