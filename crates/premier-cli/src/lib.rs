//! The `premier` command line.

#![warn(missing_docs)]

mod cold_start;
mod dataset;
mod devices;
mod encode;
mod eval;
mod generate;
mod models;
/// Progress on a terminal (bars) or off one (a line per phase and every few seconds).
pub mod progress;
/// `premier synth`: the synthetic preference world.
pub mod synth;
mod train;

use clap::{Parser, Subcommand, ValueEnum};

/// An image side given by `what` (a flag or config key): a positive multiple of 16 (8 for the
/// autoencoder, 2 for FLUX's packing) of at most [`premier::pipeline::MAX_SIDE`], checked before
/// anything is allocated for it.
pub(crate) fn check_side(what: &str, side: usize) -> anyhow::Result<()> {
    let max = premier::pipeline::MAX_SIDE;
    anyhow::ensure!(
        side > 0 && side % 16 == 0 && side <= max,
        "{what} {side}: the image side must be a positive multiple of 16, at most {max}"
    );
    Ok(())
}

/// The memory a command may use: `--max-memory` GiB if given, else what the device has
/// free (the host's available memory on the CPU, GPU 0's free memory on CUDA), else none known.
pub(crate) fn memory_limit(
    max_memory: Option<f64>,
    backend: BackendKind,
) -> Option<premier::train::memory::MemoryLimit> {
    use premier::train::memory::MemoryLimit;
    match (max_memory, backend) {
        (Some(gib), _) => Some(MemoryLimit::from_gib(gib)),
        (None, BackendKind::Flex) => MemoryLimit::host_available(),
        (None, BackendKind::Cuda) => MemoryLimit::nvidia_free(0),
        (None, _) => None,
    }
}

/// A clap value parser for `--max-memory`: a positive, finite number of GiB.
pub(crate) fn parse_gib(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("expected a positive number of GiB, not {text:?}")),
    }
}

/// A clap value parser for float flags: a finite number (NaN and ±inf would end in NaN weights
/// or black images much later).
pub(crate) fn finite<T>(text: &str) -> Result<T, String>
where
    T: std::str::FromStr + Into<f64> + Copy,
    T::Err: std::fmt::Display,
{
    let value: T = text.trim().parse().map_err(|e| format!("{e}"))?;
    if value.into().is_finite() {
        Ok(value)
    } else {
        Err(format!("{text} is not a finite number"))
    }
}

pub use cold_start::{ColdStartArgs, KindArg, OptimizerKind};
pub use dataset::DataArgs;
pub use encode::{EncodeArgs, EncodeConfig};
pub use generate::{run as run_generate, GenerateArgs};
pub use models::{ImageSampler, ModelArgs};
pub use train::TrainArgs;

/// Personalized text-to-image generation with FLUX.1 and Premier.
#[derive(Debug, Parser)]
#[command(name = "premier", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate images for prompts and users (FLUX.1 files or the synthetic world's base).
    Generate(GenerateArgs),
    /// Encode a dataset's images and captions once into a cache (VAE posterior, T5 + CLIP).
    Encode(EncodeArgs),
    /// Stage 1: train the adapters and the user table from an encoder cache.
    Train(TrainArgs),
    /// Stage 2: new users from a few images against a trained run.
    ColdStart(ColdStartArgs),
    /// The synthetic preference world (`premier synth export`).
    Synth(synth::SynthArgs),
    /// The paper's metrics on images on disk: CLIP-T2I, a CLIP preference proxy, the win rate
    /// over the base, LPIPS → report.md and report.json.
    Eval(eval::EvalArgs),
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
    /// 32-bit floats.
    F32,
    /// bfloat16 (weights stored in half the memory; computed as BFL does).
    Bf16,
}

/// Parses the process arguments and runs the subcommand.
pub fn main() -> anyhow::Result<()> {
    premier::allocator::retain_freed_memory();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    run(Cli::parse())
}

/// Runs a parsed command line (what `main` does after parsing; tests call it directly).
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Generate(args) => generate::run(args),
        Command::Encode(args) => encode::run(args),
        Command::Train(args) => train::run(args),
        Command::ColdStart(args) => cold_start::run(args),
        Command::Synth(args) => synth::run(args),
        Command::Eval(args) => eval::run(args),
    }
}
