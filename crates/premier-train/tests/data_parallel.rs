//! Data-parallel stage 1 on several Flex peers against one device with the same global batch:
//! the same parameters, losses and Prodigy d after several steps, for both dispersion scopes, and
//! a failing peer that stops the others instead of hanging them.
#![cfg(feature = "collective")]

use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use burn::tensor::Distribution;
use premier_adapter::{AdapterConfig, PreferenceAdapter};
use premier_losses::DispersionVariant;
use premier_mmdit::{Flux, FluxConfig};
use premier_train::data_parallel::{DataParallelError, DispersionScope, PeerGroup};
use premier_train::params::flat_values;
use premier_train::prodigy::ProdigyConfig;
use premier_train::stage1::{
    Stage1Batch, Stage1Config, Stage1Model, Stage1Trainer, StepReport, TrainError,
};
use premier_users::{UserShape, UserTable};

type AB = Autodiff<Flex>;

/// burn's seed is one RNG for the process, and burn-collective's local server is one per
/// process and backend: the tests here take turns.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

const ROWS: usize = 6;

fn trainer(dispersion: Option<DispersionVariant>) -> (Stage1Trainer<AB>, Stage1Batch<AB>) {
    let device = Default::default();
    <AB as Backend>::seed(&device, 23);
    let normal = Distribution::Normal(0.0, 1.0);
    let flux = Flux::<AB>::init(&FluxConfig::tiny(), &device).unwrap();
    let adapter =
        PreferenceAdapter::<AB>::init(&AdapterConfig::small(16, 6, 16, 2), &device).unwrap();
    let users = UserTable::<AB>::init(
        UserShape {
            users: ROWS,
            tokens: 3,
            dim: 6,
        },
        &device,
    );
    let batch = Stage1Batch {
        x0: Tensor::random([ROWS, 4, 8], normal, &device),
        latent_hw: (4, 4),
        text: Tensor::random([ROWS, 5, 16], normal, &device),
        pooled: Tensor::random([ROWS, 12], normal, &device),
        users: (0..ROWS).collect(),
        null_text: Some(Tensor::random([1, 5, 16], normal, &device)),
    };
    let config = Stage1Config {
        dispersion,
        optimizer: ProdigyConfig {
            d0: 1e-3,
            ..ProdigyConfig::premier()
        },
        clip_norm: Some(0.5),
        ..Stage1Config::default()
    };
    let model = Stage1Model { adapter, users };
    (Stage1Trainer::new(flux, model, config), batch)
}

fn values(trainer: &Stage1Trainer<AB>) -> Vec<f32> {
    flat_values(&trainer.model)
        .into_iter()
        .flat_map(|v| v.into_data().into_vec::<f32>().unwrap())
        .collect()
}

/// `steps` steps of `trainer` on `peers` Flex peers, every step on `batch`: peer 0's trainer
/// and reports.
fn on_peers(
    trainer: Stage1Trainer<AB>,
    peers: usize,
    scope: DispersionScope,
    steps: u64,
    batch: &Stage1Batch<AB>,
) -> (Stage1Trainer<AB>, Vec<StepReport>) {
    let mut reports = Vec::new();
    let trainer = PeerGroup::new(vec![Default::default(); peers], scope)
        .unwrap()
        .run(
            trainer,
            steps,
            |_, _| Ok(batch.clone()),
            |r| reports.push(r.clone()),
        )
        .unwrap();
    (trainer, reports)
}

/// max |a − b| / max |a|.
fn relative_gap(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let gap = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    let scale = a.iter().map(|x| x.abs()).fold(0.0, f32::max);
    gap / scale
}

/// A step's reported numbers, by name: losses and gradient norm first, then d and Δ/y.
fn parts(r: &StepReport) -> [(&'static str, f64); 7] {
    [
        ("loss", r.loss),
        ("flow", r.flow),
        ("dispersion shared", r.dispersion_shared),
        ("dispersion distinct", r.dispersion_distinct),
        ("grad_norm", r.grad_norm),
        ("d", r.d),
        ("delta_to_y", r.delta_to_y),
    ]
}

fn close(x: f64, y: f64) -> bool {
    (x - y).abs() <= 1e-5 * x.abs().max(y.abs()).max(1e-12)
}

#[test]
fn peers_step_as_one_device_on_the_same_global_batch() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // Four steps without dispersion and with the library's default (the bounded hinge); one with
    // the paper's L2, which runs away: its growth amplifies any change in the order of float
    // additions, so that one device and the same device's own row split (`with_workers`) are
    // already 1.1e-5 apart after 2 steps here (measured), as the peers are.
    let hinge = Stage1Config::default().dispersion;
    for (dispersion, steps) in [(None, 4), (hinge, 4), (Some(DispersionVariant::Stable), 1)] {
        let (mut single, batch) = trainer(dispersion);
        let start = values(&single);
        let one: Vec<StepReport> = (0..steps).map(|_| single.step(&batch).unwrap()).collect();
        if dispersion == Some(DispersionVariant::Stable) {
            assert!(one[0].dispersion_shared != 0.0, "the dispersion is active");
        }
        // 6 rows: equal blocks for 2 and 3 peers, blocks of 1, 2, 1, 2 rows for 4.
        for peers in [2, 3, 4] {
            let (fresh, batch) = trainer(dispersion);
            assert_eq!(values(&fresh), start, "the setup is seeded");
            let (parallel, reports) =
                on_peers(fresh, peers, DispersionScope::Global, steps, &batch);
            let case = format!("{peers} peers, dispersion {dispersion:?}");
            assert_eq!(parallel.step, steps, "{case}");
            let gap = relative_gap(&values(&single), &values(&parallel));
            assert!(
                gap <= 1e-6,
                "{case}: parameters differ by {gap:e} (relative)"
            );
            assert_ne!(values(&parallel), start, "{case}: the parameters moved");
            assert_eq!(reports.len(), one.len(), "{case}");
            for (a, b) in one.iter().zip(&reports) {
                for ((name, x), (_, y)) in parts(a).into_iter().zip(parts(b)) {
                    assert!(close(x, y), "{case}, step {}: {name} {x} vs {y}", a.step);
                }
            }
        }
    }
}

#[test]
fn a_trainer_that_has_taken_steps_continues_on_several_peers() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let hinge = Stage1Config::default().dispersion;
    let (mut single, batch) = trainer(hinge);
    let (mut resumed, _) = trainer(hinge);
    for _ in 0..2 {
        single.step(&batch).unwrap();
        resumed.step(&batch).unwrap();
    }
    let (parallel, reports) = on_peers(resumed, 3, DispersionScope::Global, 2, &batch);
    let last = (0..2).map(|_| single.step(&batch).unwrap()).last().unwrap();
    assert_eq!(parallel.step, 4);
    assert_eq!(reports.last().unwrap().step, 4);
    let gap = relative_gap(&values(&single), &values(&parallel));
    assert!(gap <= 1e-6, "parameters differ by {gap:e} (relative)");
    let (a, b) = (last, reports.last().unwrap());
    assert!(close(a.d, b.d), "Prodigy's d {} vs {}", a.d, b.d);
    assert!(close(a.loss, b.loss), "loss {} vs {}", a.loss, b.loss);
}

#[test]
fn local_dispersion_contrasts_each_peers_own_users() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (fresh, batch) = trainer(Some(DispersionVariant::Stable));
    let (local, reports) = on_peers(fresh, 2, DispersionScope::Local, 1, &batch);
    // Reference: one device accumulating the two halves as micro-batches with the same noise
    // and times, which is the local objective (the halves' mean flow loss is the batch's; each
    // half's dispersion contrasts its own users, and the two are averaged).
    let (mut reference, batch) = trainer(Some(DispersionVariant::Stable));
    let (noise, t) = premier_train::stage1::step_noise(
        reference.config.seed,
        0,
        &reference.config.timesteps,
        batch.x0.dims(),
        &batch.x0.device(),
    );
    let halves: Vec<_> = [0..ROWS / 2, ROWS / 2..ROWS]
        .into_iter()
        .map(|rows| {
            (
                batch.rows(rows.clone()),
                noise.clone().slice(rows.clone()),
                t.clone().slice(rows),
            )
        })
        .collect();
    let expected = reference
        .step_accumulated_with(
            halves
                .iter()
                .map(|(b, n, t)| (b, n.clone(), t.clone()))
                .collect(),
        )
        .unwrap();
    // The step's losses and gradient norm (the first five parts).
    for ((name, x), (_, y)) in parts(&reports[0]).into_iter().zip(parts(&expected)).take(5) {
        assert!(close(x, y), "{name} {x} vs {y}");
    }
    let gap = relative_gap(&values(&reference), &values(&local));
    assert!(gap <= 1e-6, "parameters differ by {gap:e} (relative)");
    // And it is not the global scope's step.
    let (fresh, batch) = trainer(Some(DispersionVariant::Stable));
    let (_, global) = on_peers(fresh, 2, DispersionScope::Global, 1, &batch);
    assert!(!close(
        reports[0].dispersion_shared,
        global[0].dispersion_shared
    ));
}

/// Runs `f` on its own thread and fails, instead of hanging, when it takes over a minute (a
/// deadlock among the peers).
fn within_a_minute<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (done, wait) = std::sync::mpsc::channel();
    std::thread::spawn(move || done.send(f()).ok());
    wait.recv_timeout(std::time::Duration::from_secs(60))
        .expect("the peers finished within a minute")
}

#[test]
fn a_failing_or_panicking_peer_stops_every_peer_at_that_step() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // Step 2's batch names a user the table does not have, in the last row, which only peer 1
    // looks up (no dispersion, so peer 0 does not look up the whole batch).
    let (fresh, batch) = trainer(None);
    let bad = Stage1Batch {
        users: (0..ROWS)
            .map(|u| if u == ROWS - 1 { 99 } else { u })
            .collect(),
        ..batch.clone()
    };
    let (err, steps) = within_a_minute(move || {
        let mut steps = 0;
        let err = PeerGroup::new(vec![Default::default(); 2], DispersionScope::Global)
            .unwrap()
            .run(
                fresh,
                3,
                |_, step| {
                    if step == 1 {
                        Ok(bad.clone())
                    } else {
                        Ok(batch.clone())
                    }
                },
                |_| steps += 1,
            )
            .err()
            .expect("the run stops");
        (err, steps)
    });
    assert_eq!(steps, 1, "one step was taken before the failure");
    match &err {
        DataParallelError::Train { peer, .. } => assert_eq!(*peer, 1, "{err}"),
        other => panic!("expected the failing peer's error, got {other}"),
    }
    assert!(err.to_string().contains("99"), "{err}");

    // A panic in one peer's batch at step 2 stops both peers there too.
    let (fresh, batch) = trainer(None);
    let err = within_a_minute(move || {
        let peer_device = std::sync::atomic::AtomicUsize::new(0);
        PeerGroup::new(vec![Default::default(); 2], DispersionScope::Global)
            .unwrap()
            .run(
                fresh,
                3,
                move |_, step| {
                    // The second call at step 1 (whichever peer makes it) panics.
                    if step == 1
                        && peer_device.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 1
                    {
                        panic!("no batch for this peer");
                    }
                    Ok(batch.clone())
                },
                |_| {},
            )
            .err()
            .expect("the run stops")
    });
    assert!(err.to_string().contains("no batch for this peer"), "{err}");

    // A batch that cannot be made (a cache read failing, say) stops both peers with its reason.
    let group = || PeerGroup::new(vec![Default::default(); 2], DispersionScope::Global).unwrap();
    stops_at_an_unreadable_batch(group, 2);
}

/// A fresh trainer run for 3 steps on `group()`, where step `at`'s batch cannot be read, stops
/// (within a minute) with the batch's reason.
fn stops_at_an_unreadable_batch(group: impl FnOnce() -> PeerGroup<AB> + Send + 'static, at: u64) {
    let (fresh, batch) = trainer(None);
    let err = within_a_minute(move || {
        group()
            .run(
                fresh,
                3,
                move |_, step| {
                    if step == at {
                        return Err(TrainError::Batch("shard-0003 cannot be read".into()));
                    }
                    Ok(batch.clone())
                },
                |_| {},
            )
            .err()
            .expect("the run stops")
    });
    assert!(
        err.to_string().contains("shard-0003 cannot be read"),
        "{err}"
    );
}

/// A group of one node (its own coordinator on a loopback port, no other node to wait for) runs
/// every step's sum through the node exchange: with 2 peers it steps as the group without it, bit
/// for bit, and a failing peer still stops both at its step (the second, waiting on the first
/// peer's total, is not left waiting). Two peers, because burn-collective's tree adds three or more
/// in the order they arrive: two runs of the same 3-peer group differ by up to 1e-7 (measured).
#[test]
fn the_node_exchange_adds_nothing_on_one_node_and_passes_failures_on() {
    use premier_train::data_parallel::NodeGroup;
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let one_node = move || {
        let nodes = NodeGroup {
            nodes: 1,
            rank: 0,
            coordinator: format!("127.0.0.1:{port}"),
        };
        PeerGroup::<AB>::across_nodes(
            vec![Default::default(); 2],
            DispersionScope::Global,
            nodes,
            "test".into(),
        )
        .unwrap()
    };
    let (fresh, batch) = trainer(None);
    let (plain, _) = on_peers(fresh, 2, DispersionScope::Global, 2, &batch);
    let (fresh, batch) = trainer(None);
    let through_nodes = within_a_minute(move || {
        one_node()
            .run(fresh, 2, |_, _| Ok(batch.clone()), |_| {})
            .unwrap()
    });
    assert_eq!(values(&plain), values(&through_nodes));
    stops_at_an_unreadable_batch(one_node, 1);
}

/// Four users with two samples each, encoded in memory for `FluxConfig::tiny` (latents
/// `[2, 4, 4]`, 5 text tokens of 16, pooled 12), and the empty prompt.
fn samples_in_memory() -> premier_train::samples::EncodedUsers {
    use premier_io::HostTensor;
    use premier_train::cache::{CachedLatent, CachedText};
    use premier_train::samples::{EncodedSample, EncodedUsers};
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let mut host = |shape: Vec<usize>, scale: f32| HostTensor {
        data: (0..shape.iter().product::<usize>())
            .map(|_| rng.random_range(-1.0..1.0) * scale)
            .collect(),
        shape,
    };
    let text = |host: &mut dyn FnMut(Vec<usize>, f32) -> HostTensor| CachedText {
        tokens: host(vec![5, 16], 1.0),
        pooled: host(vec![12], 1.0),
    };
    let null = text(&mut host);
    let samples = (0..4)
        .map(|_| {
            (0..2)
                .map(|_| EncodedSample {
                    latent: CachedLatent {
                        mean: host(vec![2, 4, 4], 1.0),
                        logvar: host(vec![2, 4, 4], 0.5),
                    },
                    text: text(&mut host),
                })
                .collect()
        })
        .collect();
    EncodedUsers {
        ids: ["ann", "ben", "cy", "dee"].map(String::from).to_vec(),
        samples,
        captions: [(String::new(), null)].into(),
        origin: "random samples".into(),
    }
}

fn run_config(steps: u64) -> premier_train::run::TrainConfig {
    premier_train::run::TrainConfig {
        steps,
        batch_size: 4,
        checkpoint_every: 2,
        keep_checkpoints: 3,
        validate_every: 0,
        user_tokens: 3,
        user_dim: 6,
        adapter_width: 0,
        adapter_heads: 2,
        adapter_layers: 2,
        stage1: Stage1Config {
            optimizer: ProdigyConfig {
                d0: 1e-3,
                ..ProdigyConfig::premier()
            },
            ..Stage1Config::default()
        },
        ..Default::default()
    }
}

/// A whole run (`run::train_stage1_on`) on `stepping` into `out`: its trainer.
fn whole_run(
    stepping: premier_train::run::Stepping<AB>,
    config: &premier_train::run::TrainConfig,
    out: &std::path::Path,
    start: premier_train::run::Start,
) -> Result<Stage1Trainer<AB>, premier_train::run::RunError> {
    let device = Default::default();
    <AB as Backend>::seed(&device, 23);
    let flux = Flux::<AB>::init(&FluxConfig::tiny(), &device).unwrap();
    let mut data = samples_in_memory();
    premier_train::run::train_stage1_on(
        stepping,
        flux,
        &mut data,
        config,
        out,
        start,
        &mut (),
        &device,
    )
    .map(|(trainer, _)| trainer)
}

fn losses(out: &std::path::Path) -> Vec<f64> {
    premier_train::metrics::read_metrics(&out.join("metrics.jsonl"))
        .unwrap()
        .iter()
        .map(|r| r.report.loss)
        .collect()
}

#[test]
fn a_whole_run_on_peers_equals_the_run_on_one_device_and_resumes_on_either() {
    use premier_train::run::{RunError, Start, Stepping};
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let peers = || Stepping::Peers {
        devices: vec![Default::default(); 2],
        scope: DispersionScope::Global,
        nodes: None,
    };
    let config = run_config(4);
    let one = whole_run(
        Stepping::OneDevice,
        &config,
        &dir.path().join("one"),
        Start::Fresh,
    )
    .unwrap();
    let two = whole_run(peers(), &config, &dir.path().join("two"), Start::Fresh).unwrap();
    assert_eq!(two.step, 4);
    let gap = relative_gap(&values(&one), &values(&two));
    assert!(gap <= 1e-6, "parameters differ by {gap:e} (relative)");
    let (a, b) = (
        losses(&dir.path().join("one")),
        losses(&dir.path().join("two")),
    );
    assert_eq!(a.len(), 4, "a metrics line per step");
    assert!(
        a.iter().zip(&b).all(|(x, y)| close(*x, *y)),
        "{a:?} vs {b:?}"
    );
    assert!(dir.path().join("two/mod_adapter.safetensors").is_file());

    // Two steps on two peers, then the rest on one device from their checkpoint: the straight
    // one-device run.
    let split = dir.path().join("split");
    whole_run(peers(), &run_config(2), &split, Start::Fresh).unwrap();
    let resumed = whole_run(Stepping::OneDevice, &config, &split, Start::Latest).unwrap();
    assert_eq!(resumed.step, 4);
    let gap = relative_gap(&values(&one), &values(&resumed));
    assert!(
        gap <= 1e-6,
        "resumed parameters differ by {gap:e} (relative)"
    );

    // Accumulation is the one device's way to a large batch; peers split the batch instead.
    let accumulating = premier_train::run::TrainConfig {
        grad_accum: 2,
        ..run_config(2)
    };
    let err = whole_run(
        peers(),
        &accumulating,
        &dir.path().join("accum"),
        Start::Fresh,
    )
    .err()
    .expect("refused");
    assert!(
        matches!(&err, RunError::Config(m) if m.contains("grad_accum")),
        "{err}"
    );
}
