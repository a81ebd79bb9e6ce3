//! The `premier` command line.

mod generate;
pub mod synth;

use clap::{Parser, Subcommand, ValueEnum};

pub use generate::{parse_user, run as run_generate, GenerateArgs, ModelFiles, Variant};

/// Personalized text-to-image generation with FLUX.1 and Premier.
#[derive(Debug, Parser)]
#[command(name = "premier", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate images for prompts and users with real FLUX.1 files.
    Generate(GenerateArgs),
    /// The synthetic preference world (`premier synth export`).
    Synth(synth::SynthArgs),
}

/// Which burn backend runs the models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// CPU (burn Flex).
    Flex,
    /// NVIDIA GPUs (needs the `cuda` feature).
    Cuda,
    /// Vulkan/Metal/DX12 GPUs (needs the `wgpu` feature).
    Wgpu,
}

/// Float type of weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Precision {
    F32,
    Bf16,
}

/// Parses the process arguments and runs the subcommand.
pub fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Generate(args) => generate::run(args),
        Command::Synth(args) => synth::run(args),
    }
}
