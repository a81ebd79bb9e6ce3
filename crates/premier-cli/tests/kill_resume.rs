//! `premier train` killed with SIGKILL at several moments (during a checkpoint write, after 2 and
//! after 5 steps), and `premier cold-start` killed after 3 steps, resumed end with the same
//! weights, bit for bit, as runs never killed.
#![cfg(unix)]

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../../../tests/common/mod.rs"]
mod common;
use common::{encoded_synth_world, premier, s, sha, synth_base};

/// Lines of `metrics.jsonl` (steps logged) in a run folder.
fn logged_steps(run: &Path) -> usize {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// Whether a checkpoint is being written (its temporary folder exists).
fn writing_checkpoint(run: &Path) -> bool {
    std::fs::read_dir(run.join("checkpoints"))
        .map(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().contains(".tmp"))
        })
        .unwrap_or(false)
}

/// Both tests run `premier` in this process too, and a fresh run seeds and draws from Flex's
/// global generator: run at once, one test's draws would land inside the other's seeded init.
static IN_PROCESS_RUNS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `args` as a child process and kills it (SIGKILL) once `now` says so; its exit status.
fn run_and_kill(args: &[String], now: impl Fn() -> bool) -> std::process::ExitStatus {
    let mut child = Command::new(env!("CARGO_BIN_EXE_premier"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if now() || Instant::now() > deadline {
            child.kill().unwrap();
            return child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_killed_cold_start_resumes_to_the_user_of_one_never_killed() {
    let _alone = IN_PROCESS_RUNS.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let (world, cache) = encoded_synth_world(dir.path(), 4, 3);
    let base = synth_base();
    let run = dir.path().join("run");
    let train = world.join("train.jsonl");
    premier(&[
        "train",
        "--synth-base",
        s(&base),
        "--data",
        s(&train),
        "--cache",
        s(&cache),
        "--out",
        s(&run),
        "--steps",
        "2",
        "--validate-every",
        "0",
        "--batch-size",
        "2",
    ])
    .unwrap();
    let new_users = world.join("new_users.jsonl");
    let args = |out: &Path| -> Vec<String> {
        [
            "cold-start",
            "--synth-base",
            s(&base),
            "--data",
            s(&new_users),
            "--cache",
            s(&cache),
            "--run",
            s(&run),
            "--steps",
            "30",
            "--checkpoint-every",
            "1",
            "--out",
            s(out),
            "--resume-or-start",
        ]
        .map(String::from)
        .to_vec()
    };
    let straight = dir.path().join("straight");
    premier(
        &args(&straight)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let user_file = |out: &Path| {
        std::fs::read_dir(out)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .unwrap()
    };
    let metrics = |out: &Path| {
        std::fs::read_dir(out)
            .into_iter()
            .flatten()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with("metrics_"))
            .and_then(|e| std::fs::read_to_string(e.path()).ok())
            .map_or(0, |t| t.lines().count())
    };
    let killed = dir.path().join("killed");
    let status = run_and_kill(&args(&killed), || metrics(&killed) >= 3);
    assert_eq!(status.signal(), Some(9), "{status:?}");
    premier(&args(&killed).iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
    assert_eq!(sha(&user_file(&killed)), sha(&user_file(&straight)));
    assert_eq!(metrics(&killed), 30, "every step logged once");
}

#[test]
fn a_killed_run_resumes_to_the_weights_of_a_run_never_killed() {
    let _alone = IN_PROCESS_RUNS.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let (world, cache) = encoded_synth_world(dir.path(), 4, 3);
    let base = synth_base();
    let train = world.join("train.jsonl");
    let args = |out: &Path| -> Vec<String> {
        [
            "train",
            "--synth-base",
            s(&base),
            "--data",
            s(&train),
            "--cache",
            s(&cache),
            "--out",
            s(out),
            "--steps",
            "8",
            "--checkpoint-every",
            "1",
            "--validate-every",
            "0",
            "--batch-size",
            "2",
            "--resume-or-start",
        ]
        .map(String::from)
        .to_vec()
    };
    let straight = dir.path().join("straight");
    let straight_args = args(&straight);
    premier(&straight_args.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();

    type Moment = (&'static str, fn(&Path) -> bool);
    let moments: [Moment; 3] = [
        ("during a checkpoint write", writing_checkpoint),
        ("after 2 steps", |run| logged_steps(run) >= 2),
        ("after 5 steps", |run| logged_steps(run) >= 5),
    ];
    for (i, (moment, now)) in moments.into_iter().enumerate() {
        let run = dir.path().join(format!("killed-{i}"));
        let status = run_and_kill(&args(&run), || now(&run));
        // The step-counted moments come long before the run's end; a checkpoint write is brief
        // and may be missed, then the run is killed or ends on its own.
        eprintln!("{moment}: {status:?}");
        if i > 0 {
            assert_eq!(status.signal(), Some(9), "{moment}: {status:?}");
        }
        let resume = args(&run);
        premier(&resume.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
        for file in ["mod_adapter.safetensors", "user_embedding.safetensors"] {
            assert_eq!(
                sha(&run.join(file)),
                sha(&straight.join(file)),
                "{moment}: {file}"
            );
        }
        let metrics = premier::train::metrics::read_metrics(&run.join("metrics.jsonl")).unwrap();
        let steps: Vec<u64> = metrics.iter().map(|m| m.report.step).collect();
        assert_eq!(steps, (1..=8).collect::<Vec<_>>(), "{moment}");
        assert!(
            !writing_checkpoint(&run),
            "{moment}: a temporary folder is left"
        );
    }
}
