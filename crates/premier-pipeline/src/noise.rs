//! Reproducible starting noise, independent of the backend.

use burn::prelude::*;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

/// Standard normal noise of `shape` from a seeded host RNG (`StdRng`), so the same seed gives the
/// same image on every backend: `[batch, channels, h, w]`, one seed per batch entry.
pub fn seeded_noise<B: Backend>(
    seeds: &[u64],
    channels: usize,
    h: usize,
    w: usize,
    device: &B::Device,
) -> Tensor<B, 4> {
    let per_image = channels * h * w;
    let data: Vec<f32> = seeds
        .iter()
        .flat_map(|&seed| {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            (0..per_image)
                .map(move |_| StandardNormal.sample(&mut rng))
                .collect::<Vec<f32>>()
        })
        .collect();
    Tensor::from_data(TensorData::new(data, [seeds.len(), channels, h, w]), device)
}
