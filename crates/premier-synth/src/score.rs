//! Scorers that read only pixels, independent of any model: the world's analogs of the paper's
//! ViPer score and rate (preference), CLIP T2I (prompt fidelity) and LPIPS (distance).
//!
//! An image is analysed once: the background is the median of the border, the foreground the
//! pixels far from it, the object the region the background cannot reach from the border
//! (so a dotted object counts with its holes), the texture the share of the object's core
//! patch centres left unpainted, and the pattern how much the background's patch centres
//! differ from the rest of the background.

use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::render::is_patch_centre;
use crate::world::{Content, Taste, BACKGROUNDS, FACTORS, FACTOR_SIZES, PALETTE, POSITIONS};

/// Colour distance (RGB in [0, 1], Euclidean) above which a pixel is foreground.
const FOREGROUND_DISTANCE: f32 = 0.25;
/// Width of the preference kernels, in RGB units.
const COLOUR_SIGMA: f32 = 0.15;
/// Unpainted share of the core's patch centres: at most this for a solid object, at least
/// `DOTTED_ABOVE` for a dotted one; linear in between (see `tests/scorers.rs` for the rendered
/// range).
const SOLID_BELOW: f32 = 0.15;
const DOTTED_ABOVE: f32 = 0.6;
/// Background patch centres' extra colour distance from the background: at most this for a
/// plain background, at least `SPECKLED_ABOVE` for a speckled one (rendered: 0 and 0.18–0.19).
const PLAIN_BELOW: f32 = 0.04;
const SPECKLED_ABOVE: f32 = 0.12;
/// Extent (area / bounding box) above which an object is a square (squares 0.98–1, circles ≤ 0.81).
const SQUARE_EXTENT: f32 = 0.9;
/// Filled share of the bottom row above which a non-square is a triangle (its base; circles ≈ 0.4).
const TRIANGLE_BASE: f32 = 0.7;
/// Bounding-box side above which a circle, a square, a triangle is "large" (rendered: circles
/// 12 vs 16–17, squares 10–11 vs 14–16, triangles 10–11 vs 15–16).
const LARGE_SIDE: [f32; 3] = [14.0, 12.5, 13.0];

/// What the scorers measure in one image.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Analysis {
    /// Background colour, RGB in [0, 1].
    pub background: [f32; 3],
    /// Foreground colour, RGB in [0, 1]; `None` when nothing stands out.
    pub foreground: Option<[f32; 3]>,
    /// Unpainted share of the patch centres in the object's core: 0 solid, 1 dotted.
    pub holes: f32,
    /// Mean colour distance from the background of background patch centres, minus that of the
    /// other background pixels (whole background patches only): 0 plain, ≈ 0.19 speckled.
    pub speckle: f32,
    /// Object area over its bounding box area.
    pub extent: f32,
    /// Filled share of the object's bounding-box bottom row.
    pub bottom_fill: f32,
    /// Object centroid x, in pixels.
    pub centroid_x: f32,
    /// Longest side of the object's bounding box, in pixels.
    pub side: f32,
}

fn rgb01(image: &RgbImage, x: u32, y: u32) -> [f32; 3] {
    let p = image.get_pixel(x, y).0;
    p.map(|v| v as f32 / 255.0)
}

fn distance(a: [f32; 3], b: [f32; 3]) -> f32 {
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f32>()
        .sqrt()
}

fn median(mut v: Vec<f32>) -> f32 {
    v.sort_by(f32::total_cmp);
    v[v.len() / 2]
}

/// Measures background, foreground, texture, pattern, shape, position and size.
pub fn analyse(image: &RgbImage) -> Analysis {
    let n = image.width().min(image.height()) as usize;
    let idx = |x: usize, y: usize| y * n + x;
    let border: Vec<(u32, u32)> = (0..n as u32)
        .flat_map(|i| {
            let last = n as u32 - 1;
            [(i, 0), (i, last), (0, i), (last, i)]
        })
        .collect();
    let background: [f32; 3] = std::array::from_fn(|c| {
        median(border.iter().map(|&(x, y)| rgb01(image, x, y)[c]).collect())
    });
    let dist: Vec<f32> = (0..n * n)
        .map(|i| distance(rgb01(image, (i % n) as u32, (i / n) as u32), background))
        .collect();
    let fg: Vec<bool> = dist.iter().map(|&d| d > FOREGROUND_DISTANCE).collect();

    // Background reachable from the border without crossing foreground (4-connected).
    let mut reached = vec![false; n * n];
    let mut stack: Vec<(usize, usize)> = border
        .iter()
        .map(|&(x, y)| (x as usize, y as usize))
        .filter(|&(x, y)| !fg[idx(x, y)])
        .collect();
    while let Some((x, y)) = stack.pop() {
        if reached[idx(x, y)] || fg[idx(x, y)] {
            continue;
        }
        reached[idx(x, y)] = true;
        if x > 0 {
            stack.push((x - 1, y));
        }
        if x + 1 < n {
            stack.push((x + 1, y));
        }
        if y > 0 {
            stack.push((x, y - 1));
        }
        if y + 1 < n {
            stack.push((x, y + 1));
        }
    }
    let object: Vec<bool> = reached.iter().map(|r| !r).collect();
    let speckle = background_speckle(&dist, &reached, n);
    let area = object.iter().filter(|&&o| o).count();
    if area < 3 {
        return Analysis {
            background,
            foreground: None,
            holes: 0.0,
            speckle,
            extent: 0.0,
            bottom_fill: 0.0,
            centroid_x: n as f32 / 2.0,
            side: 0.0,
        };
    }

    // Foreground colour: the mean of the most distinct pixels (edges are blended).
    let max_d = dist.iter().copied().fold(0.0f32, f32::max);
    let core: Vec<usize> = (0..n * n)
        .filter(|&i| fg[i] && dist[i] >= 0.9 * max_d)
        .collect();
    let foreground = (!core.is_empty()).then(|| {
        std::array::from_fn(|c| {
            core.iter()
                .map(|&i| rgb01(image, (i % n) as u32, (i / n) as u32)[c])
                .sum::<f32>()
                / core.len() as f32
        })
    });

    // Core: the patch centres two pixels deep in the object (their 5×5 neighbourhood is object),
    // or one pixel deep for shapes too small for that; a dotted object has its holes there. A
    // hole is a pixel nearer the background colour than the foreground's.
    let inside = |x: isize, y: isize| {
        x >= 0
            && y >= 0
            && (x as usize) < n
            && (y as usize) < n
            && object[idx(x as usize, y as usize)]
    };
    let deep_centres = |depth: isize| -> Vec<usize> {
        (0..n * n)
            .filter(|&i| {
                let (x, y) = (i % n, i / n);
                object[i]
                    && is_patch_centre(x as u32, y as u32)
                    && (-depth..=depth)
                        .flat_map(|dy| (-depth..=depth).map(move |dx| (dx, dy)))
                        .all(|(dx, dy)| inside(x as isize + dx, y as isize + dy))
            })
            .collect()
    };
    let mut core = deep_centres(2);
    if core.is_empty() {
        core = deep_centres(1);
    }
    let holes = match foreground {
        Some(fg_colour) if !core.is_empty() => {
            let unpainted = core
                .iter()
                .filter(|&&i| {
                    let p = rgb01(image, (i % n) as u32, (i / n) as u32);
                    distance(p, background) < distance(p, fg_colour)
                })
                .count();
            unpainted as f32 / core.len() as f32
        }
        // No core: no room for holes, the object reads as solid.
        _ => 0.0,
    };
    let (mut min_x, mut max_x, mut min_y, mut max_y) = (n, 0, n, 0);
    let mut sum_x = 0.0f32;
    for y in 0..n {
        for x in 0..n {
            if !object[idx(x, y)] {
                continue;
            }
            min_x = min_x.min(x);
            max_x = max_x.max(x);
            min_y = min_y.min(y);
            max_y = max_y.max(y);
            sum_x += x as f32 + 0.5;
        }
    }
    let (w, h) = ((max_x - min_x + 1) as f32, (max_y - min_y + 1) as f32);
    let bottom = (min_x..=max_x).filter(|&x| object[idx(x, max_y)]).count();
    Analysis {
        background,
        foreground,
        holes,
        speckle,
        extent: area as f32 / (w * h),
        bottom_fill: bottom as f32 / w,
        centroid_x: sum_x / area as f32,
        side: w.max(h),
    }
}

/// Over whole 4×4 patches of reached background: the patch centres' mean distance from the
/// background colour minus the other pixels' (0 when no patch is all background).
fn background_speckle(dist: &[f32], reached: &[bool], n: usize) -> f32 {
    let p = crate::codec::PATCH;
    let (mut centre, mut centres, mut rim, mut rims) = (0.0f32, 0usize, 0.0f32, 0usize);
    for ty in 0..n / p {
        for tx in 0..n / p {
            let pixels: Vec<(usize, usize)> = (0..p * p)
                .map(|i| (tx * p + i % p, ty * p + i / p))
                .collect();
            if !pixels.iter().all(|&(x, y)| reached[y * n + x]) {
                continue;
            }
            for (x, y) in pixels {
                if is_patch_centre(x as u32, y as u32) {
                    centre += dist[y * n + x];
                    centres += 1;
                } else {
                    rim += dist[y * n + x];
                    rims += 1;
                }
            }
        }
    }
    if centres == 0 {
        return 0.0;
    }
    centre / centres as f32 - rim / rims.max(1) as f32
}

/// 0 at or below `low`, 1 at or above `high`, linear in between.
fn ramp(value: f32, low: f32, high: f32) -> f32 {
    ((value - low) / (high - low)).clamp(0.0, 1.0)
}

fn kernel(d: f32, sigma: f32) -> f32 {
    (-d * d / (2.0 * sigma * sigma)).exp()
}

fn colour01(c: [u8; 3]) -> [f32; 3] {
    c.map(|v| v as f32 / 255.0)
}

/// How well each factor of the image matches each value: `[factor][value]` in [0, 1], 1 exactly
/// at the value's prototype.
pub fn factor_similarities(a: &Analysis) -> [Vec<f32>; FACTORS] {
    let palette = PALETTE
        .iter()
        .map(|(_, c)| {
            a.foreground
                .map_or(0.0, |fg| kernel(distance(fg, colour01(*c)), COLOUR_SIGMA))
        })
        .collect();
    let background = BACKGROUNDS
        .iter()
        .map(|(_, c)| kernel(distance(a.background, colour01(*c)), COLOUR_SIGMA))
        .collect();
    let dotted = ramp(a.holes, SOLID_BELOW, DOTTED_ABOVE);
    let texture = if a.foreground.is_none() {
        vec![0.0, 0.0]
    } else {
        vec![1.0 - dotted, dotted]
    };
    let speckled = ramp(a.speckle, PLAIN_BELOW, SPECKLED_ABOVE);
    [palette, background, texture, vec![1.0 - speckled, speckled]]
}

/// Preference score in [0, 1] (the ViPer-score analog): for each factor, the best match over the
/// values the user likes, weighted by how much relative to their favourite; averaged over factors.
/// An image exactly in a liked style scores 1.
pub fn preference_score(image: &RgbImage, taste: &Taste) -> f32 {
    factor_scores(image, taste).iter().sum::<f32>() / FACTORS as f32
}

/// The preference score of each factor (palette, background, texture, pattern), each in [0, 1];
/// [`preference_score`] is their mean.
pub fn factor_scores(image: &RgbImage, taste: &Taste) -> [f32; FACTORS] {
    let sims = factor_similarities(&analyse(image));
    std::array::from_fn(|f| {
        let probs = &taste.factors[f];
        let top = probs.iter().copied().fold(0.0f32, f32::max).max(1e-6);
        (0..FACTOR_SIZES[f])
            .map(|v| probs[v] / top * sims[f][v])
            .fold(0.0f32, f32::max)
    })
}

/// The content read from an image: shape, position and size indices (`None` when no object).
pub fn detect_content(image: &RgbImage) -> Option<Content> {
    let a = analyse(image);
    a.foreground?;
    let shape = if a.extent > SQUARE_EXTENT {
        1
    } else if a.bottom_fill > TRIANGLE_BASE {
        2
    } else {
        0
    };
    let nearest = |value: f32, protos: &[f32]| {
        (0..protos.len())
            .min_by(|&i, &j| {
                (protos[i] - value)
                    .abs()
                    .total_cmp(&(protos[j] - value).abs())
            })
            .unwrap_or(0)
    };
    let xs: Vec<f32> = POSITIONS.iter().map(|p| p.1).collect();
    Some(Content {
        shape,
        position: nearest(a.centroid_x, &xs),
        size: (a.side > LARGE_SIDE[shape]) as usize,
    })
}

/// Prompt fidelity in [0, 1] (the CLIP-T2I analog): the share of shape, position and size read
/// back correctly.
pub fn prompt_fidelity(image: &RgbImage, content: &Content) -> f32 {
    match detect_content(image) {
        None => 0.0,
        Some(found) => {
            let hits = (found.shape == content.shape) as u8
                + (found.position == content.position) as u8
                + (found.size == content.size) as u8;
            hits as f32 / 3.0
        }
    }
}

/// Distance in [0, 1] (the LPIPS analog): mean absolute difference of the two images after a 2×2
/// average pooling, which forgives one-pixel shifts of edges.
pub fn image_distance(a: &RgbImage, b: &RgbImage) -> f32 {
    let n = a.width().min(b.width()).min(a.height()).min(b.height());
    let pooled = |img: &RgbImage, x: u32, y: u32, c: usize| {
        (0..2)
            .flat_map(|dy| (0..2).map(move |dx| (dx, dy)))
            .map(|(dx, dy)| img.get_pixel(x + dx, y + dy).0[c] as f32)
            .sum::<f32>()
            / (4.0 * 255.0)
    };
    let mut total = 0.0;
    let mut count = 0;
    for y in (0..n - 1).step_by(2) {
        for x in (0..n - 1).step_by(2) {
            for c in 0..3 {
                total += (pooled(a, x, y, c) - pooled(b, x, y, c)).abs();
                count += 1;
            }
        }
    }
    total / count as f32
}
