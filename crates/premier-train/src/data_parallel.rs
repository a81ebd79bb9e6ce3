//! Data-parallel stage 1 over several devices, on burn's collective engine (`burn-collective`):
//! one peer (a thread) per device, each with its own replica of the frozen backbone, the adapters,
//! the user table and the optimizer.
//!
//! Every step each peer takes the same global batch and draws the same noise and times (from the
//! seed and the step, as one device does), backpropagates its block of the batch's rows (its share
//! of the mean flow loss) and, as [`DispersionScope`] says, the dispersion terms; the flat
//! gradients and the reported parts are then summed over peers by one all-reduce. With the global
//! scope the sum is the one-device step's gradient up to the order of float additions, so the
//! clipping sees the global gradient norm, every peer's Prodigy takes the identical step, the
//! replicas stay equal, and the result does not depend on how many devices share the batch.
//!
//! A peer whose step fails or panics before the all-reduce still takes part in it (with a failure
//! flag), so the other peers stop with it instead of waiting for it forever; burn-collective itself
//! has no timeouts, so a peer whose thread dies otherwise (a panic inside the optimizer step, say)
//! still hangs the others. One data-parallel run at a time per process (burn-collective's local
//! server is one per process and backend).

use std::ops::Range;

use burn::collective::{
    all_reduce, finish_collective, register, reset_collective, CollectiveConfig, PeerId,
    ReduceOperation,
};
use burn::module::Module;
use burn::prelude::*;
use burn::tensor::TensorPrimitive;
use premier_mmdit::FluxAutodiffBackend;

use crate::parallel::row_blocks;
use crate::prodigy::Prodigy;
use crate::stage1::{
    step_noise, BatchGradients, Stage1Batch, Stage1Trainer, StepReport, TrainError,
};

/// Which users each peer's dispersion loss contrasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DispersionScope {
    /// All users of the global batch (the one-device loss, whatever the number of peers), as the
    /// official stable variant's all-gather does. Computed once, by peer 0 (the adapters and
    /// FLUX's conditioning vector only, not the transformer's blocks).
    #[default]
    Global,
    /// Each peer's own rows, averaged over peers: the released run's per-GPU negatives.
    Local,
}

/// Why a data-parallel run stopped.
#[derive(Debug, thiserror::Error)]
pub enum DataParallelError {
    /// A peer's step failed (the others stopped at the same step).
    #[error("peer {peer} (device {device}): {source}")]
    Train {
        /// The failing peer.
        peer: usize,
        /// Its device.
        device: String,
        /// What failed.
        #[source]
        source: TrainError,
    },
    /// Another peer failed at this step; this peer stopped with it.
    #[error("peer {peer}: stopped at step {step} because peer(s) failed there")]
    PeerFailed {
        /// The peer that stopped.
        peer: usize,
        /// The step.
        step: u64,
    },
    /// The collective engine refused an operation.
    #[error("peer {peer}: collective {operation} failed: {reason}")]
    Collective {
        /// The peer.
        peer: usize,
        /// `register`, `all_reduce` or `finish`.
        operation: &'static str,
        /// What burn-collective said.
        reason: String,
    },
    /// A peer's thread panicked.
    #[error("peer {peer} panicked: {message}")]
    Panicked {
        /// The peer.
        peer: usize,
        /// The panic's message.
        message: String,
    },
    /// The peers' all-reduce did not add up (a peer left early, or peers were given batches of
    /// different sizes): the step was not taken.
    #[error("peer {peer}: step {step}: {reason}")]
    Mismatch {
        /// The peer that noticed.
        peer: usize,
        /// The step.
        step: u64,
        /// What did not add up.
        reason: String,
    },
    /// The run cannot be set up as asked.
    #[error("{0}")]
    Setup(String),
}

/// Stage-1 training on several devices that steps as one device would on the same global batch.
pub struct DataParallel<B: FluxAutodiffBackend> {
    trainers: Vec<Stage1Trainer<B>>,
    devices: Vec<B::Device>,
    scope: DispersionScope,
}

impl<B: FluxAutodiffBackend> DataParallel<B> {
    /// Replicas of `trainer` on `devices`, one peer each: the backbone and the trained model
    /// forked onto each device, and the optimizer's state (moments, d and its sums, the step
    /// count) copied through the host, so a trainer resumed from a checkpoint continues on any
    /// number of devices. Each replica runs on one thread (the trainer's `workers` are not used).
    pub fn new(
        trainer: Stage1Trainer<B>,
        devices: Vec<B::Device>,
        scope: DispersionScope,
    ) -> Result<Self, DataParallelError> {
        if devices.is_empty() {
            return Err(DataParallelError::Setup("no devices given".into()));
        }
        let state = trainer.optimizer.state();
        let trainers = devices
            .iter()
            .map(|device| Stage1Trainer {
                flux: trainer.flux.clone().fork(device),
                model: trainer.model.clone().fork(device),
                optimizer: Prodigy::from_state(
                    trainer.config.optimizer.clone(),
                    state.clone(),
                    device,
                ),
                config: trainer.config.clone(),
                step: trainer.step,
                workers: 1,
            })
            .collect();
        Ok(Self {
            trainers,
            devices,
            scope,
        })
    }

    /// Takes `steps` steps. `batch(device, step)` makes step `step`'s global batch on `device`:
    /// every peer must get the same values (the rows are split among peers here); an error
    /// stops every peer at that step. `report` sees peer 0's report of each step. Returns peer
    /// 0's trainer (every replica holds the same parameters).
    pub fn run(
        self,
        steps: u64,
        batch: impl Fn(&B::Device, u64) -> Result<Stage1Batch<B>, TrainError> + Sync,
        mut report: impl FnMut(&StepReport) + Send,
    ) -> Result<Stage1Trainer<B>, DataParallelError> {
        let peers = self.trainers.len();
        // burn-collective's local server is one per process: a second run at the same time would
        // reset the first one's peers.
        let _one_run = ONE_RUN.lock().unwrap_or_else(|e| e.into_inner());
        reset_collective::<B::InnerBackend>();
        let config = CollectiveConfig::default().with_num_devices(peers);
        let report = std::sync::Mutex::new(&mut report);
        let scope = self.scope;
        let results: Vec<Result<Stage1Trainer<B>, DataParallelError>> = std::thread::scope(|s| {
            let handles: Vec<_> = self
                .trainers
                .into_iter()
                .zip(self.devices)
                .enumerate()
                .map(|(peer, (trainer, device))| {
                    let (config, batch, report) = (config.clone(), &batch, &report);
                    s.spawn(move || {
                        let id = PeerId::from(peer);
                        register::<B::InnerBackend>(id, device.clone(), config)
                            .map_err(|e| collective_error(peer, "register", e))?;
                        let result = peer_loop(
                            trainer,
                            Peer {
                                index: peer,
                                count: peers,
                                device,
                            },
                            scope,
                            steps,
                            batch,
                            |r| {
                                if peer == 0 {
                                    (report.lock().unwrap_or_else(|e| e.into_inner()))(r)
                                }
                            },
                        );
                        let finished = finish_collective::<B::InnerBackend>(id)
                            .map_err(|e| collective_error(peer, "finish", e));
                        // The step's own error says more than a failed finish.
                        let trainer = result?;
                        finished.map(|()| trainer)
                    })
                })
                .collect();
            handles
                .into_iter()
                .enumerate()
                .map(|(peer, h)| {
                    h.join().unwrap_or_else(|panic| {
                        Err(DataParallelError::Panicked {
                            peer,
                            message: panic_message(panic.as_ref()),
                        })
                    })
                })
                .collect()
        });
        // The first peer that failed on its own names the failure, before those that stopped
        // because of it; with no error, peer 0's trainer (all replicas are equal).
        let (trainers, errors): (Vec<_>, Vec<_>) = results.into_iter().partition(Result::is_ok);
        let mut errors: Vec<DataParallelError> =
            errors.into_iter().filter_map(Result::err).collect();
        errors.sort_by_key(|e| matches!(e, DataParallelError::PeerFailed { .. }));
        match errors.into_iter().next() {
            Some(e) => Err(e),
            None => trainers
                .into_iter()
                .next()
                .and_then(Result::ok)
                .ok_or_else(|| DataParallelError::Setup("no peers ran".into())),
        }
    }
}

/// Steps `trainer` on `devices` (one peer each) until its step is `until`, as
/// [`DataParallel::run`] does, and hands peer 0's report of every step to `each` on the calling
/// thread as the step is taken (to log it and show progress). An error of `each` cannot stop the
/// peers mid-stretch: the stretch finishes and the first such error is returned.
pub fn advance<B: FluxAutodiffBackend, E: From<DataParallelError>>(
    trainer: Stage1Trainer<B>,
    devices: Vec<B::Device>,
    scope: DispersionScope,
    until: u64,
    batch: impl Fn(&B::Device, u64) -> Result<Stage1Batch<B>, TrainError> + Sync,
    mut each: impl FnMut(StepReport) -> Result<(), E>,
) -> Result<Stage1Trainer<B>, E> {
    let steps = until.saturating_sub(trainer.step);
    let parallel = DataParallel::new(trainer, devices, scope)?;
    let (sender, reports) = std::sync::mpsc::channel::<StepReport>();
    let (ran, first_error) = std::thread::scope(|s| {
        let batch = &batch;
        let running = s.spawn(move || {
            parallel.run(steps, batch, move |report| {
                // The receiver lives until every report is read.
                let _ = sender.send(report.clone());
            })
        });
        let mut first_error = None;
        for report in reports {
            if let Err(e) = each(report) {
                first_error.get_or_insert(e);
            }
        }
        let ran = running.join().unwrap_or_else(|panic| {
            Err(DataParallelError::Panicked {
                peer: 0,
                message: panic_message(panic.as_ref()),
            })
        });
        (ran, first_error)
    });
    let trainer = ran?;
    match first_error {
        Some(e) => Err(e),
        None => Ok(trainer),
    }
}

/// Held by [`DataParallel::run`]: one run at a time per process.
static ONE_RUN: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The text of a panic's payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".into()
    }
}

/// Who a peer is.
struct Peer<D> {
    index: usize,
    count: usize,
    device: D,
}

fn collective_error(
    peer: usize,
    operation: &'static str,
    e: impl std::fmt::Debug,
) -> DataParallelError {
    DataParallelError::Collective {
        peer,
        operation,
        reason: format!("{e:?}"),
    }
}

/// Reported parts a peer adds to the all-reduce after its gradients: flow, delta_ms, y_ms,
/// dispersion shared, dispersion distinct.
const PARTS: usize = 5;
/// Then its checks: failed (0 or 1), present (1) and the global batch's rows, which the sum must
/// show as no failure, `peers` present and `peers × rows`.
const CHECKS: usize = 3;

/// One peer's steps.
fn peer_loop<B: FluxAutodiffBackend>(
    mut trainer: Stage1Trainer<B>,
    peer: Peer<B::Device>,
    scope: DispersionScope,
    steps: u64,
    batch: &(impl Fn(&B::Device, u64) -> Result<Stage1Batch<B>, TrainError> + Sync),
    mut report: impl FnMut(&StepReport),
) -> Result<Stage1Trainer<B>, DataParallelError> {
    // Flat parameter lengths, for splitting the reduced gradient back.
    let sizes: Vec<usize> = crate::params::flat_values(&trainer.model)
        .iter()
        .map(|v| v.dims()[0])
        .collect();
    for _ in 0..steps {
        let step = trainer.step;
        // A panic here becomes this peer's failure, which the others learn at the all-reduce.
        let mine = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let batch = batch(&peer.device, step)?;
            let rows = batch.users.len();
            shard(&trainer, &batch, &peer, scope).map(|shard| (shard, rows))
        }))
        .unwrap_or_else(|panic| {
            Err(TrainError::Batch(format!(
                "panicked: {}",
                panic_message(panic.as_ref())
            )))
        });
        let total: usize = sizes.iter().sum();
        let (grads, mut tail, rows) = match &mine {
            Ok(((grads, parts), rows)) => (Tensor::cat(grads.clone(), 0), parts.to_vec(), *rows),
            // Zeros in place of this peer's share, so the others can finish the all-reduce.
            Err(_) => (Tensor::zeros([total], &peer.device), vec![0.0; PARTS], 0),
        };
        tail.extend([if mine.is_err() { 1.0 } else { 0.0 }, 1.0, rows as f64]);
        let tail = Tensor::<B::InnerBackend, 1>::from_floats(tail.as_slice(), &peer.device);
        let summed = all_reduce::<B::InnerBackend>(
            PeerId::from(peer.index),
            Tensor::cat(vec![grads, tail], 0).into_primitive().tensor(),
            ReduceOperation::Sum,
        )
        .map_err(|e| collective_error(peer.index, "all_reduce", e))?;
        let summed = Tensor::<B::InnerBackend, 1>::from_primitive(TensorPrimitive::Float(summed));
        if let Err(source) = mine {
            return Err(DataParallelError::Train {
                peer: peer.index,
                device: format!("{:?}", peer.device),
                source,
            });
        }
        let values: Vec<f64> = summed
            .clone()
            .slice(total..total + PARTS + CHECKS)
            .into_data()
            .convert::<f64>()
            .into_vec::<f64>()
            .unwrap_or_default();
        let [failed, present, all_rows] =
            [PARTS, PARTS + 1, PARTS + 2].map(|i| values.get(i).copied().unwrap_or(f64::NAN));
        if failed != 0.0 {
            return Err(DataParallelError::PeerFailed {
                peer: peer.index,
                step: step + 1,
            });
        }
        let expected = (peer.count * rows) as f64;
        if present != peer.count as f64 || all_rows != expected {
            return Err(DataParallelError::Mismatch {
                peer: peer.index,
                step: step + 1,
                reason: format!(
                    "{present} of {} peers took part, with {all_rows} rows in all where \
                     {expected} were expected (the same batch of {rows} rows on every peer)",
                    peer.count
                ),
            });
        }
        let mut grads = Vec::with_capacity(sizes.len());
        let mut start = 0;
        for &n in &sizes {
            grads.push(summed.clone().slice(start..start + n));
            start += n;
        }
        let [flow, delta_ms, y_ms, shared, distinct] = [0, 1, 2, 3, 4].map(|i| values[i]);
        let config = &trainer.config;
        let total_loss = flow + shared * config.lambda_shared + distinct * config.lambda_distinct;
        let step_report = trainer
            .apply_gradients(BatchGradients {
                grads,
                parts: [total_loss, flow, shared, distinct],
                delta_to_y: delta_ms.sqrt() / y_ms.sqrt().max(f64::MIN_POSITIVE),
            })
            .map_err(|source| DataParallelError::Train {
                peer: peer.index,
                device: format!("{:?}", peer.device),
                source,
            })?;
        report(&step_report);
    }
    Ok(trainer)
}

/// This peer's gradients and weighted parts of the step on `batch` (see
/// [`Stage1Trainer::shard_gradients`]).
#[allow(clippy::type_complexity)]
fn shard<B: FluxAutodiffBackend>(
    trainer: &Stage1Trainer<B>,
    batch: &Stage1Batch<B>,
    peer: &Peer<B::Device>,
    scope: DispersionScope,
) -> Result<(Vec<Tensor<B::InnerBackend, 1>>, [f64; PARTS]), TrainError> {
    let rows = batch.users.len();
    if rows < peer.count {
        return Err(TrainError::Batch(format!(
            "a batch of {rows} rows cannot be split over {} devices",
            peer.count
        )));
    }
    let (noise, t) = step_noise(
        trainer.config.seed,
        trainer.step,
        &trainer.config.timesteps,
        batch.x0.dims(),
        &peer.device,
    );
    let block: Range<usize> = row_blocks(rows, peer.count)[peer.index].clone();
    let share = block.len() as f64 / rows as f64;
    let dispersion = match scope {
        DispersionScope::Global => (peer.index == 0).then_some((0..rows, 1.0)),
        DispersionScope::Local => Some((block.clone(), 1.0 / peer.count as f64)),
    };
    trainer.shard_gradients(batch, noise, t, (block, share), dispersion)
}
