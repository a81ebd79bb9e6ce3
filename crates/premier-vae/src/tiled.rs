//! Decoding a latent in overlapping tiles, so the decoder's activations grow with the tile and
//! not with the image (as diffusers' `tiled_decode`). Each tile's pixels are weighted by a ramp
//! that rises from its inner edges over the overlap (flat at the image's border), and the image is
//! the weighted sum divided by the summed weights, so any overlap pattern blends to a partition
//! of unity. The decoder's convolutions and mid-block attention see one tile at a time, so a tiled
//! image differs from the whole decode near the seams; a tile covering the latent is exact.

use burn::prelude::*;

use crate::{Autoencoder, VaeError};

/// Tile and overlap sides, in latent pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tiling {
    /// Side of a square tile.
    pub tile: usize,
    /// How far neighbouring tiles overlap (blended linearly there).
    pub overlap: usize,
}

impl Tiling {
    /// 64-pixel tiles (512 image pixels) overlapping by 16, as diffusers' defaults for FLUX.
    pub fn flux() -> Self {
        Self {
            tile: 64,
            overlap: 16,
        }
    }
}

/// Starts of tiles of side `tile` covering `len` with at least `overlap` shared: evenly spread,
/// the first at 0 and the last ending at `len`.
fn tile_starts(len: usize, tile: usize, overlap: usize) -> Vec<usize> {
    if tile >= len {
        return vec![0];
    }
    let n = (len - overlap).div_ceil(tile - overlap).max(2);
    (0..n).map(|i| i * (len - tile) / (n - 1)).collect()
}

/// The blending weight of each pixel of a tile spanning `[start, start + tile)` of `len` along one
/// axis, all in image pixels: rising over `ramp` pixels from each edge inside the image, 1 along
/// the image's own border (always > 0).
fn axis_weights(start: usize, tile: usize, len: usize, ramp: usize) -> Vec<f32> {
    (0..tile)
        .map(|p| {
            let from_start = if start == 0 { ramp } else { p };
            let from_end = if start + tile == len {
                ramp
            } else {
                tile - 1 - p
            };
            let d = from_start.min(from_end) as f32 + 0.5;
            (d / ramp.max(1) as f32).min(1.0)
        })
        .collect()
}

impl<B: Backend> Autoencoder<B> {
    /// [`Autoencoder::try_decode`] in tiles: z `[batch, 16, h, w]` (unscaled) → image
    /// `[batch, 3, 8h, 8w]`. A tile of at least h × w decodes the latent whole.
    pub fn try_decode_tiled(
        &self,
        z: Tensor<B, 4>,
        tiling: Tiling,
    ) -> Result<Tensor<B, 4>, VaeError> {
        decode_in_tiles(z, tiling, |tile| self.try_decode(tile))
    }
}

/// The tiling and blending of [`Autoencoder::try_decode_tiled`] around any `decode` that maps a
/// latent `[batch, c, h, w]` to an image `[batch, c', f·h, f·w]`.
fn decode_in_tiles<B: Backend>(
    z: Tensor<B, 4>,
    tiling: Tiling,
    decode: impl Fn(Tensor<B, 4>) -> Result<Tensor<B, 4>, VaeError>,
) -> Result<Tensor<B, 4>, VaeError> {
    let [batch, latent_channels, h, w] = z.dims();
    if tiling.tile >= h && tiling.tile >= w {
        return decode(z);
    }
    if tiling.tile == 0 || tiling.overlap >= tiling.tile {
        return Err(VaeError::Tiling {
            tile: tiling.tile,
            overlap: tiling.overlap,
        });
    }
    let device = z.device();
    let (th, tw) = (tiling.tile.min(h), tiling.tile.min(w));
    // Σ tile · weight and Σ weight over the image, made at the first tile (its size and type).
    let mut sums: Option<(Tensor<B, 4>, Tensor<B, 4>)> = None;
    for &y in &tile_starts(h, tiling.tile, tiling.overlap) {
        for &x in &tile_starts(w, tiling.tile, tiling.overlap) {
            let tile =
                decode(
                    z.clone()
                        .slice([0..batch, 0..latent_channels, y..y + th, x..x + tw]),
                )?;
            let [_, channels, ph, pw] = tile.dims();
            let factor = ph / th;
            let ramp = tiling.overlap * factor;
            let (full_h, full_w) = (h * factor, w * factor);
            let wy = axis_weights(y * factor, ph, full_h, ramp);
            let wx = axis_weights(x * factor, pw, full_w, ramp);
            let mask: Vec<f32> = wy
                .iter()
                .flat_map(|a| wx.iter().map(move |b| a * b))
                .collect();
            let mask = Tensor::<B, 1>::from_data(TensorData::new(mask, [ph * pw]), &device)
                .reshape([1, 1, ph, pw])
                .cast(tile.dtype());
            let (sum, weights) = sums.get_or_insert_with(|| {
                let zeros = |c| {
                    Tensor::<B, 4>::zeros([batch, c, full_h, full_w], &device).cast(tile.dtype())
                };
                (zeros(channels), zeros(1).narrow(0, 0, 1))
            });
            let (rows, cols) = (y * factor..y * factor + ph, x * factor..x * factor + pw);
            let region = [0..batch, 0..channels, rows.clone(), cols.clone()];
            *sum = sum.clone().slice_assign(
                region.clone(),
                sum.clone().slice(region) + tile * mask.clone(),
            );
            let region = [0..1, 0..1, rows, cols];
            *weights = weights
                .clone()
                .slice_assign(region.clone(), weights.clone().slice(region) + mask);
        }
    }
    match sums {
        Some((sum, weights)) => Ok(sum / weights),
        None => decode(z),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_cover_the_length_with_the_overlap_and_end_at_it() {
        for (len, tile, overlap) in [
            (64, 64, 16),
            (100, 64, 16),
            (128, 64, 16),
            (200, 64, 8),
            (65, 64, 0),
        ] {
            let starts = tile_starts(len, tile, overlap);
            assert_eq!(starts[0], 0);
            assert_eq!(starts.last().unwrap() + tile.min(len), len, "{starts:?}");
            for pair in starts.windows(2) {
                assert!(
                    pair[0] + tile >= pair[1] + overlap,
                    "{len} {tile} {overlap}: {starts:?}"
                );
            }
        }
    }

    /// With a decoder that is local (each latent pixel becomes its own 2 × 2 block, scaled), the
    /// blend of overlapping tiles is exactly the whole decode: the weights sum to one everywhere.
    #[test]
    fn tiles_of_a_local_decoder_blend_to_the_whole_decode() {
        type B = burn::backend::Flex;
        let local = |z: Tensor<B, 4>| -> Result<Tensor<B, 4>, VaeError> {
            let [b, c, h, w] = z.dims();
            Ok(z.reshape([b, c, h, 1, w, 1])
                .expand([b, c, h, 2, w, 2])
                .reshape([b, c, 2 * h, 2 * w])
                * 3.0)
        };
        let z = Tensor::<B, 4>::random(
            [2, 3, 23, 17],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &Default::default(),
        );
        let whole = local(z.clone()).unwrap();
        for tiling in [
            Tiling {
                tile: 8,
                overlap: 2,
            },
            Tiling {
                tile: 10,
                overlap: 5,
            },
            Tiling {
                tile: 20,
                overlap: 0,
            },
        ] {
            let tiled = decode_in_tiles(z.clone(), tiling, local).unwrap();
            let diff: f32 = (tiled - whole.clone()).abs().max().into_scalar();
            assert!(diff < 1e-5, "{tiling:?}: {diff}");
        }
    }

    #[test]
    fn weights_ramp_inside_the_image_and_stay_flat_on_its_border() {
        let w = axis_weights(0, 8, 20, 4);
        assert!(w[..4].iter().all(|&v| v == 1.0), "{w:?}");
        assert!(w[7] < w[6] && w[7] > 0.0, "{w:?}");
        let w = axis_weights(12, 8, 20, 4);
        assert!(w[0] < w[1] && w[0] > 0.0 && w[7] == 1.0, "{w:?}");
    }
}
