//! Data-parallel stage 1 over several devices, on burn's collective engine (`burn-collective`):
//! one peer (a thread) per device, each with its own replica of the frozen backbone, the adapters,
//! the user table and the optimizer; the devices on one node ([`PeerGroup::new`]) or on several
//! ([`PeerGroup::across_nodes`]: node 0 is the coordinator the others connect to, and each step's
//! sums go between the nodes through it, on burn-communication's WebSocket transport; see
//! `nodes.rs` for why not burn-collective's own global layer).
//!
//! Every step each peer takes the same global batch and draws the same noise and times (from the
//! seed and the step, as one device does), backpropagates its block of the batch's rows (its share
//! of the mean flow loss) and, as [`DispersionScope`] says, the dispersion terms; the flat
//! gradients and the reported parts are then summed over peers by one all-reduce (over nodes
//! too). With the global scope the sum is the one-device step's gradient up to the order of float
//! additions, so the clipping sees the global gradient norm, every peer's Prodigy takes the
//! identical step, the replicas stay equal, and the result does not depend on how many devices
//! (or nodes) share the batch.
//!
//! A peer whose step fails or panics before the all-reduce still takes part in it (with a failure
//! flag), so the other peers stop with it instead of waiting for it forever; burn-collective itself
//! has no timeouts, so a peer whose thread dies otherwise (a panic inside the optimizer step, say)
//! still leaves the others waiting. A node that goes away stops the others with an error.

use std::ops::Range;

use burn::collective::{
    all_reduce, finish_collective, register, reset_collective, CollectiveConfig, PeerId,
    ReduceOperation,
};
use burn::module::Module;
use burn::prelude::*;
use burn::tensor::TensorPrimitive;
use premier_mmdit::FluxAutodiffBackend;

mod nodes;

use std::sync::Arc;

use crate::parallel::row_blocks;
use crate::prodigy::Prodigy;
use crate::stage1::{
    step_noise, BatchGradients, Stage1Batch, Stage1Trainer, StepReport, TrainError,
};
use nodes::NodeExchange;

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
    /// Other peers failed at this step; this peer stopped with them.
    #[error("peer {peer}: stopped at step {step} because {failed} failed there")]
    PeerFailed {
        /// The peer that stopped.
        peer: usize,
        /// The step.
        step: u64,
        /// Which peers failed (and on which nodes), in words.
        failed: String,
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
    /// The sums between nodes failed (a node went away, or brought other values).
    #[error("peer {peer}: step {step}: between the nodes: {reason}")]
    Nodes {
        /// The peer that noticed.
        peer: usize,
        /// The step.
        step: u64,
        /// What went wrong.
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

/// This process's place in a run over several nodes (machines), each running the same number of
/// peers: the global batch is split over every node's peers, in rank order. Node 0 is the
/// coordinator: it listens on the coordinator's port (on every interface) and the other nodes
/// connect to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeGroup {
    /// How many nodes take part.
    pub nodes: u32,
    /// This node's rank, `0..nodes`; rank 0 is the coordinator and writes the run's files.
    pub rank: u32,
    /// `host:port` of node 0, as the other nodes reach it.
    pub coordinator: String,
}

impl NodeGroup {
    /// Whether this node writes the run's files (node 0).
    pub fn leads(&self) -> bool {
        self.rank == 0
    }

    /// Checks the group makes sense: a rank in range, a coordinator address with a port, and
    /// (on node 0) that port free now. [`PeerGroup::across_nodes`] checks it again.
    pub fn check(&self) -> Result<(), DataParallelError> {
        if self.nodes == 0 || self.rank >= self.nodes {
            return Err(DataParallelError::Setup(format!(
                "node rank {} is not one of 0..{} (the ranks of {} nodes)",
                self.rank, self.nodes, self.nodes
            )));
        }
        let port = host_port(&self.coordinator, "coordinator")?;
        if self.rank == 0 {
            // The server binds in the background: a port in use is refused here, named.
            drop(std::net::TcpListener::bind(("0.0.0.0", port)).map_err(|e| {
                DataParallelError::Setup(format!(
                    "coordinator {}: port {port}: {e}",
                    self.coordinator
                ))
            })?);
        }
        Ok(())
    }
}

/// The port of `host:port`, or why it is not one (`what` names it).
fn host_port(text: &str, what: &str) -> Result<u16, DataParallelError> {
    match text.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() => port.parse::<u16>().map_err(|_| {
            DataParallelError::Setup(format!("{what} {text:?}: {port:?} is not a port number"))
        }),
        _ => Err(DataParallelError::Setup(format!(
            "{what} {text:?}: give it as HOST:PORT"
        ))),
    }
}

/// The peers of a data-parallel run: one per device of this process, on one node or on several
/// ([`NodeGroup`]). They join burn-collective at their first [`PeerGroup::run`] and stay joined
/// until the group is dropped, so a run steps in stretches (checkpoints and validation between
/// them, on the calling thread) without registering again. One group at a time per process
/// (burn-collective's local server is one per process and backend): a second waits for the
/// first to be dropped.
pub struct PeerGroup<B: FluxAutodiffBackend> {
    devices: Vec<B::Device>,
    scope: DispersionScope,
    /// With several nodes: the group, and what every node must agree on (checked when joining).
    nodes: Option<(NodeGroup, String)>,
    /// The link to the other nodes, once joined.
    exchange: Option<Arc<NodeExchange>>,
    /// The peers registered with burn-collective (they leave when the group is dropped).
    joined: bool,
    /// A stretch failed: the peers may be out of step, so the group steps no more.
    broken: bool,
    _alone: OneGroup,
}

impl<B: FluxAutodiffBackend> PeerGroup<B> {
    /// Peers on `devices` (the same device may appear more than once), all in this process.
    pub fn new(devices: Vec<B::Device>, scope: DispersionScope) -> Result<Self, DataParallelError> {
        if devices.is_empty() {
            return Err(DataParallelError::Setup("no devices given".into()));
        }
        Ok(Self {
            devices,
            scope,
            nodes: None,
            exchange: None,
            joined: false,
            broken: false,
            _alone: OneGroup::take(),
        })
    }

    /// Peers on `devices` in this process, and as many on each of the group's other nodes. `run`
    /// is what every node must agree on (a digest of the data and the training settings, say):
    /// node 0 refuses a node that brings another. The nodes meet at the first [`Self::run`].
    pub fn across_nodes(
        devices: Vec<B::Device>,
        scope: DispersionScope,
        nodes: NodeGroup,
        run: String,
    ) -> Result<Self, DataParallelError> {
        nodes.check()?;
        let mut group = Self::new(devices, scope)?;
        group.nodes = Some((nodes, run));
        Ok(group)
    }

    /// Whether this process writes the run's files (it is node 0, or the only node).
    pub fn leads(&self) -> bool {
        self.nodes.as_ref().is_none_or(|(n, _)| n.leads())
    }

    /// Peers over all nodes.
    pub fn peers(&self) -> usize {
        self.devices.len() * self.nodes.as_ref().map_or(1, |(n, _)| n.nodes as usize)
    }

    /// Takes `steps` steps from `trainer` (this node's copy of the run: every node holds the
    /// same). The backbone and the trained model are forked onto each device and the
    /// optimizer's state (moments, d and its sums, the step count) copied through the host, so a
    /// trainer resumed from a checkpoint continues on any number of devices. Each replica runs
    /// on one thread (the trainer's `workers` are not used).
    ///
    /// `batch(device, step)` makes step `step`'s global batch on `device`: every peer must get
    /// the same values (the rows are split among peers here); an error stops every peer at that
    /// step. `report` sees this node's first peer's report of each step. Returns that peer's
    /// trainer (every replica holds the same parameters).
    pub fn run(
        &mut self,
        trainer: Stage1Trainer<B>,
        steps: u64,
        batch: impl Fn(&B::Device, u64) -> Result<Stage1Batch<B>, TrainError> + Sync,
        mut report: impl FnMut(&StepReport) + Send,
    ) -> Result<Stage1Trainer<B>, DataParallelError> {
        if self.broken {
            return Err(DataParallelError::Setup(
                "an earlier stretch of this group failed; start the run again (it resumes from \
                 its last checkpoint)"
                    .into(),
            ));
        }
        let join = !self.joined;
        if join {
            if let Some((nodes, run)) = &self.nodes {
                self.exchange = Some(Arc::new(NodeExchange::join(
                    nodes,
                    self.devices.len(),
                    run,
                )?));
            }
            // A group dropped mid-registration (a panic, say) leaves nothing behind.
            reset_collective::<B::InnerBackend>();
            self.joined = true;
        }
        let config = CollectiveConfig::default().with_num_devices(self.devices.len());
        let state = trainer.optimizer.state();
        let replicas: Vec<Stage1Trainer<B>> = self
            .devices
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
        drop(trainer);
        let (first, count) = match &self.nodes {
            Some((n, _)) => (n.rank as usize * self.devices.len(), self.peers()),
            None => (0, self.devices.len()),
        };
        let exchange = self.exchange.as_deref();
        if let Some(exchange) = exchange {
            exchange.reopen();
        }
        let per_node = self.nodes.as_ref().map(|_| self.devices.len());
        let report = std::sync::Mutex::new(&mut report);
        let scope = self.scope;
        let results: Vec<Result<Stage1Trainer<B>, DataParallelError>> = std::thread::scope(|s| {
            let handles: Vec<_> = replicas
                .into_iter()
                .zip(self.devices.iter().cloned())
                .enumerate()
                .map(|(local, (trainer, device))| {
                    let (config, batch, report) = (config.clone(), &batch, &report);
                    let peer = Peer {
                        index: first + local,
                        local,
                        count,
                        per_node,
                        device,
                    };
                    s.spawn(move || {
                        // However the first peer stops, the others do not wait for its totals.
                        let _closes = (local == 0).then_some(exchange).flatten().map(ClosesOnDrop);
                        if join {
                            register::<B::InnerBackend>(
                                PeerId::from(local),
                                peer.device.clone(),
                                config,
                            )
                            .map_err(|e| collective_error(peer.index, "register", e))?;
                        }
                        peer_loop(trainer, peer, scope, exchange, steps, batch, |r| {
                            if local == 0 {
                                (report.lock().unwrap_or_else(|e| e.into_inner()))(r)
                            }
                        })
                    })
                })
                .collect();
            handles
                .into_iter()
                .enumerate()
                .map(|(local, h)| {
                    h.join().unwrap_or_else(|panic| {
                        Err(DataParallelError::Panicked {
                            peer: first + local,
                            message: panic_message(panic.as_ref()),
                        })
                    })
                })
                .collect()
        });
        // The first peer that failed on its own names the failure, before those that stopped
        // because of it; with no error, the first peer's trainer (all replicas are equal).
        let (trainers, errors): (Vec<_>, Vec<_>) = results.into_iter().partition(Result::is_ok);
        let mut errors: Vec<DataParallelError> =
            errors.into_iter().filter_map(Result::err).collect();
        errors.sort_by_key(|e| matches!(e, DataParallelError::PeerFailed { .. }));
        match errors.into_iter().next() {
            Some(e) => {
                self.broken = true;
                Err(e)
            }
            None => trainers
                .into_iter()
                .next()
                .and_then(Result::ok)
                .ok_or_else(|| DataParallelError::Setup("no peers ran".into())),
        }
    }
}

impl<B: FluxAutodiffBackend> Drop for PeerGroup<B> {
    /// The peers leave burn-collective (and the link to the other nodes closes).
    fn drop(&mut self) {
        if self.joined {
            for local in 0..self.devices.len() {
                // A peer that never registered (its run failed first) has nothing to finish.
                let _ = finish_collective::<B::InnerBackend>(PeerId::from(local));
            }
        }
    }
}

/// Steps `trainer` on `group` until its step is `until`, as [`PeerGroup::run`] does, and hands
/// this node's first peer's report of every step to `each` on the calling thread as the step is
/// taken (to log it and show progress). An error of `each` cannot stop the peers mid-stretch:
/// the stretch finishes and the first such error is returned.
pub fn advance<B: FluxAutodiffBackend, E: From<DataParallelError>>(
    trainer: Stage1Trainer<B>,
    group: &mut PeerGroup<B>,
    until: u64,
    batch: impl Fn(&B::Device, u64) -> Result<Stage1Batch<B>, TrainError> + Sync,
    mut each: impl FnMut(StepReport) -> Result<(), E>,
) -> Result<Stage1Trainer<B>, E> {
    let steps = until.saturating_sub(trainer.step);
    let (sender, reports) = std::sync::mpsc::channel::<StepReport>();
    let (ran, first_error) = std::thread::scope(|s| {
        let batch = &batch;
        let running = s.spawn(move || {
            group.run(trainer, steps, batch, move |report| {
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

/// Closes a [`NodeExchange`] when dropped (the thread of a node's first peer ends).
struct ClosesOnDrop<'a>(&'a NodeExchange);

impl Drop for ClosesOnDrop<'_> {
    fn drop(&mut self) {
        self.0
            .close("the first peer of this node stopped before the nodes' sum of this step");
    }
}

/// Held by a [`PeerGroup`]: one group at a time per process (`Send`, unlike a mutex guard, so a
/// group can be moved to the thread that runs it).
struct OneGroup;

static GROUP_TAKEN: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
static GROUP_FREED: std::sync::Condvar = std::sync::Condvar::new();

impl OneGroup {
    /// Waits until no other group lives in this process.
    fn take() -> Self {
        let mut taken = GROUP_TAKEN.lock().unwrap_or_else(|e| e.into_inner());
        while *taken {
            taken = GROUP_FREED.wait(taken).unwrap_or_else(|e| e.into_inner());
        }
        *taken = true;
        OneGroup
    }
}

impl Drop for OneGroup {
    fn drop(&mut self) {
        *GROUP_TAKEN.lock().unwrap_or_else(|e| e.into_inner()) = false;
        GROUP_FREED.notify_all();
    }
}

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
    /// Its place among all nodes' peers (which rows of the batch it takes).
    index: usize,
    /// Its place among this process's peers (its burn-collective id).
    local: usize,
    /// Peers over all nodes.
    count: usize,
    /// Over several nodes, the peers of each.
    per_node: Option<usize>,
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
/// Then its checks: the global batch's rows and its step, which the sum must show as
/// `peers × rows` and `peers × step`; then two slots per peer, 1 in its own: present, which the
/// sum must show as 1 in every slot (every peer there once: no rank given twice), and failed,
/// which must be 0 in every slot (and otherwise names the failing peers).
const CHECKS: usize = 2;

/// One peer's steps.
fn peer_loop<B: FluxAutodiffBackend>(
    mut trainer: Stage1Trainer<B>,
    peer: Peer<B::Device>,
    scope: DispersionScope,
    exchange: Option<&NodeExchange>,
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
        tail.extend([rows as f64, step as f64]);
        let me =
            |yes: bool| (0..peer.count).map(move |p| f64::from(u8::from(yes && p == peer.index)));
        tail.extend(me(true));
        tail.extend(me(mine.is_err()));
        let tail = Tensor::<B::InnerBackend, 1>::from_floats(tail.as_slice(), &peer.device);
        let summed = all_reduce::<B::InnerBackend>(
            PeerId::from(peer.local),
            Tensor::cat(vec![grads, tail], 0).into_primitive().tensor(),
            ReduceOperation::Sum,
        )
        .map_err(|e| collective_error(peer.index, "all_reduce", e))?;
        let mut summed =
            Tensor::<B::InnerBackend, 1>::from_primitive(TensorPrimitive::Float(summed));
        if let Some(exchange) = exchange {
            summed = exchange.sum(peer.local, step, summed).map_err(|reason| {
                DataParallelError::Nodes {
                    peer: peer.index,
                    step: step + 1,
                    reason,
                }
            })?;
        }
        if let Err(source) = mine {
            return Err(DataParallelError::Train {
                peer: peer.index,
                device: format!("{:?}", peer.device),
                source,
            });
        }
        let values: Vec<f64> = summed
            .clone()
            .slice(total..total + PARTS + CHECKS + 2 * peer.count)
            .into_data()
            .convert::<f64>()
            .into_vec::<f64>()
            .unwrap_or_default();
        let value = |i: usize| values.get(i).copied().unwrap_or(f64::NAN);
        let failed: Vec<usize> = (0..peer.count)
            .filter(|p| value(PARTS + CHECKS + peer.count + p) != 0.0)
            .collect();
        if !failed.is_empty() {
            let failed = failed
                .iter()
                .map(|&p| match peer.per_node {
                    Some(devices) => format!("peer {p} (node {})", p / devices),
                    None => format!("peer {p}"),
                })
                .collect::<Vec<_>>()
                .join(", ");
            return Err(DataParallelError::PeerFailed {
                peer: peer.index,
                step: step + 1,
                failed,
            });
        }
        let mismatch = |reason: String| DataParallelError::Mismatch {
            peer: peer.index,
            step: step + 1,
            reason,
        };
        let seen: Vec<f64> = (0..peer.count).map(|p| value(PARTS + CHECKS + p)).collect();
        if seen.iter().any(|&n| n != 1.0) {
            let odd: Vec<String> = seen
                .iter()
                .enumerate()
                .filter(|(_, &n)| n != 1.0)
                .map(|(p, n)| format!("peer {p} seen {n} times"))
                .collect();
            return Err(mismatch(format!(
                "{} of the {} peers did not take part once each ({}): give each node its own \
                 --node-rank and the same number of devices",
                odd.len(),
                peer.count,
                odd.join(", ")
            )));
        }
        let (all_rows, steps) = (value(PARTS), value(PARTS + 1));
        let expected = (peer.count * rows) as f64;
        if all_rows != expected {
            return Err(mismatch(format!(
                "{all_rows} rows in all where {expected} were expected (the same batch of {rows} \
                 rows on every peer)"
            )));
        }
        if steps != (peer.count as u64 * step) as f64 {
            return Err(mismatch(format!(
                "the peers are not all at step {step} (were they started from different \
                 checkpoints?)"
            )));
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
