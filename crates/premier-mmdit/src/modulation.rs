//! Premier's per-token text modulation: the hook through which preferences steer FLUX.

use burn::prelude::*;

/// Per-token directions Δ added to the modulation vector `y` of the text tokens.
///
/// In double block `j`, the text stream's modulation becomes
/// `txt_mod.lin(SiLU(y + shared + distinct[:, :, j]))`, one set of the six shift/scale/gate
/// values per text token. Image tokens, single blocks and the final layer keep the plain `y`
/// (Premier SPEC §2.2, §3.3). Either part may be absent; with both absent (or both zero) the
/// forward equals plain FLUX.
///
/// Δ does not depend on the timestep: compute it once per (prompt, user) and reuse it for every
/// sampling step.
#[derive(Debug, Clone)]
pub struct TextModulation<B: Backend> {
    /// Block-shared Δ: `[batch, txt_tokens, hidden]`.
    pub shared: Option<Tensor<B, 3>>,
    /// Block-distinct Δ, one per double block: `[batch, txt_tokens, depth, hidden]`.
    pub distinct: Option<Tensor<B, 4>>,
}

impl<B: Backend> TextModulation<B> {
    /// Both parts given; use the public fields for one part only.
    ///
    /// shared: `[batch, txt_tokens, hidden]`, distinct: `[batch, txt_tokens, depth, hidden]`.
    pub fn new(shared: Tensor<B, 3>, distinct: Tensor<B, 4>) -> Self {
        Self {
            shared: Some(shared),
            distinct: Some(distinct),
        }
    }

    /// Multiplies every Δ by `alpha` (0 gives plain FLUX, 1 the trained strength).
    pub fn scaled(self, alpha: f64) -> Self {
        Self {
            shared: self.shared.map(|d| d * alpha),
            distinct: self.distinct.map(|d| d * alpha),
        }
    }

    /// The Δ for the text tokens of double block `block`: `[batch, txt_tokens, hidden]`, or `None`
    /// when this modulation leaves the block unchanged.
    pub fn double_block_delta(&self, block: usize) -> Option<Tensor<B, 3>> {
        let distinct = self.distinct.as_ref().map(|d| {
            let [batch, tokens, _, hidden] = d.dims();
            d.clone()
                .narrow(2, block, 1)
                .reshape([batch, tokens, hidden])
        });
        match (self.shared.clone(), distinct) {
            (Some(s), Some(d)) => Some(s + d),
            (Some(s), None) => Some(s),
            (None, Some(d)) => Some(d),
            (None, None) => None,
        }
    }

    /// Checks the shapes against the model and the text input.
    pub(crate) fn check(
        &self,
        batch: usize,
        txt_tokens: usize,
        depth: usize,
        hidden: usize,
    ) -> Result<(), String> {
        if let Some(s) = &self.shared {
            let found = s.dims();
            if found != [batch, txt_tokens, hidden] {
                return Err(format!(
                    "TextModulation.shared has shape {found:?}, expected [batch {batch}, txt_tokens {txt_tokens}, hidden {hidden}]"
                ));
            }
        }
        if let Some(d) = &self.distinct {
            let found = d.dims();
            if found != [batch, txt_tokens, depth, hidden] {
                return Err(format!(
                    "TextModulation.distinct has shape {found:?}, expected [batch {batch}, txt_tokens {txt_tokens}, depth {depth}, hidden {hidden}]"
                ));
            }
        }
        Ok(())
    }
}
