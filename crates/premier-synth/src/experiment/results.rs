//! What the experiment writes: the claims decided from the scores, the grid, and the files.

use std::path::Path;

use image::RgbImage;
use premier_io::write_via_temp;
use premier_mmdit::FluxOps;
use premier_text::PromptTokenizer;
use premier_train::stage1::Stage1Model;

use super::config::ExperimentConfig;
use super::{run_err, ExperimentError};
use crate::base::SynthBase;
use crate::evaluate::{EvalSet, Method};
use crate::render::{render, Jitter};
use crate::report::{Claim, Row};
use crate::world::{Content, World};

/// The paper's claims on this seed.
pub(super) fn decide_claims(
    config: &ExperimentConfig,
    main: &[Row],
    ablations: &[Row],
    cold_start: &[Row],
) -> Vec<Claim> {
    let find = |rows: &[Row], name: &str| rows.iter().find(|r| r.name.starts_with(name)).cloned();
    let mut out = Vec::new();
    let (Some(base), Some(premier)) = (find(main, "Base"), find(main, "Premier")) else {
        return out;
    };
    out.push(Claim::higher(
        "premier-beats-base",
        "Premier raises preference over the base".into(),
        &premier,
        &base,
    ));
    out.push(Claim::keeps_fidelity(
        "premier-keeps-fidelity",
        "Premier keeps prompt fidelity within 0.05 of the base".into(),
        &premier,
        &base,
    ));
    if let Some(told) = find(main, "Taste in the prompt") {
        out.push(Claim::higher(
            "premier-beats-prompt",
            "Premier beats the taste written in the prompt on preference".into(),
            &premier,
            &told,
        ));
    }
    if let Some(with) = find(ablations, "with the hinge dispersion") {
        out.push(Claim::higher(
            "dispersion-helps",
            "The model with the (hinge) dispersion loss beats the one without on preference".into(),
            &with,
            &premier,
        ));
    }
    for (id, name) in [
        ("shared-helps", "w/o Δ_shared"),
        ("distinct-helps", "w/o Δ_distinct"),
        ("dispersion-helps", "w/o dispersion loss"),
    ] {
        if let Some(ablation) = find(ablations, name) {
            out.push(Claim::higher(
                id,
                format!("The full model beats {name} on preference"),
                &premier,
                &ablation,
            ));
        }
    }
    if let Some(new_base) = find(cold_start, "Base (new users)") {
        for &shots in &config.shots {
            let lin = find(cold_start, &format!("Linear combination from {shots} "));
            let dir = find(cold_start, &format!("Direct embedding from {shots} "));
            if let (Some(lin), Some(dir)) = (lin, dir) {
                out.push(Claim::higher(
                    &format!("linear-beats-direct-{shots}"),
                    format!("With {shots} images the linear combination beats direct training"),
                    &lin,
                    &dir,
                ));
                out.push(Claim::higher(
                    &format!("linear-beats-base-{shots}"),
                    format!("Linear cold start from {shots} images beats the new users' base"),
                    &lin,
                    &new_base,
                ));
            }
        }
    }
    out
}

pub(super) fn write_atomic(path: &Path, text: &str) -> Result<(), ExperimentError> {
    write_via_temp(path, |tmp| {
        std::fs::write(tmp, text).map_err(|e| e.to_string())
    })
    .map_err(|e| run_err(format!("{}: {e}", path.display())))
}

/// grid.png's tiles and a line per row: the base, then Premier for the first trained users
/// (up to 8); each row starts with a tile of its taste, then a column per prompt, every row from
/// the same noise.
pub(super) fn grid_tiles<B: FluxOps>(
    world: &World,
    eval: &EvalSet,
    base: &SynthBase<B>,
    tokenizer: &PromptTokenizer,
    premier: &Stage1Model<B>,
) -> Result<(Vec<String>, Vec<Vec<RgbImage>>), String> {
    let shared = EvalSet {
        seeds_per_prompt: 1,
        shared_noise: true,
        ..eval.clone()
    };
    let shown: Vec<usize> = (0..world.config.train_users.min(8)).collect();
    let lookup = |users: &[usize]| premier.users.lookup(users).map_err(|e| e.to_string());
    let base_images = shared.generate(world, base, tokenizer, &shown[..1], Method::Base)?;
    let images = shared.generate(
        world,
        base,
        tokenizer,
        &shown,
        Method::Premier(&premier.adapter, &lookup),
    )?;
    let mut lines = vec!["the base model (no personalization; blank first tile)".to_string()];
    let mut rows = vec![std::iter::once(blank_tile()).chain(base_images).collect()];
    // The taste tile: a large square in the centre in the user's favourite style.
    let swatch = Content {
        shape: 1,
        position: 1,
        size: 1,
    };
    for (&u, tiles) in shown.iter().zip(images.chunks(shared.contents.len())) {
        let taste = world.users[u].taste.mode();
        let label = render(swatch, taste, &Jitter::default());
        rows.push(
            std::iter::once(label)
                .chain(tiles.iter().cloned())
                .collect(),
        );
        let mixed = if world.users[u].taste.is_mixed() {
            " (likes two values of one factor; the tile shows one)"
        } else {
            ""
        };
        lines.push(format!(
            "Premier for {}: {}{mixed}",
            world.users[u].id,
            taste.describe()
        ));
    }
    Ok((lines, rows))
}

/// The base row's first tile: no taste to show.
pub(super) fn blank_tile() -> RgbImage {
    let n = crate::world::IMAGE_SIZE as u32;
    RgbImage::from_pixel(n, n, image::Rgb([255, 255, 255]))
}

/// Nearest-neighbour upscaling, so 32-pixel tiles are visible.
pub(super) fn upscale(image: &RgbImage, factor: u32) -> RgbImage {
    image::imageops::resize(
        image,
        image.width() * factor,
        image.height() * factor,
        image::imageops::FilterType::Nearest,
    )
}

pub(super) fn content_index(c: &Content) -> usize {
    Content::all().iter().position(|x| x == c).unwrap_or(0)
}
