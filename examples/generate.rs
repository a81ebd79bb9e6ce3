//! Personalized generation with real FLUX.1 files; the same options as `premier generate`.
//!
//! ```text
//! cargo run --release --example generate -- --model-dir FLUX.1-dev \
//!     --adapter mod_adapter.safetensors --user-table user_embedding.safetensors \
//!     --user base --user 17 --prompt "a cabin in the woods" --steps 28 --out out
//! ```

use clap::Parser;
use premier::cli::GenerateArgs;

#[derive(Parser)]
struct Example {
    #[command(flatten)]
    args: GenerateArgs,
}

fn main() -> anyhow::Result<()> {
    premier::allocator::retain_freed_memory();
    premier::cli::run_generate(Example::parse().args)
}
