//! # premier-mmdit
//!
//! The FLUX.1 MM-DiT (black-forest-labs/flux `model.py`, `layers.py`, `math.py`) on burn, with
//! Premier's hook: per-token directions Δ added to the text tokens' modulation vector in every
//! double-stream block.
//!
//! ```no_run
//! use burn::backend::Flex;
//! use premier_mmdit::{Flux, FluxConfig, FluxInput, TextModulation};
//!
//! let device = Default::default();
//! let config = FluxConfig::dev();
//! let flux = Flux::<Flex>::load("flux1-dev.safetensors", &config, &device)?;
//! # let input: FluxInput<Flex> = unimplemented!();
//! # let delta: TextModulation<Flex> = unimplemented!();
//! let velocity = flux.forward(input, Some(&delta)); // [batch, img_tokens, 64]
//! # Ok::<(), premier_mmdit::LoadError>(())
//! ```
#![warn(missing_docs)]

pub mod blocks;
mod config;
pub mod embed;
mod error;
mod export;
pub mod fused;
mod latent;
pub mod load;
pub mod memory;
mod model;
mod modulation;
pub mod norm;

pub use config::{ConfigError, FluxConfig};
pub use error::ForwardError;
pub use export::export_linear;
pub use fused::{FluxAutodiffBackend, FluxOps};
pub use latent::{img_ids, pack, txt_ids, unpack};
pub use load::LoadOptions;
pub use memory::PassShape;
pub use model::{Flux, FluxInput};
pub use modulation::TextModulation;
pub use premier_io::LoadError;
