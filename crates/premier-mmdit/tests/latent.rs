//! Packing latents into tokens and position ids, against BFL `prepare`/`unpack` (fixture `sampling`).

mod common;

use burn::prelude::*;
use burn::tensor::Distribution;
use common::{max_abs_diff, Fixture, B};
use premier_mmdit::{img_ids, pack, txt_ids, unpack};

#[test]
fn pack_and_unpack_match_bfl() {
    let f = Fixture::open("sampling.safetensors");
    let noise: Tensor<B, 4> = f.tensor("denoise_noise"); // [1, 4, 8, 12]
    assert_eq!(
        max_abs_diff(pack(noise), f.tensor("denoise_img_packed")),
        0.0
    );
    let final_packed: Tensor<B, 3> = f.tensor("denoise_final_packed");
    assert_eq!(
        max_abs_diff(
            unpack(final_packed, 8, 12),
            f.tensor("denoise_final_unpacked")
        ),
        0.0
    );
}

#[test]
fn ids_match_bfl() {
    let device = Default::default();
    let f = Fixture::open("sampling.safetensors");
    let want: Tensor<B, 2> = f.tensor("denoise_img_ids"); // 4 × 6 token grid of an 8 × 12 latent
    assert_eq!(
        max_abs_diff(img_ids::<B>(1, 8, 12, &device), want.unsqueeze_dim(0)),
        0.0
    );
    let want: Tensor<B, 2> = f.tensor("denoise_txt_ids");
    assert_eq!(
        max_abs_diff(txt_ids::<B>(1, 8, &device), want.unsqueeze_dim(0)),
        0.0
    );
}

#[test]
fn pack_round_trips_for_any_even_size() {
    let device = Default::default();
    for (c, h, w) in [(16, 2, 2), (16, 6, 10), (3, 14, 4)] {
        let latent = Tensor::<B, 4>::random([2, c, h, w], Distribution::Normal(0.0, 1.0), &device);
        let tokens = pack(latent.clone());
        assert_eq!(tokens.dims(), [2, (h / 2) * (w / 2), c * 4]);
        assert_eq!(max_abs_diff(unpack(tokens, h, w), latent), 0.0);
    }
    // The id grid is row-major: token r·(w/2) + c has ids [0, r, c].
    let ids = img_ids::<B>(3, 6, 10, &device)
        .into_data()
        .to_vec::<f32>()
        .unwrap();
    let per_batch = 3 * 5 * 3;
    assert_eq!(ids.len(), 3 * per_batch);
    assert_eq!(&ids[per_batch + 3 * 7..per_batch + 3 * 8], &[0.0, 1.0, 2.0]);
}
