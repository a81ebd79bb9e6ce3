//! `premier train --nodes 2` as two processes on this machine sharing one run folder (as nodes on
//! a shared file system do), node 1 connecting to node 0 on a loopback port: the run equals one
//! process with as many peers, a node killed mid-run stops the other with its name, both resume
//! from node 0's checkpoint, and a node that brings other settings is refused.
#![cfg(unix)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../../../tests/common/mod.rs"]
mod common;
use common::{encoded_synth_world, premier, s, sha, synth_base};

/// A loopback port nobody listens on now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// `premier train` on the synthetic world in `dir` into `out`: `steps` steps of batch 2, a
/// checkpoint and a validation every 2 steps (so the nodes step in stretches), then `extra`.
fn train_args(dir: &Path, out: &Path, steps: u64, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "train",
        "--synth-base",
        s(&synth_base()),
        "--data",
        s(&dir.join("world/train.jsonl")),
        "--cache",
        s(&dir.join("cache")),
        "--out",
        s(out),
        "--steps",
        &steps.to_string(),
        "--batch-size",
        "2",
        "--checkpoint-every",
        "2",
        "--validate-every",
        "2",
    ]
    .map(String::from)
    .to_vec();
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

/// One process with two CPU peers: the reference.
fn one_node(dir: &Path, out: &Path, steps: u64) {
    let args = train_args(dir, out, steps, &["--devices", "cpu:2"]);
    premier(&args.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
}

/// The flags that make a run node `rank` of two, one CPU peer each, node 0 on `coordinator`.
fn node_flags(rank: u32, coordinator: u16) -> Vec<String> {
    [
        "--devices",
        "cpu:1",
        "--nodes",
        "2",
        "--node-rank",
        &rank.to_string(),
        "--coordinator",
        &format!("127.0.0.1:{coordinator}"),
    ]
    .map(String::from)
    .to_vec()
}

/// A node of a two-node run (one CPU peer each) as a child process, logging into `dir`.
struct Node {
    child: Child,
    log: PathBuf,
}

impl Node {
    fn start(dir: &Path, rank: u32, coordinator: u16, train: &[String]) -> Self {
        let log = dir.join(format!("node{rank}-{}.log", free_port()));
        let file = std::fs::File::create(&log).unwrap();
        let mut args = train.to_vec();
        args.extend(node_flags(rank, coordinator));
        let child = Command::new(env!("CARGO_BIN_EXE_premier"))
            .args(args)
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .spawn()
            .unwrap();
        Self { child, log }
    }

    /// Whether it succeeded (killed after 5 minutes), and what it printed.
    fn finish(mut self) -> (bool, String) {
        let deadline = Instant::now() + Duration::from_secs(300);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        (status.is_some_and(|s| s.success()), text)
    }
}

/// Both nodes of a run, node `r` training as `train[r]` says: their outcomes and what they
/// printed.
fn two_nodes(dir: &Path, train: [Vec<String>; 2]) -> [(bool, String); 2] {
    let coordinator = free_port();
    let [node0, node1] =
        [0, 1].map(|rank| Node::start(dir, rank, coordinator, &train[rank as usize]));
    [node0.finish(), node1.finish()]
}

const WEIGHTS: [&str; 2] = ["mod_adapter.safetensors", "user_embedding.safetensors"];

/// A synthetic world encoded in a fresh folder, and the one-process run of `steps` steps in it
/// (`one-node`): the folder and the run.
fn world_and_reference(steps: u64) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    encoded_synth_world(dir.path(), 4, 3);
    let one = dir.path().join("one-node");
    one_node(dir.path(), &one, steps);
    (dir, one)
}

/// Both nodes succeeded, and their weights equal the one-process run's byte for byte (two peers'
/// sums are a + b either way).
fn assert_same_as_one_node(nodes: &[(bool, String); 2], shared: &Path, one: &Path) {
    for (rank, (ok, log)) in nodes.iter().enumerate() {
        assert!(ok, "node {rank} failed:\n{log}");
    }
    for file in WEIGHTS {
        assert_eq!(sha(&one.join(file)), sha(&shared.join(file)), "{file}");
    }
}

#[test]
fn two_nodes_on_loopback_train_as_one_node_with_as_many_peers() {
    let (dir, one) = world_and_reference(4);
    let root = dir.path();
    let shared = root.join("two-nodes");
    let args = train_args(root, &shared, 4, &[]);
    let nodes = two_nodes(root, [args.clone(), args]);
    assert_same_as_one_node(&nodes, &shared, &one);
    assert!(
        nodes[1].1.contains("node 1: 4 steps taken"),
        "{}",
        nodes[1].1
    );
    let losses = |run: &Path| -> Vec<(u64, f64)> {
        premier::train::metrics::read_metrics(&run.join("metrics.jsonl"))
            .unwrap()
            .iter()
            .map(|m| (m.report.step, m.report.loss))
            .collect()
    };
    assert_eq!(losses(&one), losses(&shared));
    assert_eq!(losses(&shared).len(), 4, "node 0 alone logs the steps");
    assert!(shared.join("validation/step-00000002.png").is_file());
    assert!(shared.join("checkpoints").is_dir());
}

#[test]
fn a_killed_node_stops_the_other_and_both_resume_from_the_checkpoint() {
    let (dir, one) = world_and_reference(10);
    let root = dir.path();

    // Node 1 is killed once node 0 has logged 3 steps: node 0 stops with node 1's name.
    let shared = root.join("two-nodes");
    let coordinator = free_port();
    let args = train_args(root, &shared, 10, &[]);
    let node0 = Node::start(root, 0, coordinator, &args);
    let mut node1 = Node::start(root, 1, coordinator, &args);
    let logged = || {
        std::fs::read_to_string(shared.join("metrics.jsonl"))
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while logged() < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        logged() >= 3,
        "node 0 logged {} steps in 2 minutes",
        logged()
    );
    node1.child.kill().unwrap();
    node1.child.wait().unwrap();
    let (ok0, log0) = node0.finish();
    assert!(!ok0, "node 0 goes on without node 1:\n{log0}");
    assert!(log0.contains("node 1"), "{log0}");
    assert!(logged() < 10, "the run stopped early");

    // Both resume from node 0's last checkpoint and end where one node does.
    let args = train_args(root, &shared, 10, &["--resume", "latest"]);
    let nodes = two_nodes(root, [args.clone(), args]);
    assert_same_as_one_node(&nodes, &shared, &one);
}

#[test]
fn a_node_with_other_settings_or_rank_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    encoded_synth_world(root, 4, 3);

    // Node 1 trains 6 steps where node 0 trains 4: node 0 refuses it at the start.
    let shared = root.join("two-nodes");
    let run = [
        train_args(root, &shared, 4, &[]),
        train_args(root, &shared, 6, &[]),
    ];
    let [(ok0, log0), (ok1, log1)] = two_nodes(root, run);
    assert!(!ok0 && !ok1, "node 0:\n{log0}\nnode 1:\n{log1}");
    assert!(log0.contains("same --nodes"), "{log0}");
    assert!(log1.contains("node 0 refused"), "{log1}");
    assert!(!shared.join("mod_adapter.safetensors").exists());

    // A rank outside the group is refused before anything runs.
    let mut args = train_args(root, &root.join("bad-rank"), 4, &[]);
    args.extend(node_flags(2, 1));
    let err = premier(&args.iter().map(String::as_str).collect::<Vec<_>>()).unwrap_err();
    assert!(
        format!("{err:#}").contains("node rank 2 is not one of 0..2"),
        "{err:#}"
    );
}
