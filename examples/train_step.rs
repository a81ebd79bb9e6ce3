//! Time (and peak host memory) of stage-1 training steps at a chosen size, with random weights
//! (speed does not depend on their values): the medium benchmark model on the CPU, or FLUX.1-dev
//! with the released adapters and table on a GPU.
//!
//! ```text
//! cargo run --release --example train_step -- --size medium
//! cargo run --release --features cuda --example train_step -- --size dev --backend cuda --resolution 512
//! ```
//!
//! Prints one line per step and the peak resident memory of the process (`VmHWM`); GPU memory is
//! best read alongside with `nvidia-smi --query-gpu=memory.used --format=csv -lms 200`.

use std::time::Instant;

use burn::backend::autodiff::checkpoint::strategy::{BalancedCheckpointing, NoCheckpointing};
use burn::backend::Autodiff;
use burn::prelude::*;
use burn::tensor::{Distribution, FloatDType};
use clap::{Parser, ValueEnum};
use premier::adapter::{AdapterConfig, PreferenceAdapter};
use premier::mmdit::{Flux, FluxAutodiffBackend, FluxConfig};
use premier::train::data_parallel::{DispersionScope, PeerGroup};
use premier::train::stage1::{Stage1Batch, Stage1Config, Stage1Model, Stage1Trainer};
use premier::users::{UserShape, UserTable};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Size {
    /// The shared benchmark's medium FLUX (36.5 M parameters) and scaled adapters, 64 text tokens.
    Medium,
    /// FLUX.1-dev, the released adapters and 1000-user table, 512 T5 tokens.
    Dev,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Backend {
    Flex,
    Cuda,
}

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, value_enum, default_value = "medium")]
    size: Size,
    #[arg(long, value_enum, default_value = "flex")]
    backend: Backend,
    /// Image side in pixels (latent tokens: (side / 16)²).
    #[arg(long, default_value_t = 512)]
    resolution: usize,
    #[arg(long, default_value_t = 2)]
    batch: usize,
    /// Timed steps, after one untimed warm-up step.
    #[arg(long, default_value_t = 3)]
    steps: usize,
    /// Threads each batch's rows are split over (`Stage1Trainer::with_workers`).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Data-parallel peers (`premier::train::data_parallel`), all on this one device: what the
    /// machinery costs against `--workers` (on one CPU no speed-up is expected).
    #[arg(long, default_value_t = 1)]
    peers: usize,
    /// Store the frozen backbone's weights in bf16.
    #[arg(long)]
    bf16_backbone: bool,
    #[arg(long)]
    gradient_checkpointing: bool,
}

fn run<B: FluxAutodiffBackend>(args: &Args, device: B::Device) {
    B::seed(&device, 0);
    let (flux_config, adapter_config, users, txt) = match args.size {
        Size::Medium => (
            FluxConfig::medium(),
            AdapterConfig::medium(),
            UserShape {
                users: 16,
                tokens: 30,
                dim: 128,
            },
            64,
        ),
        Size::Dev => (
            FluxConfig::dev(),
            AdapterConfig::released(),
            UserShape::released(),
            512,
        ),
    };
    let started = Instant::now();
    let mut flux = Flux::<B>::init(&flux_config, &device).expect("valid config");
    if args.bf16_backbone {
        flux = flux.with_weight_dtype(FloatDType::BF16);
    }
    let adapter = PreferenceAdapter::<B>::init(&adapter_config, &device).expect("valid config");
    let table = UserTable::<B>::init(users, &device);
    println!("built in {:.1?}", started.elapsed());

    let (n, side) = (args.batch, args.resolution / 16);
    let normal = Distribution::Normal(0.0, 1.0);
    let batch = Stage1Batch {
        x0: Tensor::random([n, side * side, flux_config.in_channels], normal, &device),
        latent_hw: (2 * side, 2 * side),
        text: Tensor::random([n, txt, flux_config.context_in_dim], normal, &device),
        pooled: Tensor::random([n, flux_config.vec_in_dim], normal, &device),
        users: (0..n).collect(),
        null_text: Some(Tensor::random(
            [1, txt, flux_config.context_in_dim],
            normal,
            &device,
        )),
    };
    let model = Stage1Model {
        adapter,
        users: table,
    };
    let mut trainer =
        Stage1Trainer::new(flux, model, Stage1Config::default()).with_workers(args.workers);
    if args.peers > 1 {
        let peers = vec![device.clone(); args.peers];
        let mut tick = Instant::now();
        let mut step = 0;
        PeerGroup::new(peers, DispersionScope::Global)
            .expect("peers on the CPU")
            .run(
                trainer,
                args.steps as u64 + 1,
                |_, _| Ok(batch.clone()),
                |report| {
                    let label = if step == 0 { "warm-up" } else { "step" };
                    println!(
                        "{label} {step}: {:.2?} (loss {:.4})",
                        tick.elapsed(),
                        report.loss
                    );
                    (tick, step) = (Instant::now(), step + 1);
                },
            )
            .expect("a valid batch");
        print_peak_memory();
        return;
    }
    for step in 0..=args.steps {
        let tick = Instant::now();
        let report = trainer.step(&batch).expect("a valid batch");
        // The loss is read back on the host, so the step has finished on the device.
        let took = tick.elapsed();
        let label = if step == 0 { "warm-up" } else { "step" };
        println!("{label} {step}: {took:.2?} (loss {:.4})", report.loss);
    }
    print_peak_memory();
}

fn print_peak_memory() {
    match premier::train::memory::host_peak_bytes().map(|b| b as f64 / 1048576.0) {
        Some(mib) => println!("peak host memory: {mib:.0} MiB"),
        None => println!("peak host memory: unknown (no /proc/self/status)"),
    }
}

fn main() {
    premier::allocator::retain_freed_memory();
    let args = Args::parse();
    println!("{args:?}");
    macro_rules! on {
        ($backend:ty) => {
            if args.gradient_checkpointing {
                run::<Autodiff<$backend, BalancedCheckpointing>>(&args, Default::default())
            } else {
                run::<Autodiff<$backend, NoCheckpointing>>(&args, Default::default())
            }
        };
    }
    match args.backend {
        Backend::Flex => on!(burn::backend::Flex),
        #[cfg(feature = "cuda")]
        Backend::Cuda => on!(burn::backend::Cuda<f32>),
        #[cfg(not(feature = "cuda"))]
        Backend::Cuda => eprintln!("rebuild with `--features cuda`"),
    }
}
