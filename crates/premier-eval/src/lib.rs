//! # premier-eval
//!
//! The metrics Premier's table reports, on real images, for apps that train or cold-start their
//! own users:
//! - [`ClipScorer`]: CLIP image and prompt embeddings (any Hugging Face `CLIPModel`, CLIP's own
//!   preprocessing) and CLIP-T2I: the cosine of image and prompt, and torchmetrics' `CLIPScore`
//!   (`100 · max(cos, 0)`);
//! - [`PreferenceScorer`]: how well an image fits a user's taste. [`ClipPreference`] is a proxy
//!   without an 8B judge: the mean CLIP cosine of the image to the user's held-out liked images.
//!   **It is not the paper's ViPer score**; a ViPer-style scorer plugs in through the trait;
//! - [`win_rate`]: how often the personalized image beats the base image of the same prompt and
//!   seed under a scorer (the ViPer-rate analog), ties counting a half;
//! - [`Lpips`]: LPIPS (AlexNet or VGG16, the `lpips` package's version 0.1) to the user's
//!   held-out image of the same prompt;
//! - [`evaluate`]: all of them over users' images, as an [`EvalReport`] (markdown, JSON);
//! - [`MeanSe`]: means with standard errors.
#![warn(missing_docs)]

mod clip_scorer;
mod error;
mod lpips;
mod preference;
mod report;
mod stats;

pub use clip_scorer::{clip_score, cosines, ClipScorer};
pub use error::EvalError;
pub use lpips::{Lpips, LpipsNet};
pub use preference::{win_rate, ClipPreference, PreferenceScorer};
pub use report::{evaluate, EvalReport, Row, Scores, Stat, UserImages};
pub use stats::MeanSe;
