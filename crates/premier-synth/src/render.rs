//! Drawing a shape: signed distances to the outline, 4×4 supersampling per pixel, and the two
//! patch-scale textures (dotted objects, speckled backgrounds) on the codec's 4×4 token grid.

use image::{Rgb, RgbImage};
use rand::Rng;

use crate::codec::PATCH;
use crate::world::{Content, Style, BACKGROUNDS, IMAGE_SIZE, PALETTE, POSITIONS, SIZES};

const SUPERSAMPLE: usize = 4;
/// A dotted object's holes are only cut this deep inside the shape (pixels), so every hole is
/// enclosed by painted pixels and the object's outline is the shape's.
pub const HOLE_DEPTH: f32 = 1.5;
/// A speckled background's dots: this much lighter on dark backgrounds, darker on light ones
/// (0–255 per channel; well below the scorers' foreground distance).
pub const SPECKLE_SHADE: f32 = 28.0;

/// Small random variations between images of the same content and style.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Jitter {
    /// Added to the radius, in pixels.
    pub radius: f32,
    /// Added to the foreground colour, per channel (0–255 scale).
    pub foreground: [f32; 3],
    /// Added to the background colour, per channel.
    pub background: [f32; 3],
}

impl Jitter {
    /// Radius ±0.4 px, foreground ±12, background ±6 per channel.
    pub fn draw(rng: &mut impl Rng) -> Self {
        let mut channel = |scale: f32| std::array::from_fn(|_| rng.random_range(-scale..=scale));
        let foreground = channel(12.0);
        let background = channel(6.0);
        Self {
            radius: rng.random_range(-0.4..=0.4),
            foreground,
            background,
        }
    }
}

/// Distance from (x, y) to the shape's outline, positive inside.
pub fn signed_distance(shape: usize, cx: f32, cy: f32, r: f32, x: f32, y: f32) -> f32 {
    let (dx, dy) = (x - cx, y - cy);
    match shape {
        0 => r - (dx * dx + dy * dy).sqrt(),
        1 => 0.9 * r - dx.abs().max(dy.abs()),
        _ => {
            // Upward triangle: apex (cx, cy − r), base at cy + 0.8 r from cx − r to cx + r.
            let apex = (cx, cy - r);
            let left = (cx - r, cy + 0.8 * r);
            let right = (cx + r, cy + 0.8 * r);
            let edge = |a: (f32, f32), b: (f32, f32)| {
                let (ex, ey) = (b.0 - a.0, b.1 - a.1);
                let len = (ex * ex + ey * ey).sqrt();
                // Positive on the inner side for counter-clockwise order in image coordinates.
                ((x - a.0) * ey - (y - a.1) * ex) / len
            };
            edge(apex, left)
                .min(edge(left, right))
                .min(edge(right, apex))
        }
    }
}

/// Whether pixel (x, y) is one of the 2×2 in the middle of its 4×4 patch (where dotted objects
/// have holes and speckled backgrounds have dots).
pub fn is_patch_centre(x: u32, y: u32) -> bool {
    let middle = |v: u32| (1..PATCH as u32 - 1).contains(&(v % PATCH as u32));
    middle(x) && middle(y)
}

/// The image of `content` in `style`.
pub fn render(content: Content, style: Style, jitter: &Jitter) -> RgbImage {
    let colour = |base: [u8; 3], delta: [f32; 3]| -> [f32; 3] {
        std::array::from_fn(|c| (base[c] as f32 + delta[c]).clamp(0.0, 255.0))
    };
    let fg = colour(PALETTE[style.palette].1, jitter.foreground);
    let bg = colour(BACKGROUNDS[style.background].1, jitter.background);
    let luminance = bg.iter().sum::<f32>() / 3.0;
    let shade = if luminance < 128.0 {
        SPECKLE_SHADE
    } else {
        -SPECKLE_SHADE
    };
    let speckle = bg.map(|v| (v + shade).clamp(0.0, 255.0));
    let cx = POSITIONS[content.position].1;
    let cy = IMAGE_SIZE as f32 / 2.0;
    let r = SIZES[content.size].1 + jitter.radius;
    let n = IMAGE_SIZE as u32;
    RgbImage::from_fn(n, n, |px, py| {
        let centre = is_patch_centre(px, py);
        let behind = if style.pattern == 1 && centre {
            speckle
        } else {
            bg
        };
        let centre_d = signed_distance(content.shape, cx, cy, r, px as f32 + 0.5, py as f32 + 0.5);
        if style.texture == 1 && centre && centre_d >= HOLE_DEPTH {
            return Rgb(behind.map(|v| v.round() as u8));
        }
        let mut covered = 0;
        for sy in 0..SUPERSAMPLE {
            for sx in 0..SUPERSAMPLE {
                let x = px as f32 + (sx as f32 + 0.5) / SUPERSAMPLE as f32;
                let y = py as f32 + (sy as f32 + 0.5) / SUPERSAMPLE as f32;
                covered += (signed_distance(content.shape, cx, cy, r, x, y) >= 0.0) as usize;
            }
        }
        let a = covered as f32 / (SUPERSAMPLE * SUPERSAMPLE) as f32;
        Rgb(std::array::from_fn(|c| {
            (a * fg[c] + (1.0 - a) * behind[c]).round() as u8
        }))
    })
}
