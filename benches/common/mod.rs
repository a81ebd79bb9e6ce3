//! Configurations shared by the benchmarks (docs/benchmarks.md).
#![allow(dead_code)]

use premier::adapter::AdapterConfig;
use premier::mmdit::FluxConfig;

/// The medium FLUX of the shared BENCHMARKS.md: 36,497,472 parameters.
pub fn medium_flux() -> FluxConfig {
    FluxConfig {
        in_channels: 64,
        out_channels: 64,
        vec_in_dim: 128,
        context_in_dim: 256,
        hidden_size: 512,
        mlp_ratio: 4.0,
        num_heads: 8,
        depth: 2,
        depth_single_blocks: 4,
        axes_dim: vec![8, 28, 28],
        theta: 10_000,
        qkv_bias: true,
        guidance_embed: true,
    }
}

/// The released adapter shrunk like the medium FLUX: width 512 (released 3072), 8 heads, 3 layers,
/// text 256 (4096), user tokens 30 × 128 (30 × 1024), 2 double blocks (19).
pub fn scaled_adapter() -> AdapterConfig {
    AdapterConfig {
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
