use std::path::PathBuf;

use premier_io::LoadError;

/// Errors of loading or running the autoencoder.
#[derive(Debug, thiserror::Error)]
pub enum VaeError {
    /// An image whose sides the autoencoder and FLUX's packing cannot take.
    #[error("image of {height}×{width}: FLUX needs both sides divisible by {multiple} (resize or crop first)")]
    ImageSize {
        /// The image's height in pixels.
        height: usize,
        /// The image's width in pixels.
        width: usize,
        /// What both sides must be a multiple of.
        multiple: usize,
    },
    /// A tensor with another channel count than the model's.
    #[error("expected {expected} channels, got a tensor of shape {found:?}")]
    Channels {
        /// The model's channels.
        expected: usize,
        /// The tensor's shape.
        found: Vec<usize>,
    },
    /// A `config.json` that is not an AutoencoderKL's.
    #[error("{path}: not an AutoencoderKL config: {reason}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A weights file of neither known layout.
    #[error("{path}: neither the BFL (`encoder.down.0.block.0.conv1.weight`) nor the diffusers (`encoder.down_blocks.0.resnets.0.conv1.weight`) autoencoder layout")]
    UnknownLayout {
        /// The weights file.
        path: PathBuf,
    },
    /// Tiles that cannot overlap as asked.
    #[error("VAE tiles of {tile} latent pixels cannot overlap by {overlap}: the overlap must be smaller than the tile")]
    Tiling {
        /// Tile side, in latent pixels.
        tile: usize,
        /// Overlap, in latent pixels.
        overlap: usize,
    },
    /// Reading the weights (names the file and key).
    #[error(transparent)]
    File(#[from] LoadError),
}
