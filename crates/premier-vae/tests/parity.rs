//! Parity with diffusers `AutoencoderKL` / BFL `AutoEncoder` (fixture `vae_tiny`), for both key
//! layouts. Tolerances (fixture README): latents atol 1e-5, decoded and intermediates atol 1e-4.

use std::path::PathBuf;

use burn::backend::Flex;
use burn::prelude::*;
use premier_io::SafetensorsFile;
use premier_vae::{scale_latent, unscale_latent, Autoencoder, AutoencoderConfig, VaeError};

type B = Flex;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

fn tiny_config() -> AutoencoderConfig {
    AutoencoderConfig {
        in_channels: 3,
        out_channels: 3,
        latent_channels: 16,
        block_out_channels: vec![24, 48],
        layers_per_block: 1,
        norm_num_groups: 8,
        scaling_factor: 0.3611,
        shift_factor: 0.1159,
    }
}

fn tensor<const D: usize>(f: &SafetensorsFile, key: &str) -> Tensor<B, D> {
    f.read(key).unwrap().into_tensor(&Default::default())
}

fn assert_close<const D: usize>(what: &str, got: Tensor<B, D>, want: Tensor<B, D>, atol: f32) {
    assert_eq!(got.dims(), want.dims(), "{what}");
    let diff = (got - want).abs().max().into_scalar();
    eprintln!("{what}: max |diff| = {diff:e}");
    assert!(diff <= atol, "{what}: {diff:e} > {atol:e}");
}

#[test]
fn both_layouts_match_the_reference() {
    let f = SafetensorsFile::open(&fixture("vae_tiny.safetensors")).unwrap();
    let config = tiny_config();
    for file in [
        "vae_tiny_weights_bfl.safetensors",
        "vae_tiny_weights_diffusers.safetensors",
    ] {
        let vae = Autoencoder::<B>::load(fixture(file), &config, &Default::default())
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        let image: Tensor<B, 4> = tensor(&f, "image");
        let levels = vae.encoder_levels(image.clone());
        assert_close(
            "enc_down0",
            levels[0].clone(),
            tensor(&f, "enc_down0"),
            1e-4,
        );
        assert_close(
            "enc_down1",
            levels[1].clone(),
            tensor(&f, "enc_down1"),
            1e-4,
        );
        let posterior = vae.encode(image);
        assert_close(
            "posterior_mean",
            posterior.mean.clone(),
            tensor(&f, "posterior_mean"),
            1e-5,
        );
        assert_close(
            "posterior_logvar",
            posterior.logvar.clone(),
            tensor(&f, "posterior_logvar"),
            1e-5,
        );
        let latent = scale_latent(posterior.mean, &config);
        assert_close(
            "latent_scaled",
            latent.clone(),
            tensor(&f, "latent_scaled"),
            1e-5,
        );
        let z = unscale_latent(tensor(&f, "latent_scaled"), &config);
        assert_close(
            "dec_mid",
            vae.decoder_mid(z.clone()),
            tensor(&f, "dec_mid"),
            1e-4,
        );
        assert_close(
            &format!("{file}: decoded"),
            vae.decode(z),
            tensor(&f, "decoded"),
            1e-4,
        );
    }
}

#[test]
fn bad_sizes_and_files_are_errors() {
    let vae = Autoencoder::<B>::load(
        fixture("vae_tiny_weights_bfl.safetensors"),
        &tiny_config(),
        &Default::default(),
    )
    .unwrap();
    let odd = Tensor::<B, 4>::zeros([1, 3, 24, 32], &Default::default());
    // Tiny VAE downsamples by 2, so images need multiples of 4; 24 × 32 is fine, 26 is not.
    assert!(vae.try_encode(odd).is_ok());
    let bad = Tensor::<B, 4>::zeros([1, 3, 26, 32], &Default::default());
    assert!(matches!(
        vae.try_encode(bad),
        Err(VaeError::ImageSize {
            height: 26,
            width: 32,
            multiple: 4
        })
    ));
    let gray = Tensor::<B, 4>::zeros([1, 1, 32, 32], &Default::default());
    assert!(matches!(
        vae.try_encode(gray),
        Err(VaeError::Channels { expected: 3, .. })
    ));

    // A transformer checkpoint is not an autoencoder.
    let err = Autoencoder::<B>::load(
        fixture("tiny_flux_weights_bfl.safetensors"),
        &tiny_config(),
        &Default::default(),
    )
    .unwrap_err();
    assert!(matches!(err, VaeError::UnknownLayout { .. }), "{err}");
    // The FLUX config against the tiny file reports the first shape that differs.
    let err = Autoencoder::<B>::load(
        fixture("vae_tiny_weights_bfl.safetensors"),
        &AutoencoderConfig::flux(),
        &Default::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("encoder.conv_in.weight"), "{err}");
}

/// Tiled decoding: a tile covering the latent is the whole decode; smaller tiles give the same
/// image away from the seams and a blend near them (the decoder sees each tile alone).
#[test]
fn tiled_decoding_matches_the_whole_decode() {
    use premier_vae::Tiling;
    let f = SafetensorsFile::open(&fixture("vae_tiny.safetensors")).unwrap();
    let config = tiny_config();
    let vae = Autoencoder::<B>::load(
        fixture("vae_tiny_weights_bfl.safetensors"),
        &config,
        &Default::default(),
    )
    .unwrap();
    let z = unscale_latent(tensor(&f, "latent_scaled"), &config);
    let [_, _, h, w] = z.dims();
    let whole = vae.decode(z.clone());
    let covering = Tiling {
        tile: h.max(w),
        overlap: 4,
    };
    let same = vae.try_decode_tiled(z.clone(), covering).unwrap();
    assert_eq!((same - whole.clone()).abs().max().into_scalar(), 0.0);

    let tiled = vae
        .try_decode_tiled(
            z.clone(),
            Tiling {
                tile: h / 2 + 2,
                overlap: 4,
            },
        )
        .unwrap();
    assert_eq!(tiled.dims(), whole.dims());
    let rel = |a: Tensor<B, 4>, b: Tensor<B, 4>| -> f32 {
        let diff: f32 = (a - b.clone()).powf_scalar(2.0).sum().sqrt().into_scalar();
        diff / b.powf_scalar(2.0).sum().sqrt().into_scalar()
    };
    let e = rel(tiled.clone(), whole.clone());
    eprintln!(
        "2×2 tiles of {}² latent pixels vs the whole decode: relative L2 {e:.3e}",
        h / 2 + 2
    );
    assert!(e.is_finite() && e > 0.0, "{e}");

    let err = vae
        .try_decode_tiled(
            z,
            Tiling {
                tile: 4,
                overlap: 4,
            },
        )
        .unwrap_err();
    assert!(err.to_string().contains("overlap must be smaller"), "{err}");
}
