//! Typed errors of running the transformer (loading errors are [`premier_io::LoadError`]).

/// Inputs that a forward pass cannot take.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// An input of another shape than the model and the other inputs call for.
    #[error("input `{input}` has shape {found:?}, expected {expected:?}")]
    Shape {
        /// Which input (`img`, `txt`, …).
        input: String,
        /// The shape called for.
        expected: Vec<usize>,
        /// The shape given.
        found: Vec<usize>,
    },
    /// A guidance-distilled model (dev) run without a guidance value.
    #[error("this model embeds guidance (guidance_embed = true) but FluxInput.guidance is None")]
    MissingGuidance,
    /// A Δ that does not fit the text tokens or the blocks (what is wrong is said).
    #[error("{0}")]
    Modulation(String),
    /// A sampler asked to run no step (it would return its noise as the image).
    #[error("sampling needs at least 1 step (got a schedule of {timesteps} time(s))")]
    NoSteps {
        /// Times in the schedule (at least 2 make a step).
        timesteps: usize,
    },
    /// The sampler's result holds NaN or infinite values: nothing may be decoded or written.
    #[error("the sampled latents hold NaN or infinite values after {steps} steps (diverged: check the weights, α and the guidance); nothing was decoded")]
    NonFiniteSample {
        /// Steps run.
        steps: usize,
    },
}
