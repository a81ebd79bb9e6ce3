//! Drawing a shape: signed distances to the outline, 4×4 supersampling per pixel.

use image::{Rgb, RgbImage};
use rand::Rng;

use crate::world::{Content, Style, BACKGROUNDS, IMAGE_SIZE, PALETTE, POSITIONS, SIZES};

/// Width of an outline, in pixels.
pub const STROKE_WIDTH: f32 = 1.4;
const SUPERSAMPLE: usize = 4;

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

/// Whether a point at signed distance `d` is painted.
fn painted(d: f32, stroke: usize) -> bool {
    match stroke {
        0 => d >= 0.0,
        _ => (0.0..STROKE_WIDTH).contains(&d),
    }
}

/// The image of `content` in `style`.
pub fn render(content: Content, style: Style, jitter: &Jitter) -> RgbImage {
    let colour = |base: [u8; 3], delta: [f32; 3]| -> [f32; 3] {
        std::array::from_fn(|c| (base[c] as f32 + delta[c]).clamp(0.0, 255.0))
    };
    let fg = colour(PALETTE[style.palette].1, jitter.foreground);
    let bg = colour(BACKGROUNDS[style.background].1, jitter.background);
    let cx = POSITIONS[content.position].1;
    let cy = IMAGE_SIZE as f32 / 2.0;
    let r = SIZES[content.size].1 + jitter.radius;
    let n = IMAGE_SIZE as u32;
    RgbImage::from_fn(n, n, |px, py| {
        let mut covered = 0;
        for sy in 0..SUPERSAMPLE {
            for sx in 0..SUPERSAMPLE {
                let x = px as f32 + (sx as f32 + 0.5) / SUPERSAMPLE as f32;
                let y = py as f32 + (sy as f32 + 0.5) / SUPERSAMPLE as f32;
                let d = signed_distance(content.shape, cx, cy, r, x, y);
                covered += painted(d, style.stroke) as usize;
            }
        }
        let a = covered as f32 / (SUPERSAMPLE * SUPERSAMPLE) as f32;
        Rgb(std::array::from_fn(|c| {
            (a * fg[c] + (1.0 - a) * bg[c]).round() as u8
        }))
    })
}
