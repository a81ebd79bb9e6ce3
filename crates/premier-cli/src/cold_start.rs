//! `premier cold-start`: new users from a few images each, against the frozen adapters and table
//! of a stage-1 run (linear combination, or a direct embedding for comparison).

use std::path::PathBuf;

use anyhow::bail;
use clap::{Args, ValueEnum};
use premier::mmdit::{FluxAutodiffBackend, PassShape};

use crate::dataset::DataArgs;
use crate::models::ModelArgs;
use crate::progress::Progress;
use crate::{BackendKind, Precision};
use premier::adapter::PreferenceAdapter;
use premier::train::adamw::AdamWConfig;
use premier::train::batches::CachedUsers;
use premier::train::cache::EncodedCache;
use premier::train::memory::TrainingMemory;
use premier::train::prodigy::ProdigyConfig;
use premier::train::run::{cold_start, ColdStartConfig, ColdStartKind, Start, TrainedModel};
use premier::train::stage2::ColdStartOptimizer;
use premier::users::UserTable;

/// How a new user is represented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KindArg {
    /// Coefficients over the trained users (the paper's cold start).
    Linear,
    /// An embedding of its own.
    Direct,
}

/// The optimizer of a cold start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OptimizerKind {
    /// AdamW lr 0.01, wd 1e-4 (the released linear cold start).
    Adamw,
    /// Prodigy lr 1 (the released direct training; the paper for both).
    Prodigy,
}

/// `premier cold-start`: new users from a few images each against a trained run.
#[derive(Debug, Clone, Args)]
pub struct ColdStartArgs {
    /// Where the FLUX.1 files (or the synthetic base) are.
    #[command(flatten)]
    pub model: ModelArgs,
    /// The new users' images and their encoder cache.
    #[command(flatten)]
    pub data: DataArgs,
    /// The stage-1 run folder (`premier train --out`): `mod_adapter.safetensors`,
    /// `user_embedding.safetensors`, `premier.json`.
    #[arg(long)]
    pub run: PathBuf,
    /// A new user's id in the dataset; repeat for several (default: every user of the dataset).
    #[arg(long = "user")]
    pub users: Vec<String>,
    /// Use only the first N images of each user.
    #[arg(long)]
    pub images: Option<usize>,
    /// Where the user files go (default: `<run>/users`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// A TOML file of [`ColdStartConfig`] fields; the options below override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// How each new user is represented (default: linear, the paper's cold start).
    #[arg(long, value_enum)]
    pub kind: Option<KindArg>,
    /// The optimizer (default: AdamW, as released for the linear cold start).
    #[arg(long, value_enum)]
    pub optimizer: Option<OptimizerKind>,
    /// Optimizer steps per user (a resumed cold start stops at the same step).
    #[arg(long)]
    pub steps: Option<u64>,
    /// Images per step (at most the user's images; the released config: 1).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Seed of the initialisation, batches, noise and times (mixed with each user's id).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Write a checkpoint every this many steps (and at the end); 0: none.
    #[arg(long)]
    pub checkpoint_every: Option<u64>,
    /// `latest`: continue each user from its newest checkpoint (under
    /// `<out>/checkpoints/user_combination_<id>/` or `user_embedding_<id>/`), if it has one;
    /// an error when no user has one.
    #[arg(long, conflicts_with = "resume_or_start")]
    pub resume: Option<String>,
    /// As `--resume latest`, but a fresh start when there is no checkpoint at all.
    #[arg(long)]
    pub resume_or_start: bool,
    /// Which backend runs the models.
    #[arg(long, value_enum, default_value = "flex")]
    pub backend: BackendKind,
    /// Float type of the frozen backbone's weights (default: bf16 on CUDA, f32 elsewhere). The
    /// adapters, user embeddings and optimizer state stay f32.
    #[arg(long, value_enum)]
    pub backbone_dtype: Option<Precision>,
    /// Refuse to start when the estimated device memory of a step (printed first) exceeds this
    /// many GiB (on the CPU, by default, the memory the host has available).
    #[arg(long, value_parser = crate::parse_gib)]
    pub max_memory: Option<f64>,
    /// Fit several users at once, one device each: `cpu:N` (N at a time on the CPU, `--backend
    /// flex`) or `cuda:0,cuda:1,…` (`--backend cuda`). Users go to devices in turn; each user's
    /// result is the one it gets alone.
    #[arg(long, value_parser = crate::devices::parse_devices)]
    pub devices: Option<crate::devices::DeviceList>,
}

impl ColdStartArgs {
    /// Defaults (the released linear cold start; the quickstart's 100 steps, batch 4 on the
    /// synthetic world), then the TOML file, then the command line.
    pub fn resolve_config(&self) -> anyhow::Result<ColdStartConfig> {
        let mut defaults = ColdStartConfig::default();
        if self.model.is_synth() {
            defaults.steps = 100;
            defaults.batch_size = 4;
        }
        let mut c = crate::dataset::config_file(self.config.as_deref(), defaults)?;
        c.kind = match self.kind {
            Some(KindArg::Linear) => ColdStartKind::Linear,
            Some(KindArg::Direct) => ColdStartKind::Direct,
            None => c.kind,
        };
        c.steps = self.steps.unwrap_or(c.steps);
        c.batch_size = self.batch_size.unwrap_or(c.batch_size);
        c.stage2.seed = self.seed.unwrap_or(c.stage2.seed);
        c.checkpoint_every = self.checkpoint_every.unwrap_or(c.checkpoint_every);
        match self.optimizer {
            Some(OptimizerKind::Adamw) => {
                c.stage2.optimizer = ColdStartOptimizer::AdamW(AdamWConfig::premier_cold_start())
            }
            Some(OptimizerKind::Prodigy) => {
                c.stage2.optimizer = ColdStartOptimizer::Prodigy(ProdigyConfig::premier())
            }
            None => {}
        }
        Ok(c)
    }
}

/// Runs `premier cold-start`.
pub fn run(args: ColdStartArgs) -> anyhow::Result<()> {
    type Ad<B> = burn::backend::Autodiff<B>;
    match args.backend {
        BackendKind::Flex => cold::<Ad<burn::backend::Flex>>(args, Default::default()),
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => cold::<Ad<burn::backend::Cuda<f32>>>(args, Default::default()),
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => cold::<Ad<burn::backend::Wgpu>>(args, Default::default()),
        #[allow(unreachable_patterns)]
        other => bail!(
            "backend {other:?} is not in this build: rebuild with `--features {}`",
            format!("{other:?}").to_lowercase()
        ),
    }
}

fn cold<B: FluxAutodiffBackend>(args: ColdStartArgs, device: B::Device) -> anyhow::Result<()> {
    let config = args.resolve_config()?;
    let start = match args.resume.as_deref() {
        None if args.resume_or_start => Start::LatestOrFresh,
        None => Start::Fresh,
        Some("latest") => {
            // Users not reached before the interruption have no checkpoint yet; some user must.
            let out = args.out.clone().unwrap_or_else(|| args.run.join("users"));
            let checkpoints = out.join("checkpoints");
            let any = std::fs::read_dir(&checkpoints)
                .into_iter()
                .flatten()
                .flatten()
                .any(|user| premier::train::checkpoint::latest_checkpoint(&user.path()).is_some());
            if !any {
                bail!(
                    "--resume latest: nothing to resume, {} holds no checkpoint (start without \
                     --resume, or pass --resume-or-start)",
                    checkpoints.display()
                );
            }
            Start::LatestOrFresh
        }
        Some(other) => bail!(
            "--resume takes `latest` (each user resumes from its own checkpoints), not {other:?}"
        ),
    };
    let mut dataset = args.data.read()?;
    let skipped = dataset.skipped.len();
    if !args.users.is_empty() {
        for id in &args.users {
            if !dataset.users.iter().any(|u| &u.id == id) {
                bail!("user {id:?} is not in the dataset");
            }
        }
        dataset.users.retain(|u| args.users.contains(&u.id));
    }
    if let Some(n) = args.images {
        for user in &mut dataset.users {
            user.samples.truncate(n);
        }
    }
    let cache = EncodedCache::open(&args.data.cache, false)?;
    let mut data = CachedUsers::new(&dataset, cache)?;
    let trained = TrainedModel::read(&args.run)?;
    let dtype = crate::models::backbone_dtype(args.backbone_dtype, args.backend);
    if let Some(dims) = data.sample_dims()? {
        let flux = args.model.backbone_config()?;
        let bytes = if dtype.is_some() { 2 } else { 4 };
        let user_params = match config.kind {
            ColdStartKind::Linear => trained.users.users,
            ColdStartKind::Direct => trained.users.tokens * trained.users.dim,
        };
        let estimate = TrainingMemory::cold_start(
            &flux,
            bytes,
            &trained.adapter,
            trained.users,
            user_params as u64,
            PassShape {
                batch: config.batch_size,
                img_tokens: dims.img_tokens,
                txt_tokens: dims.txt_tokens,
                element_bytes: bytes,
                fused_attention: B::FUSED_ATTENTION,
            },
        );
        println!("estimated device memory of a step: {estimate}");
        if let Some(limit) = crate::memory_limit(args.max_memory, args.backend) {
            estimate.check(limit, &[])?;
        }
    }
    let flux = args.model.load_flux::<B>(&device, dtype)?;
    let adapter = PreferenceAdapter::<B>::load(
        args.run.join("mod_adapter.safetensors"),
        &trained.adapter,
        &device,
    )?;
    let table = UserTable::<B>::load(
        args.run.join("user_embedding.safetensors"),
        trained.users,
        &device,
    )?;
    let out = args.out.clone().unwrap_or_else(|| args.run.join("users"));
    let models = Models {
        flux,
        adapter,
        table,
    };
    match &args.devices {
        None => {
            for user in 0..data.ids.len() {
                fit_user(
                    &models, &mut data, user, &config, &out, &start, true, &device,
                )?;
            }
        }
        Some(list) => {
            let devices = list.devices::<B>(args.backend, &device)?;
            let (users, count, cache_dir) = (data.ids.len(), devices.len(), &args.data.cache);
            std::thread::scope(|s| -> anyhow::Result<()> {
                let runs: Vec<_> = devices
                    .iter()
                    .enumerate()
                    .map(|(k, device)| {
                        let (dataset, config, out, start) = (&dataset, &config, &out, &start);
                        let models = models.fork(device);
                        s.spawn(move || -> anyhow::Result<()> {
                            // Each device reads the cache through its own handle.
                            let cache = EncodedCache::open(cache_dir, false)?;
                            let mut data = CachedUsers::new(dataset, cache)?;
                            for user in (k..users).step_by(count) {
                                fit_user(
                                    &models, &mut data, user, config, out, start, false, device,
                                )?;
                            }
                            Ok(())
                        })
                    })
                    .collect();
                for run in runs {
                    run.join()
                        .map_err(|_| anyhow::anyhow!("a device's cold starts panicked"))??;
                }
                Ok(())
            })?;
        }
    }
    if skipped > 0 {
        println!("skipped {skipped} bad dataset entries (--skip-bad; listed at the start)");
    }
    Ok(())
}

/// The frozen models every new user is fitted against.
struct Models<B: FluxAutodiffBackend> {
    flux: premier::mmdit::Flux<B>,
    adapter: PreferenceAdapter<B>,
    table: UserTable<B>,
}

impl<B: FluxAutodiffBackend> Models<B> {
    /// The same models on `device`.
    fn fork(&self, device: &B::Device) -> Self {
        use burn::module::Module;
        Self {
            flux: self.flux.clone().fork(device),
            adapter: self.adapter.clone().fork(device),
            table: self.table.clone().fork(device),
        }
    }
}

/// Fits `data`'s user `user` and prints its result (with a progress bar when `bar`).
#[allow(clippy::too_many_arguments)]
fn fit_user<B: FluxAutodiffBackend>(
    models: &Models<B>,
    data: &mut CachedUsers,
    user: usize,
    config: &ColdStartConfig,
    out: &std::path::Path,
    start: &Start,
    bar: bool,
    device: &B::Device,
) -> anyhow::Result<()> {
    let images = data.samples[user].len();
    if let Some(warning) = config.batch_warning(&data.ids[user], images) {
        eprintln!("warning: {warning}");
    }
    let progress = bar.then(|| {
        let progress = Progress::new(config.steps, "steps");
        progress.set_message(data.ids[user].clone());
        progress
    });
    let mut last = None;
    let (_, path) = cold_start(
        models.flux.clone(),
        models.adapter.clone(),
        models.table.clone(),
        data,
        user,
        config,
        out,
        start.clone(),
        &mut |r| {
            if let Some(progress) = &progress {
                progress.set_position(r.report.step);
            }
            last = Some(r.report);
        },
        device,
    )?;
    if let Some(progress) = progress {
        progress.finish_and_clear();
    }
    println!(
        "{}: {images} images, final loss {:.4} → {}",
        data.ids[user],
        last.map_or(f64::NAN, |r| r.loss),
        path.display()
    );
    Ok(())
}
