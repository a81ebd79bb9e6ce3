//! Scorers that read only pixels, independent of any model: the world's analogs of the paper's
//! ViPer score and rate (preference), CLIP T2I (prompt fidelity) and LPIPS (distance).
//!
//! An image is analysed once: the background is the median of the border, the foreground the
//! pixels far from it, the object the region the background cannot reach from the border
//! (so an outline counts with its inside), and the stroke the share of the object's interior
//! that is painted.

use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::world::{Content, Taste, BACKGROUNDS, FACTOR_SIZES, PALETTE, POSITIONS};

/// Colour distance (RGB in [0, 1], Euclidean) above which a pixel is foreground.
const FOREGROUND_DISTANCE: f32 = 0.25;
/// Width of the preference kernels: colour in RGB units, stroke in interior fraction.
const COLOUR_SIGMA: f32 = 0.15;
/// Painted share of the interior: at most this for an outline, at least `FILLED_ABOVE` when filled
/// (rendered outlines measure 0.03–0.42, filled shapes 1.0); linear in between.
const OUTLINED_BELOW: f32 = 0.55;
const FILLED_ABOVE: f32 = 0.85;
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
    /// Painted share of the object's interior: 1 filled, 0 outlined.
    pub stroke: f32,
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

/// Measures background, foreground, stroke, shape, position and size.
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
    let area = object.iter().filter(|&&o| o).count();
    if area < 3 {
        return Analysis {
            background,
            foreground: None,
            stroke: 0.0,
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

    // Interior: object pixels whose 8 neighbours are object too; how painted each is, 0 to 1.
    let inside = |x: isize, y: isize| {
        x >= 0
            && y >= 0
            && (x as usize) < n
            && (y as usize) < n
            && object[idx(x as usize, y as usize)]
    };
    let mut interior = 0usize;
    let mut painted = 0.0f32;
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
            let (xi, yi) = (x as isize, y as isize);
            let deep = (-1..=1)
                .flat_map(|dy| (-1..=1).map(move |dx| (dx, dy)))
                .all(|(dx, dy)| inside(xi + dx, yi + dy));
            if deep {
                interior += 1;
                painted += (dist[idx(x, y)] / max_d).min(1.0);
            }
        }
    }
    let (w, h) = ((max_x - min_x + 1) as f32, (max_y - min_y + 1) as f32);
    let bottom = (min_x..=max_x).filter(|&x| object[idx(x, max_y)]).count();
    Analysis {
        background,
        foreground,
        // A shape too thin to have an interior reads as filled only if it is all foreground.
        stroke: if interior > 0 {
            painted / interior as f32
        } else {
            let fg_area = object.iter().zip(&fg).filter(|(o, f)| **o && **f).count();
            fg_area as f32 / area as f32
        },
        extent: area as f32 / (w * h),
        bottom_fill: bottom as f32 / w,
        centroid_x: sum_x / area as f32,
        side: w.max(h),
    }
}

fn kernel(d: f32, sigma: f32) -> f32 {
    (-d * d / (2.0 * sigma * sigma)).exp()
}

fn colour01(c: [u8; 3]) -> [f32; 3] {
    c.map(|v| v as f32 / 255.0)
}

/// How well each factor of the image matches each value: `[factor][value]` in [0, 1], 1 exactly
/// at the value's prototype.
pub fn factor_similarities(a: &Analysis) -> [Vec<f32>; 3] {
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
    let filled = ((a.stroke - OUTLINED_BELOW) / (FILLED_ABOVE - OUTLINED_BELOW)).clamp(0.0, 1.0);
    let stroke = if a.foreground.is_none() {
        vec![0.0, 0.0]
    } else {
        vec![filled, 1.0 - filled]
    };
    [palette, background, stroke]
}

/// Preference score in [0, 1] (the ViPer-score analog): for each factor, the best match over the
/// values the user likes, weighted by how much relative to their favourite; averaged over factors.
/// An image exactly in a liked style scores 1.
pub fn preference_score(image: &RgbImage, taste: &Taste) -> f32 {
    let sims = factor_similarities(&analyse(image));
    let mut total = 0.0;
    for f in 0..FACTOR_SIZES.len() {
        let probs = &taste.factors[f];
        let top = probs.iter().copied().fold(0.0f32, f32::max).max(1e-6);
        total += (0..probs.len())
            .map(|v| probs[v] / top * sims[f][v])
            .fold(0.0f32, f32::max);
    }
    total / FACTOR_SIZES.len() as f32
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
