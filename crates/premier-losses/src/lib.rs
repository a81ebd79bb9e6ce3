//! # premier-losses
//!
//! The losses of Premier's training (SPEC §4–5):
//! - rectified-flow matching: timestep samplers, `x_t = (1-t)·x0 + t·ε`, target `ε - x0`, MSE;
//! - dispersion losses that keep different users' Δ apart, in the variant the paper describes
//!   (and the official "stable" code implements; it runs away), the released per-GPU variant,
//!   Wang & He's dispersive loss, and a bounded hinge (the default).
//!
//! ```
//! use burn::backend::Flex;
//! use burn::prelude::*;
//! use premier_losses::{dispersion_loss, DispersionVariant};
//!
//! let device = Default::default();
//! // Four users' flattened Δ: [batch, features].
//! let z = Tensor::<Flex, 2>::from_floats([[0.0, 1.0], [1.0, 0.0], [2.0, 2.0], [0.5, 0.5]], &device);
//! let loss = dispersion_loss(z, DispersionVariant::Stable); // [1]
//! assert!(loss.into_scalar() < 0.0);
//! ```
#![warn(missing_docs)]

mod dispersion;
mod flow;

pub use dispersion::{
    dispersion_loss, dispersion_loss_with_tau, DispersionVariant, UnknownDispersion,
};
pub use flow::{flow_matching_loss, flow_target, interpolate, shift_timesteps, TimestepSampler};
