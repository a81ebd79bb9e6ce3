use std::path::PathBuf;

use premier_mmdit::LoadError;

/// Errors of loading or running the autoencoder.
#[derive(Debug, thiserror::Error)]
pub enum VaeError {
    #[error("image of {height}×{width}: FLUX needs both sides divisible by {multiple} (resize or crop first)")]
    ImageSize {
        height: usize,
        width: usize,
        multiple: usize,
    },
    #[error("expected {expected} channels, got a tensor of shape {found:?}")]
    Channels { expected: usize, found: Vec<usize> },
    #[error("{path}: not an AutoencoderKL config: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("{path}: neither the BFL (`encoder.down.0.block.0.conv1.weight`) nor the diffusers (`encoder.down_blocks.0.resnets.0.conv1.weight`) autoencoder layout")]
    UnknownLayout { path: PathBuf },
    #[error("VAE tiles of {tile} latent pixels cannot overlap by {overlap}: the overlap must be smaller than the tile")]
    Tiling { tile: usize, overlap: usize },
    #[error(transparent)]
    File(#[from] LoadError),
}
