//! The stage-1 loop: batches of distinct users, gradient accumulation, checkpoints, metrics,
//! validation, and the final files.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use premier_adapter::PreferenceAdapter;
use premier_io::SaveDtype;
use premier_mmdit::{Flux, FluxAutodiffBackend};
use premier_users::{UserShape, UserTable};

use super::config::{TrainConfig, TrainedModel};
use super::resume::{
    check_resume, check_resumed_sizes, check_run_config, metrics_from, refuse_earlier_results,
    refuse_results, remove_earlier_run, resume_point, Start, FINISHED_RESULTS,
};
use super::{io, write_text, RunError};
use crate::batches::SampleDims;
use crate::checkpoint::{
    drop_checkpoints_after, load_stage1, read_stage1_state, save_stage1, RunSettings,
};
use crate::metrics::{read_metrics, write_loss_curve, MetricRecord};
use crate::sampler::UserBatchSampler;
use crate::samples::UserSamples;
use crate::seeded::seeded;
#[cfg(feature = "collective")]
use crate::stage1::TrainError;
use crate::stage1::{Stage1Batch, Stage1Model, Stage1Trainer, StepReport};

/// What a run reports as it goes (progress bars, validation images).
pub trait RunObserver<B: AutodiffBackend> {
    /// Something the run does that the user may not expect (it goes on).
    fn warn(&mut self, _message: &str) {}
    /// Before the first step: the step it starts from and the last step.
    fn started(&mut self, _from: u64, _to: u64) {}
    /// After each step.
    fn step(&mut self, _record: &MetricRecord) {}
    /// Every `validate_every` steps, with the current adapters and table.
    fn validate(
        &mut self,
        _flux: &Flux<B>,
        _model: &Stage1Model<B>,
        _step: u64,
    ) -> Result<(), String> {
        Ok(())
    }
    /// After a checkpoint is written.
    fn checkpoint(&mut self, _path: &Path) {}
}

/// An observer that does nothing.
impl<B: AutodiffBackend> RunObserver<B> for () {}

/// The summary of a finished run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSummary {
    /// Step the run started from (0 when fresh).
    pub resumed_from: u64,
    /// Step the run ended at.
    pub steps: u64,
    /// Metrics of the last step taken in this run (`None` when it took none).
    pub last: Option<MetricRecord>,
    /// The final adapters file (`mod_adapter.safetensors`).
    pub adapter: PathBuf,
    /// The final user table file (`user_embedding.safetensors`).
    pub table: PathBuf,
    /// Wall-clock seconds the run took.
    pub seconds: f64,
}

/// The sampler's batch index of micro-batch `micro` of step `step`.
pub(super) fn batch_index(step: u64, micro: usize, accum: usize) -> u64 {
    step * accum as u64 + micro as u64
}

/// The step a stretch of steps from `step` runs to: the next validation, checkpoint or the end.
fn next_stop(step: u64, config: &TrainConfig) -> u64 {
    let next = |every: u64| {
        if every > 0 {
            (step / every + 1) * every
        } else {
            u64::MAX
        }
    };
    next(config.validate_every)
        .min(next(config.checkpoint_every))
        .min(config.steps)
}

/// Seed of the posterior noise of one micro-batch.
pub(crate) fn posterior_seed(seed: u64, index: u64) -> u64 {
    seed ^ (index + 1).wrapping_mul(0xA076_1D64_78BD_642F)
}

/// Where a run's steps are taken.
pub enum Stepping<B: FluxAutodiffBackend> {
    /// On the run's device (each micro-batch's rows split over `TrainConfig::workers` threads).
    OneDevice,
    /// On several devices, one data-parallel peer each (feature `collective`; see
    /// [`crate::data_parallel`]): every step is the one device's step on the same global batch,
    /// so checkpoints resume on any number of devices. Needs `grad_accum = 1`.
    #[cfg(feature = "collective")]
    Peers {
        /// One peer per entry (the same device may appear more than once).
        devices: Vec<B::Device>,
        /// Which rows each peer's dispersion contrasts.
        scope: crate::data_parallel::DispersionScope,
        /// With several nodes, this one's place: node 0 writes the run's files (metrics,
        /// validation, checkpoints, the final weights); the others write nothing and, to resume,
        /// read node 0's checkpoints from `out` (a shared file system or a copy).
        nodes: Option<crate::data_parallel::NodeGroup>,
    },
    /// Never made: names the backend when `Peers` is not built.
    #[cfg(not(feature = "collective"))]
    #[doc(hidden)]
    _Backend(std::marker::PhantomData<B>, std::convert::Infallible),
}

impl<B: FluxAutodiffBackend> Stepping<B> {
    /// Whether this process writes the run's files: every one but nodes 1, 2, … of a run over
    /// several nodes.
    pub fn leads(&self) -> bool {
        match self {
            Stepping::OneDevice => true,
            #[cfg(feature = "collective")]
            Stepping::Peers { nodes, .. } => nodes.as_ref().is_none_or(|n| n.leads()),
            #[cfg(not(feature = "collective"))]
            Stepping::_Backend(_, never) => match *never {},
        }
    }
}

/// Trains stage 1 on `data` (an encoder cache, or samples in memory) into `out`: fresh or resumed
/// (`start`), `config.steps` steps in all. Returns the trainer at the last step and the summary.
/// Runs started on several threads at once initialise as they would alone.
pub fn train_stage1<B: FluxAutodiffBackend, D: UserSamples + Send>(
    flux: Flux<B>,
    data: &mut D,
    config: &TrainConfig,
    out: &Path,
    start: Start,
    observer: &mut dyn RunObserver<B>,
    device: &B::Device,
) -> Result<(Stage1Trainer<B>, RunSummary), RunError> {
    train_stage1_on(
        Stepping::OneDevice,
        flux,
        data,
        config,
        out,
        start,
        observer,
        device,
    )
}

/// [`train_stage1`] with its steps taken as `stepping` says; `device` holds the trainer between
/// stretches of steps (checkpoints, validation) and is where a fresh model is drawn.
#[allow(clippy::too_many_arguments)]
pub fn train_stage1_on<B: FluxAutodiffBackend, D: UserSamples + Send>(
    stepping: Stepping<B>,
    flux: Flux<B>,
    data: &mut D,
    config: &TrainConfig,
    out: &Path,
    start: Start,
    observer: &mut dyn RunObserver<B>,
    device: &B::Device,
) -> Result<(Stage1Trainer<B>, RunSummary), RunError> {
    let started = Instant::now();
    config.validate()?;
    #[cfg(feature = "collective")]
    if let Stepping::Peers { devices, .. } = &stepping {
        if config.grad_accum != 1 {
            return Err(RunError::Config(format!(
                "data-parallel training on {} devices takes grad_accum = 1 (given {}): the \
                 global batch is split over the devices instead",
                devices.len(),
                config.grad_accum
            )));
        }
    }
    let leads = stepping.leads();
    let checkpoints = out.join("checkpoints");
    let or_fresh = matches!(start, Start::LatestOrFresh);
    if leads {
        std::fs::create_dir_all(out).map_err(|e| io(out, e))?;
        match start {
            Start::Fresh => refuse_earlier_results(out)?,
            Start::Replace => remove_earlier_run(out)?,
            _ => {}
        }
    }
    let resume_from = resume_point(&checkpoints, start)?;
    if leads {
        if or_fresh && resume_from.is_none() {
            // Nothing to resume: a run killed before its first checkpoint starts again, but the
            // weights of a finished run (whose checkpoints are gone) are never written over.
            refuse_results(out, &FINISHED_RESULTS)?;
        }
        // Writes that died before a checkpoint was committed are never resumed.
        crate::checkpoint::remove_abandoned_writes(&checkpoints)?;
    }
    if let Some(u) = data.counts().iter().position(|&c| c == 0) {
        return Err(RunError::Config(format!(
            "user {:?} has no images",
            data.ids()[u]
        )));
    }
    let Some(dims) = data.sample_dims()? else {
        return Err(RunError::Config("the dataset has no images".into()));
    };
    if let Some(warning) = config.batch_warning(data.ids().len()) {
        observer.warn(&warning);
    }
    let settings = RunSettings {
        batch_size: config.batch_size,
        grad_accum: config.grad_accum,
        data: data.fingerprint(),
    };
    check_cache_fits_backbone(&flux, data.origin(), &dims)?;
    let text_dim = dims.text_dim;
    let (mut trainer, adapter_config) = match &resume_from {
        Some(path) => {
            let meta = read_stage1_state(path)?;
            check_resume(path, &meta, config, &settings, data.ids().len())?;
            let expected = config.adapter(text_dim, flux.hidden_size(), flux.depth());
            check_resumed_sizes(path, &meta, config, &expected)?;
            check_run_config(out, config)?;
            // Load before deleting anything: a checkpoint that fails to load keeps the newer ones.
            let trainer = load_stage1(path, flux, device)?;
            if leads {
                drop_checkpoints_after(&checkpoints, meta.step)?;
            }
            (trainer, meta.adapter)
        }
        None => {
            // A fresh run's initialisation depends on its seed alone.
            let adapter_config = config.adapter(text_dim, flux.hidden_size(), flux.depth());
            let shape = UserShape {
                users: data.ids().len(),
                tokens: config.user_tokens,
                dim: config.user_dim,
            };
            let (adapter, users) = seeded::<B, _>(device, config.stage1.seed, || {
                let adapter =
                    PreferenceAdapter::<B>::init_with(&adapter_config, config.adapter_init, device);
                (adapter, UserTable::<B>::init(shape, device))
            });
            let adapter = adapter.map_err(|e| RunError::Config(e.to_string()))?;
            let model = Stage1Model { adapter, users };
            let trainer = Stage1Trainer::new(flux, model, config.stage1.clone());
            (trainer, adapter_config)
        }
    };
    trainer.workers = config.workers.max(1);
    let metrics_path = out.join("metrics.jsonl");
    let mut log = if leads {
        write_text(
            &out.join("config.toml"),
            &config.to_toml().map_err(RunError::Config)?,
        )?;
        Some(metrics_from(&metrics_path, trainer.step)?)
    } else {
        None
    };

    // The peers; over several nodes every node must bring the same data and training settings.
    #[cfg(feature = "collective")]
    let mut group = match stepping {
        Stepping::OneDevice => None,
        Stepping::Peers {
            devices,
            scope,
            nodes,
        } => {
            let group = match nodes {
                None => crate::data_parallel::PeerGroup::new(devices, scope),
                Some(nodes) => {
                    let run = format!(
                        "{} {:?} {:?} batch {} steps {}",
                        settings.data,
                        trainer.config,
                        adapter_config,
                        config.batch_size,
                        config.steps
                    );
                    let run = crate::cache::content_hash(run.as_bytes());
                    crate::data_parallel::PeerGroup::across_nodes(devices, scope, nodes, run)
                }
            };
            Some(group.map_err(|e| RunError::Config(e.to_string()))?)
        }
    };

    let seed = trainer.config.seed;
    let sampler =
        UserBatchSampler::new(data.counts(), config.batch_size, seed).map_err(RunError::Config)?;
    let dispersion = trainer.config.dispersion.is_some();
    // Micro-batch `index` of the run on `device`; `null_text`: the empty prompt's tokens there.
    let make_batch = |data: &mut D,
                      index: u64,
                      null_text: Option<Tensor<B, 3>>,
                      device: &B::Device|
     -> Result<Stage1Batch<B>, RunError> {
        let picks = sampler.batch(index);
        let encoded = data.batch::<B>(&picks, posterior_seed(seed, index), device)?;
        Ok(Stage1Batch {
            x0: encoded.x0,
            latent_hw: encoded.latent_hw,
            text: encoded.text,
            pooled: encoded.pooled,
            users: picks.iter().map(|p| p.0).collect(),
            null_text,
        })
    };
    let null_text = dispersion
        .then(|| data.text::<B>("", device).map(|t| t.0))
        .transpose()?;
    let resumed_from = trainer.step;
    observer.started(resumed_from, config.steps);
    let mut last = None;
    let mut tick = Instant::now();
    // Each step's record, logged and shown as the step is taken.
    let mut record_step =
        |report: StepReport, observer: &mut dyn RunObserver<B>| -> Result<MetricRecord, RunError> {
            let record = MetricRecord {
                report,
                it_per_s: 1.0 / tick.elapsed().as_secs_f64().max(1e-9),
                elapsed_s: started.elapsed().as_secs_f64(),
            };
            tick = Instant::now();
            if let Some(log) = &mut log {
                log.write(&record)?;
            }
            observer.step(&record);
            Ok(record)
        };
    while trainer.step < config.steps {
        // Steps run in stretches up to the next validation, checkpoint or the end.
        let until = next_stop(trainer.step, config);
        #[cfg(feature = "collective")]
        let on_peers = group.as_mut();
        #[cfg(not(feature = "collective"))]
        let on_peers: Option<std::convert::Infallible> = None;
        match on_peers {
            None => {
                while trainer.step < until {
                    // One micro-batch at a time: memory does not grow with `grad_accum`.
                    let step = trainer.step;
                    let report = trainer.step_streamed(config.grad_accum, |i| {
                        let index = batch_index(step, i, config.grad_accum);
                        make_batch(data, index, null_text.clone(), device)
                    })?;
                    last = Some(record_step(report, observer)?);
                }
            }
            #[cfg(feature = "collective")]
            Some(group) => {
                let data = std::sync::Mutex::new(&mut *data);
                let batch = |device: &B::Device, step: u64| {
                    let mut data = data.lock().unwrap_or_else(|e| e.into_inner());
                    // The empty prompt read once for the run, moved to the peer's device.
                    let null_text = null_text.clone().map(|t| t.to_device(device));
                    make_batch(&mut data, batch_index(step, 0, 1), null_text, device)
                };
                let stepped = crate::data_parallel::advance(
                    trainer,
                    group,
                    until,
                    |device, step| {
                        batch(device, step).map_err(|e| TrainError::Batch(e.to_string()))
                    },
                    |report| {
                        last = Some(record_step(report, observer)?);
                        Ok::<_, RunError>(())
                    },
                );
                trainer = stepped?;
            }
            #[cfg(not(feature = "collective"))]
            Some(never) => match never {},
        }
        if !leads {
            // Node 0 validates and writes the checkpoints; this node waits for it at the next
            // step's all-reduce.
            continue;
        }
        let step = trainer.step;
        if config.validate_every > 0 && step % config.validate_every == 0 {
            observer
                .validate(&trainer.flux, &trainer.model, step)
                .map_err(RunError::Validation)?;
        }
        let every = config.checkpoint_every;
        if (every > 0 && step % every == 0) || step == config.steps {
            let path = save_stage1(
                &trainer,
                &adapter_config,
                Some(&settings),
                &checkpoints,
                config.keep_checkpoints,
            )?;
            observer.checkpoint(&path);
        }
    }

    let adapter = out.join("mod_adapter.safetensors");
    let table = out.join("user_embedding.safetensors");
    if leads {
        trainer
            .model
            .adapter
            .save(&adapter, SaveDtype::F32)
            .map_err(|e| io(&adapter, e))?;
        trainer
            .model
            .users
            .save(&table, SaveDtype::F32)
            .map_err(|e| io(&table, e))?;
        TrainedModel {
            adapter: adapter_config,
            users: trainer.model.users.shape(),
            ids: data.ids().to_vec(),
        }
        .write(out)?;
        let records = read_metrics(&metrics_path)?;
        if !records.is_empty() {
            write_loss_curve(&records, &out.join("loss.png"))?;
        }
    }
    let summary = RunSummary {
        resumed_from,
        steps: trainer.step,
        last,
        adapter,
        table,
        seconds: started.elapsed().as_secs_f64(),
    };
    Ok((trainer, summary))
}

/// The cache's samples must be what the backbone reads: packed latent tokens of its input width,
/// T5 tokens and pooled vectors of its widths (a cache encoded for another model — FLUX latents
/// for the synth base, say — fails here, named, instead of deep inside the first step).
pub(super) fn check_cache_fits_backbone<B: FluxAutodiffBackend>(
    flux: &Flux<B>,
    cache: &Path,
    dims: &SampleDims,
) -> Result<(), RunError> {
    let wants = (
        flux.img_in.weight.dims()[0],
        flux.txt_in.weight.dims()[0],
        flux.vector_in.in_layer.weight.dims()[0],
    );
    let has = (4 * dims.latent_channels, dims.text_dim, dims.pooled_dim);
    if has != wants {
        return Err(RunError::Config(format!(
            "{}: its samples hold {} latent channels ({} per packed token), {}-wide text tokens \
             and {}-wide pooled vectors, but the backbone reads {} per token, {}-wide text and \
             {}-wide pooled vectors: the cache was encoded for another model",
            cache.display(),
            dims.latent_channels,
            has.0,
            has.1,
            has.2,
            wants.0,
            wants.1,
            wants.2
        )));
    }
    Ok(())
}
