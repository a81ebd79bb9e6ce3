//! `premier train`: stage 1 (adapters + user table through the frozen backbone) from an encoder
//! cache, configured by a TOML file with command-line overrides.

use std::path::{Path, PathBuf};

use anyhow::Context;
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use clap::Args;

use crate::dataset::DataArgs;
use crate::models::{ImageSampler, ModelArgs};
use crate::progress::Progress;
use crate::{BackendKind, Precision};
use premier::losses::DispersionVariant;
use premier::mmdit::{Flux, FluxAutodiffBackend, PassShape};
use premier::pipeline::image_io::{grid, save_png};
use premier::text::TextConditioning;
use premier::train::batches::CachedUsers;
use premier::train::cache::EncodedCache;
use premier::train::data_parallel::{DispersionScope, NodeGroup};
use premier::train::memory::TrainingMemory;
use premier::train::metrics::MetricRecord;
use premier::train::run::{train_stage1_on, RunObserver, Start, Stepping, TrainConfig};
use premier::train::stage1::Stage1Model;
use premier::users::UserShape;

/// `premier train`: stage 1 (the adapters and the user table) from an encoder cache.
#[derive(Debug, Clone, Args)]
pub struct TrainArgs {
    /// Where the FLUX.1 files (or the synthetic base) are.
    #[command(flatten)]
    pub model: ModelArgs,
    /// The dataset and its encoder cache.
    #[command(flatten)]
    pub data: DataArgs,
    /// The run folder: checkpoints, metrics, validation images, final weights.
    #[arg(long)]
    pub out: PathBuf,
    /// A TOML file of [`TrainConfig`] fields; the options below override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// `latest` (the newest checkpoint in `<out>/checkpoints`; an error if there is none) or a
    /// checkpoint folder.
    #[arg(long, conflicts_with = "resume_or_start")]
    pub resume: Option<String>,
    /// Resume from the newest checkpoint if there is one, else start fresh.
    #[arg(long)]
    pub resume_or_start: bool,
    /// Start fresh even if `--out` holds an earlier run: its checkpoints, weights, metrics and
    /// validation images are deleted first.
    #[arg(long, conflicts_with_all = ["resume", "resume_or_start"])]
    pub overwrite: bool,
    /// Optimizer steps of the whole run (a resumed run stops at the same step).
    #[arg(long)]
    pub steps: Option<u64>,
    /// Samples per micro-batch, of distinct users while there are enough users.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Micro-batches per optimizer step.
    #[arg(long)]
    pub grad_accum: Option<usize>,
    /// Write a checkpoint every this many steps (and at the end); 0: only at the end.
    #[arg(long)]
    pub checkpoint_every: Option<u64>,
    /// Checkpoints kept (the newest; at least 1).
    #[arg(long)]
    pub keep_checkpoints: Option<usize>,
    /// Validation images every this many steps; 0: never.
    #[arg(long)]
    pub validate_every: Option<u64>,
    /// Seed of the initialisation, batches, noise and times.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Held-out images per user, left out of training (a seeded split per user).
    #[arg(long, default_value_t = 0)]
    pub held_out: usize,
    /// Ablation: no Δ_shared.
    #[arg(long)]
    pub no_shared: bool,
    /// Ablation: no Δ_distinct.
    #[arg(long)]
    pub no_distinct: bool,
    /// Ablation: no dispersion loss.
    #[arg(long, conflicts_with = "dispersion")]
    pub no_dispersion: bool,
    /// The dispersion loss: Hinge (default; bounded, margin relative to RMS(y)), Stable (the
    /// paper's L2; runs away), Released (the released run's squared L2; saturates) or
    /// Dispersive (Wang & He).
    #[arg(long, value_parser = parse_dispersion)]
    pub dispersion: Option<DispersionVariant>,
    /// The hinge's margin, in units of RMS(y) per feature.
    #[arg(long)]
    pub dispersion_margin: Option<f64>,
    /// Side of FLUX.1 validation images.
    #[arg(long, default_value_t = 512)]
    pub resolution: usize,
    /// Which backend trains.
    #[arg(long, value_enum, default_value = "flex")]
    pub backend: BackendKind,
    /// Recompute activations in the backward pass instead of keeping them all (burn's balanced
    /// checkpointing): less memory, more compute; the same numbers.
    #[arg(long)]
    pub gradient_checkpointing: bool,
    /// Float type of the frozen backbone's weights (default: bf16 on CUDA, f32 elsewhere). The
    /// adapters, user embeddings and optimizer state stay f32.
    #[arg(long, value_enum)]
    pub backbone_dtype: Option<Precision>,
    /// Refuse to start when the estimated device memory of a step (printed at the start)
    /// exceeds this many GiB.
    #[arg(long, value_parser = crate::parse_gib)]
    pub max_memory: Option<f64>,
    /// Train on several devices at once, one data-parallel peer each: `cpu:N` (N peers on the
    /// CPU, `--backend flex`) or `cuda:0,cuda:1,…` (`--backend cuda`). The global batch
    /// (`--batch-size`, at least one row per device) is split over them; every step equals one
    /// device's step on the same batch, so checkpoints resume on any number of devices.
    #[arg(long, value_parser = crate::devices::parse_devices)]
    pub devices: Option<crate::devices::DeviceList>,
    /// With `--devices`: which rows each device's dispersion loss contrasts: `global` (the whole
    /// batch, what one device does) or `local` (its own rows, what the released 8-GPU run did).
    #[arg(long, value_enum, default_value = "global", requires = "devices")]
    pub dispersion_scope: ScopeArg,
    /// Train over several nodes (machines): how many. Every node runs this command with the same
    /// data, cache, configuration and number of `--devices`, its own `--node-rank`, and the same
    /// `--coordinator`. Node 0 writes the run's files; the others write nothing (to resume, they
    /// read node 0's checkpoints from their `--out`: a shared file system, or a copy).
    #[arg(long, requires_all = ["devices", "node_rank", "coordinator"])]
    pub nodes: Option<u32>,
    /// With `--nodes`: this node's rank, 0 to nodes − 1.
    #[arg(long, requires = "nodes")]
    pub node_rank: Option<u32>,
    /// With `--nodes`: HOST:PORT of node 0, which listens on PORT (every interface) for the
    /// others to connect.
    #[arg(long, requires = "nodes")]
    pub coordinator: Option<String>,
}

/// `--dispersion-scope`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ScopeArg {
    /// Every device's dispersion sees the whole global batch.
    Global,
    /// Each device's dispersion sees its own rows.
    Local,
}

impl TrainArgs {
    /// Defaults for the model kind, then the TOML file, then the command line.
    pub fn resolve_config(&self) -> anyhow::Result<TrainConfig> {
        let defaults = if self.model.is_synth() {
            TrainConfig::synth()
        } else {
            TrainConfig::default()
        };
        let mut c = crate::dataset::config_file(self.config.as_deref(), defaults)?;
        let set = |slot: &mut u64, v: Option<u64>| {
            if let Some(v) = v {
                *slot = v
            }
        };
        set(&mut c.steps, self.steps);
        set(&mut c.checkpoint_every, self.checkpoint_every);
        set(&mut c.validate_every, self.validate_every);
        set(&mut c.stage1.seed, self.seed);
        c.batch_size = self.batch_size.unwrap_or(c.batch_size);
        c.grad_accum = self.grad_accum.unwrap_or(c.grad_accum);
        c.keep_checkpoints = self.keep_checkpoints.unwrap_or(c.keep_checkpoints);
        c.shared &= !self.no_shared;
        c.distinct &= !self.no_distinct;
        if self.no_dispersion {
            c.stage1.dispersion = None;
        }
        if let Some(variant) = self.dispersion {
            c.stage1.dispersion = Some(variant);
        }
        if let Some(margin) = self.dispersion_margin {
            anyhow::ensure!(
                margin.is_finite() && margin > 0.0,
                "--dispersion-margin must be a positive number, not {margin}"
            );
            c.stage1.dispersion_margin = margin;
        }
        Ok(c)
    }

    fn start(&self) -> Start {
        match self.resume.as_deref() {
            None if self.resume_or_start => Start::LatestOrFresh,
            None if self.overwrite => Start::Replace,
            None => Start::Fresh,
            Some("latest") => Start::Latest,
            Some(path) => Start::From(PathBuf::from(path)),
        }
    }
}

/// Runs `premier train`.
pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    use burn::backend::autodiff::checkpoint::strategy::{BalancedCheckpointing, NoCheckpointing};
    use burn::backend::Autodiff;
    macro_rules! on {
        ($backend:ty) => {
            if args.gradient_checkpointing {
                train::<Autodiff<$backend, BalancedCheckpointing>>(args, Default::default())
            } else {
                train::<Autodiff<$backend, NoCheckpointing>>(args, Default::default())
            }
        };
    }
    match args.backend {
        BackendKind::Flex => on!(burn::backend::Flex),
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => on!(burn::backend::Cuda<f32>),
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => on!(burn::backend::Wgpu),
        #[allow(unreachable_patterns)]
        other => anyhow::bail!(
            "backend {other:?} is not in this build: rebuild with `--features {}`",
            format!("{other:?}").to_lowercase()
        ),
    }
}

/// Progress bar, and validation grids: a row for the base model and one per validation user, a
/// column per prompt, the same seeds every time.
struct CliObserver<B: AutodiffBackend> {
    bar: Progress,
    sampler: Option<ImageSampler<B::InnerBackend>>,
    prompts: Option<TextConditioning<B::InnerBackend>>,
    users: Vec<usize>,
    dir: PathBuf,
}

impl<B: FluxAutodiffBackend> RunObserver<B> for CliObserver<B> {
    fn warn(&mut self, message: &str) {
        self.bar.suspend(|| eprintln!("warning: {message}"));
    }

    fn started(&mut self, from: u64, to: u64) {
        self.bar.set_length(to);
        self.bar.start_at(from);
    }

    fn step(&mut self, r: &MetricRecord) {
        self.bar.set_position(r.report.step);
        self.bar.set_message(format!(
            "loss {:.4} (flow {:.4}) d {:.2e}",
            r.report.loss, r.report.flow, r.report.d
        ));
    }

    fn validate(
        &mut self,
        flux: &Flux<B>,
        model: &Stage1Model<B>,
        step: u64,
    ) -> Result<(), String> {
        let (Some(sampler), Some(text)) = (&self.sampler, &self.prompts) else {
            return Ok(());
        };
        let (flux, model) = (flux.valid(), model.valid());
        let n = text.tokens.dims()[0];
        let seeds: Vec<u64> = (0..n as u64).collect();
        let mut rows = vec![sampler
            .sample(&flux, text, None, &seeds)
            .map_err(|e| e.to_string())?];
        for &u in &self.users {
            let user = model.users.lookup(&vec![u; n]).map_err(|e| e.to_string())?;
            let delta = model.adapter.forward(text.tokens.clone(), user);
            rows.push(
                sampler
                    .sample(&flux, text, Some(&delta), &seeds)
                    .map_err(|e| e.to_string())?,
            );
        }
        // Made at the first grid: a run refused before it starts leaves no folder behind.
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| format!("creating {}: {e}", self.dir.display()))?;
        let path = self.dir.join(format!("step-{step:08}.png"));
        save_png(&grid(&rows, 2), &path).map_err(|e| e.to_string())?;
        self.bar
            .suspend(|| eprintln!("validation images: {}", path.display()));
        Ok(())
    }

    fn checkpoint(&mut self, path: &Path) {
        self.bar
            .suspend(|| eprintln!("checkpoint: {}", path.display()));
    }
}

fn train<B: FluxAutodiffBackend>(args: TrainArgs, device: B::Device) -> anyhow::Result<()> {
    let config = args.resolve_config()?;
    // The peers' devices (the first holds the run between stretches of steps).
    let (stepping, device) = match &args.devices {
        None => (Stepping::OneDevice, device),
        Some(list) => {
            let devices = list.devices::<B>(args.backend, &device)?;
            let first = devices[0].clone();
            let scope = match args.dispersion_scope {
                ScopeArg::Global => DispersionScope::Global,
                ScopeArg::Local => DispersionScope::Local,
            };
            let nodes = match (args.nodes, args.node_rank, &args.coordinator) {
                (Some(nodes), Some(rank), Some(coordinator)) => {
                    let group = NodeGroup {
                        nodes,
                        rank,
                        coordinator: coordinator.clone(),
                    };
                    // Before the data is read and the backbone loaded.
                    group.check()?;
                    Some(group)
                }
                _ => None,
            };
            (
                Stepping::Peers {
                    devices,
                    scope,
                    nodes,
                },
                first,
            )
        }
    };
    // Only node 0 of several writes the run's files (and validates).
    let leads = stepping.leads();
    // Before the dataset is hashed and the backbone loaded: a bad number fails at once.
    config
        .validate()
        .map_err(|e| anyhow::anyhow!("config: {e}"))?;
    if !args.model.is_synth() && config.validate_every > 0 {
        crate::check_side("--resolution", args.resolution)?;
    }
    let dataset = args.data.read()?;
    let skipped = dataset.skipped.len();
    let (dataset, _held_out) = dataset.split(args.held_out, config.stage1.seed);
    let cache = EncodedCache::open(&args.data.cache, false)?;
    let mut data = CachedUsers::new(&dataset, cache)?;
    let dtype = crate::models::backbone_dtype(args.backbone_dtype, args.backend);
    if let Some(dims) = data.sample_dims()? {
        let (img_tokens, txt_tokens) = (dims.img_tokens, dims.txt_tokens);
        let flux = args.model.backbone_config()?;
        let estimate = |batch: usize, bf16: bool| {
            let bytes = if bf16 { 2 } else { 4 };
            TrainingMemory::estimate(
                &flux,
                bytes,
                &config.adapter(flux.context_in_dim, flux.hidden_size, flux.depth),
                UserShape {
                    users: data.ids.len(),
                    tokens: config.user_tokens,
                    dim: config.user_dim,
                },
                PassShape {
                    batch,
                    img_tokens,
                    txt_tokens,
                    element_bytes: bytes,
                    fused_attention: B::FUSED_ATTENTION,
                },
            )
        };
        let bf16 = dtype.is_some();
        let this = estimate(config.batch_size, bf16);
        println!("estimated device memory of a step: {this}");
        if let Some(limit) = crate::memory_limit(args.max_memory, args.backend) {
            let mut alternatives = Vec::new();
            if config.batch_size > 1 {
                alternatives.push(("--batch-size 1".to_string(), estimate(1, bf16)));
            }
            if !bf16 {
                let b = config.batch_size;
                alternatives.push(("--backbone-dtype bf16".to_string(), estimate(b, true)));
                if b > 1 {
                    let flags = "--batch-size 1 --backbone-dtype bf16".to_string();
                    alternatives.push((flags, estimate(1, true)));
                }
            }
            this.check(limit, &alternatives)?;
        }
    }
    let flux = args.model.load_flux::<B>(&device, dtype)?;

    let observer_dir = args.out.join("validation");
    // Only the node that writes the run's files validates.
    let (sampler, prompts, users) = if config.validate_every > 0 && leads {
        let prompts: Vec<String> = if config.validation_prompts.is_empty() {
            let mut seen = Vec::new();
            for c in data.captions.iter().flatten() {
                if !seen.contains(c) && seen.len() < 4 {
                    seen.push(c.clone());
                }
            }
            seen
        } else {
            config.validation_prompts.clone()
        };
        let mut parts = Vec::new();
        for p in &prompts {
            let (tokens, pooled) = data.text::<B::InnerBackend>(p, &device).with_context(|| {
                format!("validation prompt {p:?} (encode it with `premier encode --prompt`)")
            })?;
            parts.push(TextConditioning { tokens, pooled });
        }
        let sampler = ImageSampler::for_model(
            &args.model,
            args.resolution,
            None,
            config.validation_guidance,
            &device,
        )?;
        let users = (0..config.validation_users.min(data.ids.len())).collect();
        (Some(sampler), Some(TextConditioning::cat(parts)), users)
    } else {
        (None, None, Vec::new())
    };
    let mut observer = CliObserver::<B> {
        bar: Progress::new(config.steps, "steps"),
        sampler,
        prompts,
        users,
        dir: observer_dir,
    };
    if config.stage1.dispersion == Some(DispersionVariant::Released) {
        eprintln!("note: the released squared-L2 dispersion saturates (SPEC §4.3)");
    }
    let (_, summary) = train_stage1_on(
        stepping,
        flux,
        &mut data,
        &config,
        &args.out,
        args.start(),
        &mut observer,
        &device,
    )?;
    observer.bar.finish_and_clear();
    if !leads {
        println!(
            "node {}: {} steps taken; node 0 writes the run's files (its exit status says \
             whether it did)",
            args.node_rank.unwrap_or(0),
            summary.steps - summary.resumed_from
        );
        return Ok(());
    }
    if summary.resumed_from > 0 {
        println!("resumed from step {}", summary.resumed_from);
    }
    if let Some(last) = summary.last {
        println!(
            "step {}: loss {:.4}, flow {:.4}, Prodigy d {:.3e} ({:.1} s)",
            last.report.step, last.report.loss, last.report.flow, last.report.d, summary.seconds
        );
    }
    println!(
        "wrote {}, {}, metrics.jsonl and loss.png in {}",
        summary.adapter.display(),
        summary.table.display(),
        args.out.display()
    );
    if skipped > 0 {
        println!("skipped {skipped} bad dataset entries (--skip-bad; listed at the start)");
    }
    Ok(())
}

/// A dispersion variant by its config-file name.
fn parse_dispersion(name: &str) -> Result<DispersionVariant, String> {
    name.parse()
        .map_err(|e: premier::losses::UnknownDispersion| e.to_string())
}
