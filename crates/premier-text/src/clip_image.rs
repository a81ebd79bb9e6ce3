//! CLIP's image preprocessing, as transformers' `CLIPImageProcessor` does it on its PIL backend
//! (`CLIPImageProcessorPil`, what runs where torchvision is not installed): the shorter side
//! resized to 224 with PIL's bicubic resampling of 8-bit images (a horizontal then a vertical
//! pass, fixed-point weights, bytes between the passes), a centre crop of 224 × 224, `x / 255`,
//! then `(x − mean) / std` per channel.

use std::path::Path;

use burn::prelude::*;
use image::RgbImage;
use serde::Deserialize;

use crate::error::{config_error, read_json_config, TextError};

/// OpenAI CLIP's normalization (`image_mean`, `image_std` of every OpenAI CLIP).
pub const OPENAI_CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// See [`OPENAI_CLIP_MEAN`].
pub const OPENAI_CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// The preprocessing's settings (`preprocessor_config.json`).
#[derive(Debug, Clone, PartialEq)]
pub struct ClipImageProcessor {
    /// The shorter side after resizing (224).
    pub shortest_edge: usize,
    /// The side of the centre crop (224); at most `shortest_edge`.
    pub crop: usize,
    /// Per-channel mean, after `x / 255`.
    pub mean: [f32; 3],
    /// Per-channel standard deviation, after `x / 255`.
    pub std: [f32; 3],
}

impl Default for ClipImageProcessor {
    /// `openai/clip-vit-large-patch14`'s: 224, 224, the OpenAI mean and std.
    fn default() -> Self {
        Self {
            shortest_edge: 224,
            crop: 224,
            mean: OPENAI_CLIP_MEAN,
            std: OPENAI_CLIP_STD,
        }
    }
}

#[derive(Deserialize)]
struct ConfigFile {
    size: SizeField,
    crop_size: SizeField,
    image_mean: [f32; 3],
    image_std: [f32; 3],
    #[serde(default = "bicubic")]
    resample: u32,
}

fn bicubic() -> u32 {
    3
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SizeField {
    Edge { shortest_edge: usize },
    Box { height: usize, width: usize },
    Side(usize),
}

impl ClipImageProcessor {
    /// Reads a Hugging Face `preprocessor_config.json` (bicubic resampling only).
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<Self, TextError> {
        let path = path.as_ref();
        let fail = config_error(path, "CLIP image processor");
        let file: ConfigFile = read_json_config(path, "CLIP image processor")?;
        if file.resample != 3 {
            return Err(fail(format!(
                "resample {} (only bicubic, 3, is supported)",
                file.resample
            )));
        }
        let shortest_edge = match file.size {
            SizeField::Edge { shortest_edge } | SizeField::Side(shortest_edge) => shortest_edge,
            SizeField::Box { .. } => return Err(fail("size must give shortest_edge".into())),
        };
        let crop = match file.crop_size {
            SizeField::Box { height, width } if height == width => height,
            SizeField::Side(side) => side,
            _ => return Err(fail("crop_size must be square".into())),
        };
        let processor = Self {
            shortest_edge,
            crop,
            mean: file.image_mean,
            std: file.image_std,
        };
        processor.check().map_err(fail)?;
        Ok(processor)
    }

    fn check(&self) -> Result<(), String> {
        if self.crop == 0 || self.crop > self.shortest_edge {
            return Err(format!(
                "a crop of {} from a shorter side of {}: the crop must be 1 to the shorter side",
                self.crop, self.shortest_edge
            ));
        }
        if self.std.iter().any(|s| !s.is_finite() || *s <= 0.0)
            || self.mean.iter().any(|m| !m.is_finite())
        {
            return Err(format!(
                "mean {:?} and std {:?} must be finite, std > 0",
                self.mean, self.std
            ));
        }
        Ok(())
    }

    /// The resized and centre-cropped image, the bytes before normalization: `crop × crop`.
    pub fn resize_and_crop(&self, image: &RgbImage) -> Result<RgbImage, TextError> {
        self.check().map_err(|reason| TextError::Image { reason })?;
        let (w, h) = (image.width() as usize, image.height() as usize);
        if w == 0 || h == 0 {
            return Err(TextError::Image {
                reason: format!("an empty image ({w}×{h})"),
            });
        }
        // transformers' get_resize_output_image_size: the longer side truncated.
        let (short, long) = if w <= h { (w, h) } else { (h, w) };
        let new_long = (self.shortest_edge as f64 * long as f64 / short as f64) as usize;
        let (new_w, new_h) = if w <= h {
            (self.shortest_edge, new_long)
        } else {
            (new_long, self.shortest_edge)
        };
        let resized = resize_bicubic(image, new_w, new_h);
        let (left, top) = ((new_w - self.crop) / 2, (new_h - self.crop) / 2);
        Ok(image::imageops::crop_imm(
            &resized,
            left as u32,
            top as u32,
            self.crop as u32,
            self.crop as u32,
        )
        .to_image())
    }

    /// Images → pixels `[images, 3, crop, crop]` for [`crate::ClipModel::image_features`].
    pub fn pixels<B: Backend>(
        &self,
        images: &[RgbImage],
        device: &B::Device,
    ) -> Result<Tensor<B, 4>, TextError> {
        let side = self.crop;
        let mut values = Vec::with_capacity(images.len() * 3 * side * side);
        for image in images {
            let bytes = self.resize_and_crop(image)?;
            for c in 0..3 {
                values.extend(
                    bytes
                        .pixels()
                        .map(|p| (p.0[c] as f32 / 255.0 - self.mean[c]) / self.std[c]),
                );
            }
        }
        Ok(Tensor::from_data(
            TensorData::new(values, [images.len(), 3, side, side]),
            device,
        ))
    }
}

/// Fixed-point bits of PIL's 8-bit resampling weights.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// PIL's bicubic kernel (a = −0.5), support 2.
fn bicubic_kernel(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// For each output position of an axis of `input` → `output` samples: the first input index
/// and the fixed-point weights of the inputs from there (PIL's `precompute_coeffs` and
/// `normalize_coeffs_8bpc`).
fn axis_weights(input: usize, output: usize) -> Vec<(usize, Vec<i32>)> {
    let scale = input as f64 / output as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    (0..output)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            // C's (int) truncates toward zero; below zero it is clamped anyway.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(input as i64) as usize;
            let weights: Vec<f64> = (xmin..xmax)
                .map(|x| bicubic_kernel((x as f64 - center + 0.5) / filterscale))
                .collect();
            let total: f64 = weights.iter().sum();
            let fixed = weights
                .iter()
                .map(|&w| {
                    let w = if total != 0.0 { w / total } else { w };
                    let scaled = w * (1u32 << PRECISION_BITS) as f64;
                    (if w < 0.0 { scaled - 0.5 } else { scaled + 0.5 }) as i32
                })
                .collect();
            (xmin, fixed)
        })
        .collect()
}

/// A weighted sum of bytes back to a byte, as PIL's `clip8`.
fn clip8(sum: i32) -> u8 {
    if sum >= (1 << PRECISION_BITS) << 8 {
        255
    } else if sum <= 0 {
        0
    } else {
        (sum >> PRECISION_BITS) as u8
    }
}

/// PIL's `Image.resize((width, height), BICUBIC)` of an RGB image: a horizontal pass (when the
/// width changes) into bytes, then a vertical pass (when the height changes).
fn resize_bicubic(image: &RgbImage, width: usize, height: usize) -> RgbImage {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let pass = |src: &RgbImage, horizontal: bool, out_w: usize, out_h: usize| {
        let weights = if horizontal {
            axis_weights(src.width() as usize, out_w)
        } else {
            axis_weights(src.height() as usize, out_h)
        };
        let mut out = RgbImage::new(out_w as u32, out_h as u32);
        for y in 0..out_h {
            for x in 0..out_w {
                let (first, k) = &weights[if horizontal { x } else { y }];
                let mut sums = [1i32 << (PRECISION_BITS - 1); 3];
                for (i, &weight) in k.iter().enumerate() {
                    let (sx, sy) = if horizontal {
                        (first + i, y)
                    } else {
                        (x, first + i)
                    };
                    let p = src.get_pixel(sx as u32, sy as u32).0;
                    for c in 0..3 {
                        sums[c] += p[c] as i32 * weight;
                    }
                }
                out.put_pixel(x as u32, y as u32, image::Rgb(sums.map(clip8)));
            }
        }
        out
    };
    let wide = if width != w {
        pass(image, true, width, h)
    } else {
        image.clone()
    };
    if height != h {
        pass(&wide, false, width, height)
    } else {
        wide
    }
}
