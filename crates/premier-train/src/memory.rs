//! Device memory of a stage-1 run, estimated from the configurations before anything is loaded:
//! what `premier train` prints and `--max-memory` checks. The backbone's activations follow
//! `premier_mmdit::memory`; the trained side is the adapters and the user table with their
//! gradients and Prodigy's state. tests/memory.rs compares the estimate with measured peaks.

use std::fmt;

use premier_adapter::AdapterConfig;
use premier_mmdit::memory::format_bytes as gib;
use premier_mmdit::{FluxConfig, PassShape};
use premier_users::UserShape;

/// Bytes per trained parameter: the f32 value, its gradient, Prodigy's four state tensors
/// (p0, s, exp_avg, exp_avg_sq) and two flat temporaries of the update.
const TRAINED_BYTES_PER_PARAM: u64 = 4 * (1 + 1 + 4 + 2);

/// Device memory of one stage-1 step, in bytes, by what holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stage1Memory {
    /// The frozen backbone's weights.
    pub backbone: u64,
    /// Adapters and user table (f32) with their gradients and optimizer state.
    pub trained: u64,
    /// The backbone's activations kept for the backward pass and its working set.
    pub backbone_activations: u64,
    /// The adapters' activations: Δ of the batch's prompts and of the null prompt.
    pub adapter_activations: u64,
}

impl Stage1Memory {
    /// The estimate for `flux` stored with `backbone_bytes` per parameter (activations in the
    /// same type), the trained `adapter` and `users`, and one step's `shape`.
    pub fn estimate(
        flux: &FluxConfig,
        backbone_bytes: usize,
        adapter: &AdapterConfig,
        users: UserShape,
        shape: PassShape,
    ) -> Self {
        let trained_params =
            adapter.param_count() + (users.users * users.tokens * users.dim) as u64;
        // Per prompt token and perceiver layer, about 16 widths (attention, the 4× MLP, the
        // AdaLayerNorms); the output and its norm, 2 × (hidden · (1 + blocks)) per token.
        let mut per_token = adapter.layers as u64 * 16 * adapter.width as u64;
        let outputs = adapter.shared as u64 + adapter.distinct as u64 * adapter.blocks as u64;
        per_token += 2 * adapter.hidden as u64 * outputs;
        let passes = 2; // the batch's prompts and the null prompt of the dispersion
        Self {
            backbone: flux.weight_bytes(backbone_bytes),
            trained: trained_params * TRAINED_BYTES_PER_PARAM,
            backbone_activations: flux.training_activation_bytes(&shape),
            adapter_activations: passes * (shape.batch * shape.txt_tokens) as u64 * per_token * 4,
        }
    }

    pub fn total(&self) -> u64 {
        self.backbone + self.trained + self.backbone_activations + self.adapter_activations
    }

    /// `Err` naming the estimate when it exceeds `limit` bytes.
    pub fn check(&self, limit: Option<u64>) -> Result<(), MemoryError> {
        match limit {
            Some(limit) if self.total() > limit => Err(MemoryError {
                estimate: self.to_string(),
                limit,
            }),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for Stage1Memory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} = backbone weights {} + adapters and users with gradients and Prodigy state {} + \
             backbone activations {} + adapter activations {}",
            gib(self.total()),
            gib(self.backbone),
            gib(self.trained),
            gib(self.backbone_activations),
            gib(self.adapter_activations)
        )
    }
}

/// An estimate over the memory a run was given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("estimated device memory {estimate} exceeds --max-memory {}; lower the batch size or the resolution, store the backbone in bf16, or turn on gradient checkpointing", gib(*.limit))]
pub struct MemoryError {
    pub estimate: String,
    pub limit: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev_shape(batch: usize, fused_attention: bool) -> PassShape {
        PassShape {
            batch,
            img_tokens: 1024,
            txt_tokens: 512,
            element_bytes: 2,
            fused_attention,
        }
    }

    #[test]
    fn released_stage1_at_512_is_dominated_by_weights_and_activations() {
        let m = Stage1Memory::estimate(
            &FluxConfig::dev(),
            2,
            &AdapterConfig::released(),
            UserShape::released(),
            dev_shape(1, false),
        );
        // 11.9 B bf16 weights: 22.2 GiB.
        assert_eq!(m.backbone, 2 * 11_901_408_320);
        // 907 M adapter + 30.7 M table parameters at 32 bytes each.
        assert_eq!(m.trained, (907_229_184 + 30_720_000) * 32);
        assert!(m.total() > 24 << 30, "{m}");
        let two = Stage1Memory::estimate(
            &FluxConfig::dev(),
            2,
            &AdapterConfig::released(),
            UserShape::released(),
            dev_shape(2, false),
        );
        assert_eq!(two.backbone_activations, 2 * m.backbone_activations);
        assert!(m.check(Some(two.total())).is_ok());
        let err = two.check(Some(m.total())).unwrap_err();
        assert!(err.to_string().contains("exceeds --max-memory"), "{err}");
        assert!(
            err.to_string().contains("backbone weights 22.2 GiB"),
            "{err}"
        );
    }
}
