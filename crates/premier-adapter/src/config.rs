//! Adapter sizes.

use serde::{Deserialize, Serialize};

/// Sizes of the two preference adapters, and which of them exist.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterConfig {
    /// Width of the prompt tokens (T5-XXL: 4096).
    pub text_dim: usize,
    /// Width of a user embedding token (released: 1024).
    pub user_dim: usize,
    /// Width inside the resamplers (released: 3072).
    pub width: usize,
    /// Attention heads (the official code hard-codes 8).
    pub heads: usize,
    /// Perceiver blocks per resampler (released: 3).
    pub layers: usize,
    /// FLUX model width, the last dim of Δ (FLUX.1: 3072).
    pub hidden: usize,
    /// Double blocks of the backbone, one Δ_distinct each (FLUX.1: 19).
    pub blocks: usize,
    /// Build the block-shared net (`net`); false is the paper's "w/o Δ_shared".
    #[serde(default = "yes")]
    pub shared: bool,
    /// Build the block-distinct net (`net2`); false is the paper's "w/o Δ_distinct".
    #[serde(default = "yes")]
    pub distinct: bool,
}

fn yes() -> bool {
    true
}

impl AdapterConfig {
    /// The released Premier adapters (`XVerse_config_demo.yaml`): width 3072, 8 heads, 3 layers,
    /// T5 tokens of 4096, user tokens of 1024, FLUX.1 width 3072 and 19 double blocks.
    pub fn released() -> Self {
        Self {
            text_dim: 4096,
            user_dim: 1024,
            width: 3072,
            heads: 8,
            layers: 3,
            hidden: 3072,
            blocks: 19,
            shared: true,
            distinct: true,
        }
    }

    /// The released adapters shrunk like `FluxConfig::medium` (the shared benchmarks): width 512
    /// (released 3072), 8 heads, 3 layers, text 256 (4096), user tokens of 128 (1024), 2 double
    /// blocks (19).
    pub fn medium() -> Self {
        Self {
            text_dim: 256,
            user_dim: 128,
            width: 512,
            heads: 8,
            layers: 3,
            hidden: 512,
            blocks: 2,
            shared: true,
            distinct: true,
        }
    }

    /// Small adapters for tests and CPU experiments: width = `hidden`, 2 heads, 2 layers.
    pub fn small(text_dim: usize, user_dim: usize, hidden: usize, blocks: usize) -> Self {
        Self {
            text_dim,
            user_dim,
            width: hidden,
            heads: 2,
            layers: 2,
            hidden,
            blocks,
            shared: true,
            distinct: true,
        }
    }

    /// Parameters of the adapters this configuration builds (equal to
    /// `PreferenceAdapter::num_params`): released: 907 M.
    pub fn param_count(&self) -> u64 {
        let linear = |i: usize, o: usize| (i * o + o) as u64;
        let w = self.width;
        // Attention in/out, the 4× MLP, three AdaLayerNorms fed by the 64-wide time embedding.
        let block = linear(w, 3 * w)
            + linear(w, w)
            + linear(w, 4 * w)
            + linear(4 * w, w)
            + 3 * linear(crate::resampler::TIME_DIM, 2 * w);
        let net = |out: usize| {
            linear(self.text_dim, w)
                + linear(self.user_dim, w)
                + self.layers as u64 * block
                + linear(w, out)
                + 2 * out as u64
        };
        let shared = if self.shared { net(self.hidden) } else { 0 };
        let distinct = if self.distinct {
            net(self.hidden * self.blocks)
        } else {
            0
        };
        shared + distinct
    }

    /// Checks that heads divide the width and that at least one net exists.
    pub fn validate(&self) -> Result<(), String> {
        if self.heads == 0 || self.width % self.heads != 0 {
            return Err(format!(
                "width {} is not divisible by heads {}",
                self.width, self.heads
            ));
        }
        if !self.shared && !self.distinct {
            return Err("both adapters are switched off".into());
        }
        Ok(())
    }
}
