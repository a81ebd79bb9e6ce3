//! The prepared GPU check (tools/gpu-check/README.md): parity of every reference fixture on the
//! backend, then FLUX.1-dev-size stage-1 steps and a personalized generation with their peak
//! device memory, written as one markdown report.
//!
//! ```text
//! cargo build --release --features cuda --example gpu_check   # here, then carried to the GPU
//! target/release/examples/gpu_check --backend cuda --time-limit 420 --report gpu-check.md
//! cargo run --release --example gpu_check -- --dry-run --backend flex --report /tmp/dry.md
//! cargo run --release --example gpu_check -- --dry-run --backend ndarray --report /tmp/dry.md
//! ```
//!
//! Exit status: 0 when every phase ran, 1 on an error, 3 when the time limit stopped it.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use premier::gpu_check::workload::WorkloadSize;
use premier::gpu_check::{run_check, CheckOptions, EXIT_TIME_LIMIT};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Backend {
    Flex,
    /// burn's NdArray on the CPU: the composite ops CUDA runs, without a GPU.
    Ndarray,
    Cuda,
}

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, value_enum, default_value = "cuda")]
    backend: Backend,
    /// Toy sizes (the test suite's CPU dry run) instead of FLUX.1-dev.
    #[arg(long)]
    dry_run: bool,
    /// Seconds for the whole check; the report is written and the process exits when reached.
    #[arg(long, default_value_t = 420)]
    time_limit: u64,
    #[arg(long, default_value = "tests/fixtures")]
    fixtures: PathBuf,
    #[arg(long, default_value = "gpu-check.md")]
    report: PathBuf,
    /// Replace an existing report.
    #[arg(long)]
    overwrite: bool,
    /// Dense bf16 rate for the floors, TFLOP/s (an H200's measured matrix rate).
    #[arg(long, default_value_t = 790.0)]
    peak_tflops: f64,
}

fn main() {
    premier::allocator::retain_freed_memory();
    let args = Args::parse();
    let size = if args.dry_run {
        WorkloadSize::tiny()
    } else {
        WorkloadSize::dev()
    };
    let options = CheckOptions {
        fixtures: args.fixtures.clone(),
        report: args.report.clone(),
        min_phase: Duration::from_secs(if args.dry_run { 0 } else { 20 }),
        size,
        time_limit: Duration::from_secs(args.time_limit),
        hard_stop: true,
        device_memory: args.backend == Backend::Cuda,
        peak_tflops: args.peak_tflops,
        header: vec![
            (
                "backend".into(),
                format!("{:?}, f32 activations", args.backend),
            ),
            (
                "command".into(),
                std::env::args().collect::<Vec<_>>().join(" "),
            ),
            (
                "build".into(),
                format!(
                    "premier {} ({})",
                    env!("CARGO_PKG_VERSION"),
                    option_env!("PREMIER_GIT_REV").unwrap_or("git revision not recorded")
                ),
            ),
        ],
        overwrite: args.overwrite,
    };
    let result = match args.backend {
        Backend::Flex => run_check::<burn::backend::Flex>(&options, &Default::default()),
        Backend::Ndarray => run_check::<burn::backend::NdArray<f32>>(&options, &Default::default()),
        #[cfg(feature = "cuda")]
        Backend::Cuda => run_check::<burn::backend::Cuda<f32>>(&options, &Default::default()),
        #[cfg(not(feature = "cuda"))]
        Backend::Cuda => {
            eprintln!("gpu_check: built without CUDA; rebuild with `--features cuda`");
            std::process::exit(1);
        }
    };
    match result {
        Ok(report) => {
            println!("{}", report.to_markdown());
            if !report.skipped.is_empty() {
                std::process::exit(EXIT_TIME_LIMIT);
            }
        }
        Err(e) => {
            eprintln!("gpu_check: {e}");
            std::process::exit(1);
        }
    }
}
