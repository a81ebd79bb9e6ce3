//! # premier-train
//!
//! Training Premier on burn. Present so far:
//! - [`prodigy`]: an exact port of prodigyopt 1.1.2 (the optimizer of Premier's stage 1 and of
//!   direct per-user training), on flattened parameters;
//! - [`clip::clip_grad_norm`]: global gradient-norm clipping as `torch.nn.utils.clip_grad_norm_`
//!   (Lightning's `gradient_clip_val`, 0.5 in the released training).

pub mod clip;
pub mod prodigy;
