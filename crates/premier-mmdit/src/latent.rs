//! Packing latents into tokens and the position ids FLUX expects (BFL `sampling.py`).

use burn::prelude::*;

/// Packs 2×2 latent patches into tokens: `[batch, c, h, w]` → `[batch, (h/2)·(w/2), c·4]`.
///
/// `b c (h ph) (w pw) -> b (h w) (c ph pw)`: token channel `c·4 + ph·2 + pw`, tokens row-major.
/// `h` and `w` must be even.
pub fn pack<B: Backend>(latent: Tensor<B, 4>) -> Tensor<B, 3> {
    let [batch, c, h, w] = latent.dims();
    latent
        .reshape([batch, c, h / 2, 2, w / 2, 2])
        .permute([0, 2, 4, 1, 3, 5])
        .reshape([batch, (h / 2) * (w / 2), c * 4])
}

/// Inverse of [`pack`]: `[batch, (h/2)·(w/2), c·4]` → `[batch, c, h, w]` for latent size `h × w`.
pub fn unpack<B: Backend>(tokens: Tensor<B, 3>, h: usize, w: usize) -> Tensor<B, 4> {
    let [batch, _, channels] = tokens.dims();
    let c = channels / 4;
    tokens
        .reshape([batch, h / 2, w / 2, c, 2, 2])
        .permute([0, 3, 1, 4, 2, 5])
        .reshape([batch, c, h, w])
}

/// Image position ids for a latent of `h × w` (even): `[batch, (h/2)·(w/2), 3]`, rows `[0, row, col]`.
pub fn img_ids<B: Backend>(batch: usize, h: usize, w: usize, device: &B::Device) -> Tensor<B, 3> {
    let (rows, cols) = (h / 2, w / 2);
    let ids: Vec<f32> = (0..rows)
        .flat_map(|r| (0..cols).flat_map(move |c| [0.0, r as f32, c as f32]))
        .collect();
    Tensor::<B, 2>::from_data(TensorData::new(ids, [rows * cols, 3]), device)
        .unsqueeze_dim::<3>(0)
        .repeat_dim(0, batch)
}

/// Text position ids, all zero: `[batch, txt_tokens, 3]`.
pub fn txt_ids<B: Backend>(batch: usize, txt_tokens: usize, device: &B::Device) -> Tensor<B, 3> {
    Tensor::zeros([batch, txt_tokens, 3], device)
}
