//! The link between the nodes of a data-parallel run over several machines, on
//! burn-communication's WebSocket transport. Node 0 listens on the coordinator's port and every
//! other node connects to it; each step, every node sends node 0 the sum of its own peers' values,
//! node 0 adds them in rank order and sends the total back, so every node gets the same bits.
//!
//! Why not burn-collective's own global layer: in burn-collective 0.21 the nodes meet after every
//! global operation in `SyncService::sync`, which clears a copy of its list of the nodes seen, not
//! the list, so the second global operation of a registration never returns (a two-node run hung
//! at its second step, every strategy calls it); registering again before every step races in
//! its orchestrator, which numbers nodes by how many are registered. The peers of one node still
//! meet through burn-collective.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use burn::prelude::*;
use burn_communication::websocket::{WsClient, WsClientChannel, WsServer, WsServerChannel};
use burn_communication::{Address, CommunicationChannel, Message, ProtocolClient, ProtocolServer};

use super::{host_port, DataParallelError, NodeGroup};

/// How long node 0 waits for the others to join, and they for node 0 (nodes load their models at
/// different speeds).
const JOIN_WAIT: Duration = Duration::from_secs(15 * 60);

/// Values per message: 4 MiB, under the WebSocket server's frame limit.
const CHUNK: usize = 1 << 20;

/// The first words of a joining node's greeting.
const HELLO: &str = "premier-node/1";

/// This node's connection to the others.
struct NodeLink {
    runtime: tokio::runtime::Runtime,
    role: Role,
}

enum Role {
    /// Node 0: its channels to nodes 1, 2, … in rank order, and what stops its server.
    Hub {
        spokes: Vec<WsServerChannel>,
        _stop: tokio::sync::oneshot::Sender<()>,
    },
    /// Another node: its channel to node 0.
    Spoke { hub: Box<WsClientChannel> },
}

impl NodeLink {
    /// Joins the group: node 0 waits for every other node to greet it with the same group size,
    /// peers per node and `run` (what every node must agree on), then welcomes them all.
    fn join(group: &NodeGroup, peers: usize, run: &str) -> Result<Self, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| format!("starting the network runtime: {e}"))?;
        let port = host_port(&group.coordinator, "coordinator").map_err(|e| e.to_string())?;
        let hello = format!("{HELLO} nodes {} peers {peers} run {run}", group.nodes);
        let role = if group.rank == 0 {
            let (spokes, stop) = welcome_nodes(&runtime, port, group.nodes as usize - 1, &hello)?;
            Role::Hub {
                spokes,
                _stop: stop,
            }
        } else {
            let hub = greet_node_0(&runtime, &group.coordinator, group.rank, &hello)?;
            Role::Spoke { hub: Box::new(hub) }
        };
        Ok(Self { runtime, role })
    }

    /// The sum of `values` over the nodes, at step `step` (which every node must be at).
    fn sum(&mut self, step: u64, values: Vec<f32>) -> Result<Vec<f32>, String> {
        let Self { runtime, role } = self;
        match role {
            Role::Hub { spokes, .. } => {
                let mut total = values;
                for (i, spoke) in spokes.iter_mut().enumerate() {
                    let theirs = on(runtime, i + 1, recv_values(spoke, step, total.len()))?;
                    for (t, v) in total.iter_mut().zip(&theirs) {
                        *t += v;
                    }
                }
                for (i, spoke) in spokes.iter_mut().enumerate() {
                    on(runtime, i + 1, send_values(spoke, step, &total))?;
                }
                Ok(total)
            }
            Role::Spoke { hub } => {
                on(runtime, 0, send_values(hub.as_mut(), step, &values))?;
                on(runtime, 0, recv_values(hub.as_mut(), step, values.len()))
            }
        }
    }
}

/// Node 0's side of the join: listens on `port` until the `others` nodes have greeted it with
/// `hello` (their ranks told apart), welcomes them, and returns their channels in rank order and
/// what stops the server.
fn welcome_nodes(
    runtime: &tokio::runtime::Runtime,
    port: u16,
    others: usize,
    hello: &str,
) -> Result<(Vec<WsServerChannel>, tokio::sync::oneshot::Sender<()>), String> {
    let (joined, mut arrivals) = tokio::sync::mpsc::unbounded_channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = WsServer::new(port).route("join", move |channel: WsServerChannel| {
        let joined = joined.clone();
        async move {
            let _ = joined.send(channel);
        }
    });
    let mut serving = runtime.spawn(server.serve(async move {
        let _ = stopped.await;
    }));
    let spokes = runtime.block_on(async {
        let mut by_rank: Vec<Option<WsServerChannel>> = (0..others).map(|_| None).collect();
        let deadline = tokio::time::Instant::now() + JOIN_WAIT;
        let late = |by_rank: &[Option<WsServerChannel>]| {
            format!(
                "{} of the {others} other nodes joined within {} s",
                by_rank.iter().flatten().count(),
                JOIN_WAIT.as_secs()
            )
        };
        while by_rank.iter().any(Option::is_none) {
            let arrived = tokio::time::timeout_at(deadline, async {
                tokio::select! {
                    channel = arrivals.recv() => Ok(channel),
                    served = &mut serving => Err(served),
                }
            })
            .await;
            let mut channel = match arrived {
                Ok(Ok(Some(channel))) => channel,
                Ok(Err(served)) => {
                    return Err(format!(
                        "node 0 stopped listening on port {port}: {served:?}"
                    ))
                }
                Ok(Ok(None)) | Err(_) => return Err(late(&by_rank)),
            };
            let greeting = tokio::time::timeout_at(deadline, recv_text(&mut channel))
                .await
                .map_err(|_| late(&by_rank))??;
            let rank = greeting
                .strip_suffix(hello)
                .and_then(|r| r.strip_prefix("rank "))
                .and_then(|r| r.trim().parse::<usize>().ok());
            let refusal = match rank {
                Some(r) if (1..=others).contains(&r) && by_rank[r - 1].is_none() => {
                    by_rank[r - 1] = Some(channel);
                    continue;
                }
                Some(r) if (1..=others).contains(&r) => {
                    format!("two nodes gave --node-rank {r}")
                }
                _ => format!(
                    "a node greeted with {greeting:?} where node 0 expects \"rank R \
                         {hello}\": give every node the same --nodes, number of devices, \
                         data and configuration, and a rank of its own"
                ),
            };
            // Every node that joined so far stops too, with the reason.
            let refused = format!("refused: {refusal}");
            for accepted in by_rank.iter_mut().flatten() {
                let _ = send_text(accepted, &refused).await;
            }
            send_text(&mut channel, &refused).await?;
            return Err(refusal);
        }
        let mut spokes: Vec<WsServerChannel> = by_rank.into_iter().flatten().collect();
        for spoke in &mut spokes {
            send_text(spoke, "welcome").await?;
        }
        Ok(spokes)
    })?;
    Ok((spokes, stop))
}

/// Another node's side of the join: connects to node 0 at `coordinator` (retrying until the join
/// wait runs out), greets it as `rank` with `hello`, and returns the channel once welcomed.
fn greet_node_0(
    runtime: &tokio::runtime::Runtime,
    coordinator: &str,
    rank: u32,
    hello: &str,
) -> Result<WsClientChannel, String> {
    let address: Address = format!("ws://{coordinator}")
        .parse()
        .map_err(|e: String| format!("coordinator {coordinator:?}: {e}"))?;
    runtime.block_on(async {
        let deadline = tokio::time::Instant::now() + JOIN_WAIT;
        let mut hub = loop {
            if let Some(channel) = WsClient::connect(address.clone(), "join").await {
                break channel;
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!(
                    "node 0 did not answer at {coordinator} within {} s",
                    JOIN_WAIT.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        send_text(&mut hub, &format!("rank {rank} {hello}")).await?;
        match recv_text(&mut hub).await?.as_str() {
            "welcome" => Ok(hub),
            other => Err(format!("node 0 {other}")),
        }
    })
}

/// Runs one exchange with node `node` to its end; its failure names the node.
fn on<T>(
    runtime: &tokio::runtime::Runtime,
    node: usize,
    exchange: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    // burn-communication panics on a connection that ends without a goodbye (a node killed).
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| runtime.block_on(exchange)))
        .unwrap_or_else(|_| Err("its connection ended without a goodbye".into()))
        .map_err(|e| format!("node {node}: {e}"))
}

/// Sends a short text message.
async fn send_text<C: CommunicationChannel>(channel: &mut C, text: &str) -> Result<(), String> {
    let data = bytes::Bytes::copy_from_slice(text.as_bytes());
    channel
        .send(Message::new(data))
        .await
        .map_err(|e| format!("sending: {e:?}"))
}

/// Receives a short text message.
async fn recv_text<C: CommunicationChannel>(channel: &mut C) -> Result<String, String> {
    let message = recv(channel).await?;
    String::from_utf8(message.to_vec()).map_err(|_| "a message that is not text".into())
}

/// The next message's bytes.
async fn recv<C: CommunicationChannel>(channel: &mut C) -> Result<bytes::Bytes, String> {
    match channel.recv().await {
        Ok(Some(message)) => Ok(message.data),
        Ok(None) => Err("the connection was closed".into()),
        Err(e) => Err(format!("receiving: {e:?}")),
    }
}

/// Sends step `step`'s values: a header (the step and the count), then chunks of little-endian
/// floats.
async fn send_values<C: CommunicationChannel>(
    channel: &mut C,
    step: u64,
    values: &[f32],
) -> Result<(), String> {
    let mut header = step.to_le_bytes().to_vec();
    header.extend((values.len() as u64).to_le_bytes());
    channel
        .send(Message::new(header.into()))
        .await
        .map_err(|e| format!("sending: {e:?}"))?;
    for chunk in values.chunks(CHUNK) {
        // Filled in place: a copy, where collecting a flat map of arrays pushes byte by byte.
        let mut bytes = vec![0u8; 4 * chunk.len()];
        for (b, v) in bytes.chunks_exact_mut(4).zip(chunk) {
            b.copy_from_slice(&v.to_le_bytes());
        }
        channel
            .send(Message::new(bytes.into()))
            .await
            .map_err(|e| format!("sending: {e:?}"))?;
    }
    Ok(())
}

/// Receives what [`send_values`] sent, checking the step and the count.
async fn recv_values<C: CommunicationChannel>(
    channel: &mut C,
    step: u64,
    count: usize,
) -> Result<Vec<f32>, String> {
    let header = recv(channel).await?;
    let word = |i: usize| {
        header
            .get(8 * i..8 * i + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
    };
    match (word(0), word(1)) {
        (Some(s), Some(n)) if s == step && n == count as u64 => {}
        (Some(s), Some(n)) => {
            return Err(format!(
                "sent {n} values for step {} where this node has {count} for step {} (are \
                 the nodes running the same configuration from the same checkpoint?)",
                s + 1,
                step + 1
            ))
        }
        _ => return Err("sent a malformed header".into()),
    }
    let mut values = Vec::with_capacity(count);
    while values.len() < count {
        let bytes = recv(channel).await?;
        if bytes.len() % 4 != 0 || values.len() + bytes.len() / 4 > count {
            return Err("sent a malformed chunk".into());
        }
        values.extend(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        );
    }
    Ok(values)
}

/// A step and the nodes' total at it, or why there is none.
type Total = (u64, Result<Arc<Vec<f32>>, String>);

/// What this node's other peers wait on.
#[derive(Default)]
struct Posted {
    /// The last step's total.
    latest: Option<Total>,
    /// Why no further total will come in this run (this node's first peer stopped).
    closed: Option<String>,
}

/// The node link shared by this node's peers: the first peer sends and receives, the others wait
/// for its result.
pub(super) struct NodeExchange {
    link: Mutex<NodeLink>,
    posted: Mutex<Posted>,
    ready: Condvar,
}

impl NodeExchange {
    /// Joins `group` (see [`NodeLink::join`]).
    pub(super) fn join(
        group: &NodeGroup,
        peers: usize,
        run: &str,
    ) -> Result<Self, DataParallelError> {
        let joined = std::panic::catch_unwind(|| NodeLink::join(group, peers, run))
            .unwrap_or_else(|_| Err("a connection ended without a goodbye".into()));
        let link = joined.map_err(|reason| {
            DataParallelError::Setup(format!("node {} joining the run: {reason}", group.rank))
        })?;
        Ok(Self {
            link: Mutex::new(link),
            posted: Mutex::new(Posted::default()),
            ready: Condvar::new(),
        })
    }

    /// A new run of the group's peers: totals may come again.
    pub(super) fn reopen(&self) {
        self.lock().closed = None;
    }

    /// No more totals in this run (this node's first peer stopped, for `reason`): the peers
    /// still waiting stop with it.
    pub(super) fn close(&self, reason: &str) {
        self.lock().closed.get_or_insert_with(|| reason.to_string());
        self.ready.notify_all();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Posted> {
        self.posted.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The sum over nodes of `summed` (the sum over this node's peers), as peer `local` of this
    /// node at step `step`.
    pub(super) fn sum<B: Backend>(
        &self,
        local: usize,
        step: u64,
        summed: Tensor<B, 1>,
    ) -> Result<Tensor<B, 1>, String> {
        let device = summed.device();
        let total = if local == 0 {
            // Whatever happens, the node's other peers get this step's outcome.
            let total = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let values = summed
                    .into_data()
                    .convert::<f32>()
                    .into_vec::<f32>()
                    .map_err(|e| format!("{e:?}"))?;
                self.link
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .sum(step, values)
                    .map(Arc::new)
            }))
            .unwrap_or_else(|panic| {
                Err(format!(
                    "panicked: {}",
                    super::panic_message(panic.as_ref())
                ))
            });
            self.lock().latest = Some((step, total.clone()));
            self.ready.notify_all();
            total?
        } else {
            let mut posted = self.lock();
            loop {
                if let Some((at, total)) = &posted.latest {
                    if *at == step {
                        break total.clone()?;
                    }
                }
                if let Some(reason) = &posted.closed {
                    return Err(reason.clone());
                }
                posted = self.ready.wait(posted).unwrap_or_else(|e| e.into_inner());
            }
        };
        Ok(Tensor::from_floats(total.as_slice(), &device))
    }
}
