//! Images in and out: RGB8 files ↔ tensors in [-1, 1], PNG output and grids.

use std::path::Path;

use burn::prelude::*;
use image::{imageops::FilterType, RgbImage};
use premier_io::write_via_temp;

use crate::error::PipelineError;

/// Reads an image file as RGB, resized (Lanczos) to `width × height` if given:
/// `[1, 3, h, w]` in [-1, 1].
pub fn load_image<B: Backend>(
    path: impl AsRef<Path>,
    size: Option<(u32, u32)>,
    device: &B::Device,
) -> Result<Tensor<B, 4>, PipelineError> {
    let path = path.as_ref();
    let img = image::open(path).map_err(|e| PipelineError::ReadImage {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let mut rgb = img.to_rgb8();
    if let Some((w, h)) = size {
        if rgb.dimensions() != (w, h) {
            rgb = image::imageops::resize(&rgb, w, h, FilterType::Lanczos3);
        }
    }
    Ok(rgb_to_tensor(&rgb, device))
}

/// RGB8 → `[1, 3, h, w]` in [-1, 1].
pub fn rgb_to_tensor<B: Backend>(rgb: &RgbImage, device: &B::Device) -> Tensor<B, 4> {
    let (w, h) = rgb.dimensions();
    let (w, h) = (w as usize, h as usize);
    let mut data = vec![0f32; 3 * h * w];
    for (x, y, p) in rgb.enumerate_pixels() {
        for c in 0..3 {
            data[c * h * w + y as usize * w + x as usize] = p[c] as f32 / 127.5 - 1.0;
        }
    }
    Tensor::from_data(TensorData::new(data, [1, 3, h, w]), device)
}

/// `[batch, 3, h, w]` in [-1, 1] (clamped) → one RGB8 image per batch entry.
pub fn tensor_to_rgb<B: Backend>(images: Tensor<B, 4>) -> Vec<RgbImage> {
    let [batch, _, h, w] = images.dims();
    let data = images
        .clamp(-1.0, 1.0)
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .unwrap_or_default();
    (0..batch)
        .map(|b| {
            RgbImage::from_fn(w as u32, h as u32, |x, y| {
                let at = |c: usize| data[((b * 3 + c) * h + y as usize) * w + x as usize];
                image::Rgb(
                    [0, 1, 2].map(|c| ((at(c) + 1.0) * 127.5).round().clamp(0.0, 255.0) as u8),
                )
            })
        })
        .collect()
}

/// Saves an RGB image as PNG, atomically (temporary file, then rename).
pub fn save_png(image: &RgbImage, path: impl AsRef<Path>) -> Result<(), PipelineError> {
    let path = path.as_ref();
    let fail = |reason: String| PipelineError::WriteImage {
        path: path.to_path_buf(),
        reason,
    };
    write_via_temp(path, |tmp| {
        image
            .save_with_format(tmp, image::ImageFormat::Png)
            .map_err(|e| e.to_string())
    })
    .map_err(fail)
}

/// Lays images out row by row (`rows[r][c]`), all cells the size of the first image, with a
/// `gap`-pixel white border. Missing cells stay white.
pub fn grid(rows: &[Vec<RgbImage>], gap: u32) -> RgbImage {
    let (cw, ch) = rows
        .iter()
        .flatten()
        .next()
        .map(|i| i.dimensions())
        .unwrap_or((1, 1));
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0) as u32;
    let width = cols * cw + (cols + 1) * gap;
    let height = rows.len() as u32 * ch + (rows.len() as u32 + 1) * gap;
    let mut out = RgbImage::from_pixel(width.max(1), height.max(1), image::Rgb([255, 255, 255]));
    for (r, row) in rows.iter().enumerate() {
        for (c, img) in row.iter().enumerate() {
            let x = gap + c as u32 * (cw + gap);
            let y = gap + r as u32 * (ch + gap);
            image::imageops::overlay(&mut out, img, x as i64, y as i64);
        }
    }
    out
}
