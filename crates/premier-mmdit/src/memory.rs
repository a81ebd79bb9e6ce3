//! How much device memory FLUX needs, from its configuration alone (before anything is loaded):
//! the parameter count, and an activation model for one pass. `premier train` and
//! `premier generate` print these, `--max-memory` checks them, and the GPU check sets them beside
//! measured peaks.
//!
//! The activation model counts, per token and block, the tensors a block keeps for its backward
//! pass (training) or holds at its widest point (inference), in units of the model width H with
//! r = `mlp_ratio`:
//! - kept for backward, (13 + 2r)·H: the modulated input and the qkv input (2H), q, k before their
//!   norms (2H), q, k, v after RoPE and the attention output (4H), the projection / linear2
//!   inputs (1H + (1 + r)H), the GELU input (rH), the two residual branches (2H), the norms'
//!   inputs (2H);
//! - alive at once in a forward, (8 + 2r)·H: linear1's output ((3 + r)H), q, k, v (3H), the
//!   attention output and the GELU output (1H + rH), the block input (1H).
//!
//! Backends without a fused attention kernel ([`crate::FluxOps::FUSED_ATTENTION`] false: CUDA,
//! wgpu, NdArray) also materialise the score matrix of the attention that runs: 2 × heads × T²
//! per sample in an inference forward (scores and probabilities, burn's attention), and in
//! training 3 score-sized tensors of one chunk of query rows (the probabilities recomputed, their
//! gradient and the score gradient), in f32 for half-precision activations; a chunk holds at
//! most [`crate::fused::composite::ATTENTION_CHUNK_SCORES`] elements per tensor. Under autodiff
//! no block keeps them: attention is one node that saves its output and the row log-sum-exp. On
//! the CPU, where the fused kernels run, the model is checked against measured peaks
//! (tests/memory.rs); on a GPU the check in tools/gpu-check reports both.

use crate::fused::composite::attention_chunk_rows;
use crate::FluxConfig;

/// Bytes as GiB with one decimal, or MiB below 1 GiB (for the printed estimates).
pub fn format_bytes(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}

/// The tokens and element size of one FLUX pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassShape {
    /// Samples in the pass.
    pub batch: usize,
    /// Image tokens per sample (latent pixels / 4).
    pub img_tokens: usize,
    /// Text tokens per sample (dev: 512).
    pub txt_tokens: usize,
    /// Bytes per activation element: the backbone's weight dtype (2 for bf16, 4 for f32).
    pub element_bytes: usize,
    /// Whether attention runs as a fused kernel that never holds the T × T scores.
    pub fused_attention: bool,
}

impl PassShape {
    /// Saturating: an absurd request gives an absurd estimate (refused by the caller), not an
    /// overflow.
    pub fn tokens(&self) -> usize {
        self.img_tokens.saturating_add(self.txt_tokens)
    }
}

impl FluxConfig {
    /// Parameters of the model this configuration builds (equal to `Flux::num_params`).
    pub fn param_count(&self) -> u64 {
        let h = self.hidden_size as u64;
        let mlp = self.mlp_hidden() as u64;
        let head = self.head_dim() as u64;
        let linear = |i: u64, o: u64, bias: bool| i * o + if bias { o } else { 0 };
        let embedder = |i: u64| linear(i, h, true) + linear(h, h, true);
        let qkv_bias = self.qkv_bias;
        let stream = linear(h, 6 * h, true)
            + linear(h, 3 * h, qkv_bias)
            + 2 * head
            + linear(h, h, true)
            + linear(h, mlp, true)
            + linear(mlp, h, true);
        let single = linear(h, 3 * h + mlp, true)
            + linear(h + mlp, h, true)
            + 2 * head
            + linear(h, 3 * h, true);
        let final_layer = linear(h, 2 * h, true) + linear(h, self.out_channels as u64, true);
        linear(self.in_channels as u64, h, true)
            + embedder(256)
            + embedder(self.vec_in_dim as u64)
            + if self.guidance_embed {
                embedder(256)
            } else {
                0
            }
            + linear(self.context_in_dim as u64, h, true)
            + self.depth as u64 * 2 * stream
            + self.depth_single_blocks as u64 * single
            + final_layer
    }

    /// Bytes of the weights stored with `element_bytes` per parameter.
    pub fn weight_bytes(&self, element_bytes: usize) -> u64 {
        self.param_count() * element_bytes as u64
    }

    fn blocks(&self) -> u64 {
        (self.depth + self.depth_single_blocks) as u64
    }

    /// Elements of `tensors` score-sized tensors of one attention call (0 with fused attention):
    /// B · H · T² each, or at most one chunk's where the composite runs in chunks of query rows.
    fn score_elements(&self, shape: &PassShape, tensors: f64, chunked: bool) -> u64 {
        if shape.fused_attention {
            return 0;
        }
        let tokens = shape.tokens();
        let rows = if chunked {
            attention_chunk_rows(shape.batch, self.num_heads, tokens)
        } else {
            tokens
        };
        // In f64, whose cast back saturates: sizes from user input may be absurd.
        (tensors * shape.batch as f64 * self.num_heads as f64 * rows as f64 * tokens as f64) as u64
    }

    /// One block's working set with `score_tensors` score-sized tensors alive, bytes.
    fn working_set_bytes(&self, shape: &PassShape, score_tensors: f64, chunked: bool) -> u64 {
        let h = self.hidden_size as f64;
        let per_token = (8.0 + 2.0 * self.mlp_ratio) * h;
        let token_elements = shape.batch as f64 * shape.tokens() as f64 * per_token;
        // The chunked composite computes half-precision scores in f32.
        let score_bytes = if chunked {
            shape.element_bytes.max(4)
        } else {
            shape.element_bytes
        };
        (token_elements as u64)
            .saturating_mul(shape.element_bytes as u64)
            .saturating_add(
                self.score_elements(shape, score_tensors, chunked)
                    .saturating_mul(score_bytes as u64),
            )
    }

    /// Activation bytes alive at the widest point of an inference forward (see the module docs).
    pub fn inference_activation_bytes(&self, shape: &PassShape) -> u64 {
        self.working_set_bytes(shape, 2.0, false)
    }

    /// Activation bytes a training step keeps for the backward pass (every block's saved
    /// tensors) plus one block's working set while its backward runs.
    pub fn training_activation_bytes(&self, shape: &PassShape) -> u64 {
        let h = self.hidden_size as f64;
        let per_token_block = (13.0 + 2.0 * self.mlp_ratio) * h;
        let kept =
            shape.batch as f64 * shape.tokens() as f64 * per_token_block * self.blocks() as f64;
        let kept = (kept as u64).saturating_mul(shape.element_bytes as u64);
        kept.saturating_add(self.working_set_bytes(shape, 3.0, true))
    }
}
