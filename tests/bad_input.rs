//! Bad input a careful user can give (issue 13): each case must end in a typed error that names
//! the offending file, key or flag — never a panic, a silent wrong result or lost data. One test
//! per class of the issue. The classes checked inside a crate, nearer their code, are:
//! - non-finite losses and gradients stop a step before it changes anything:
//!   `premier-train/tests/stage1.rs` (`a_non_finite_*_stops_the_step_*`);
//! - the encoder cache keyed by encoder, resolution and preprocessing:
//!   `premier-train/tests/encode.rs` (`a_cache_refuses_entries_of_other_encoders_*`), and the
//!   FLUX-files scenario of `tests/commands.rs`;
//! - a checkpoint folder whose name disagrees with its state, and optimizer states of another
//!   step or length: `premier-train/tests/resume.rs`, `premier-train/tests/stage2_resume.rs`;
//! - every number of a run config named by its key: `premier-train/src/validate.rs`;
//! - data files (byte-order mark, non-UTF-8 bytes, empty datasets) named by file and line:
//!   `premier-train/tests/data.rs`;
//! - safetensors headers (overlaps, offsets, shapes, random mutations never panic):
//!   `premier-mmdit/tests/loading.rs`; adapter and user files: `premier-adapter/tests/files.rs`,
//!   `premier-users/tests/files.rs`;
//! - generation requests (α, sizes, steps): `premier-pipeline/tests/generate.rs`, flags:
//!   `tests/cli.rs`;
//! - a run killed during a checkpoint write resumes bit for bit: `tests/kill_resume.rs`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::backend::Flex;
use premier::io::{write_safetensors, HostTensor, SafetensorsFile, SaveDtype};
use premier::mmdit::{Flux, FluxConfig, LoadError};
use premier::synth::base::SynthBase;
use premier::text::{ClipTextConfig, ClipTextEncoder, T5Config, T5Encoder};
use premier::vae::{Autoencoder, AutoencoderConfig};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

mod common;
use common::{encoded_synth_world, fixture, premier, s, sha, synth_base};

type B = Flex;

/// The tests that train run one at a time: a fresh run seeds and draws from Flex's global
/// generator, and two at once would draw inside each other's seeded init (the comparisons of
/// weights below need the same init twice).
static IN_PROCESS_RUNS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// An exported and encoded synthetic world (4 training users and one new user, 4 images each)
/// and a run config file, in a folder of its own.
struct World {
    dir: tempfile::TempDir,
    train: PathBuf,
    new_users: PathBuf,
    cache: PathBuf,
    base: PathBuf,
    config: PathBuf,
}

/// The run config the runs below start from.
const RUN_TOML: &str = "batch_size = 3\nvalidation_users = 2\n[stage1]\nseed = 5\n";

impl World {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (world, cache) = encoded_synth_world(dir.path(), 4, 4);
        let config = dir.path().join("train.toml");
        std::fs::write(&config, RUN_TOML).unwrap();
        World {
            train: world.join("train.jsonl"),
            new_users: world.join("new_users.jsonl"),
            cache,
            base: synth_base(),
            config,
            dir,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write_config(&self, text: &str) {
        std::fs::write(&self.config, text).unwrap();
    }

    /// `premier train` of `steps` steps into `out`, a checkpoint every step, validation off.
    fn train(&self, out: &Path, steps: &str, extra: &[&str]) -> Result<(), String> {
        let mut args = vec![
            "train",
            "--synth-base",
            s(&self.base),
            "--data",
            s(&self.train),
            "--cache",
            s(&self.cache),
            "--out",
            s(out),
            "--config",
            s(&self.config),
            "--steps",
            steps,
            "--checkpoint-every",
            "1",
            "--validate-every",
            "0",
        ];
        args.extend_from_slice(extra);
        premier(&args).map_err(|e| format!("{e:#}"))
    }

    /// `premier cold-start` of the new user from 2 images over the finished run `run`.
    fn cold_start(&self, run: &Path, out: &Path, extra: &[&str]) -> Result<PathBuf, String> {
        let mut args = vec![
            "cold-start",
            "--synth-base",
            s(&self.base),
            "--data",
            s(&self.new_users),
            "--cache",
            s(&self.cache),
            "--run",
            s(run),
            "--images",
            "2",
            "--steps",
            "2",
            "--checkpoint-every",
            "1",
            "--out",
            s(out),
        ];
        args.extend_from_slice(extra);
        premier(&args)
            .map(|_| out.join("user_combination_new004.safetensors"))
            .map_err(|e| format!("{e:#}"))
    }

    /// `premier generate` with the synth base into `out`.
    fn generate(&self, out: &Path, extra: &[&str]) -> Result<(), String> {
        let mut args = vec![
            "generate",
            "--synth-base",
            s(&self.base),
            "--prompt",
            "a small circle on the left",
            "--out",
            s(out),
        ];
        args.extend_from_slice(extra);
        premier(&args).map_err(|e| format!("{e:#}"))
    }
}

/// Asserts that `result` failed with a message containing every one of `parts`.
fn assert_refused<T: std::fmt::Debug>(result: Result<T, String>, parts: &[&str]) {
    let message = result.unwrap_err();
    for part in parts {
        assert!(message.contains(part), "expected `{part}` in: {message}");
    }
}

#[test]
fn a_resume_that_would_change_the_model_or_the_data_is_refused_and_the_config_kept() {
    let _alone = IN_PROCESS_RUNS.lock().unwrap_or_else(|p| p.into_inner());
    let w = World::new();
    let run = w.path("run");
    w.train(&run, "2", &[]).unwrap();
    let run_config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    let checkpoints = premier::train::checkpoint::checkpoints(&run.join("checkpoints"));
    // Resuming from a damaged older checkpoint fails before the newer one is deleted.
    let optimizer = run.join("checkpoints/step-00000001/optimizer.safetensors");
    let intact = std::fs::read(&optimizer).unwrap();
    std::fs::write(&optimizer, &intact[..16]).unwrap();
    let older = run.join("checkpoints/step-00000001");
    assert_refused(
        w.train(&run, "4", &["--resume", s(&older)]),
        &["optimizer.safetensors"],
    );
    std::fs::write(&optimizer, &intact).unwrap();
    assert_refused(
        w.train(&run, "4", &["--resume", "latest", "--batch-size", "2"]),
        &["batch_size"],
    );
    w.write_config(&format!("user_tokens = 7\n{RUN_TOML}"));
    assert_refused(
        w.train(&run, "4", &["--resume", "latest"]),
        &["user_tokens"],
    );
    w.write_config(&format!("{RUN_TOML}[stage1.optimizer]\nd0 = 2e-6\n"));
    assert_refused(w.train(&run, "4", &["--resume", "latest"]), &["stage1"]);
    // Nothing was rewritten, trained or deleted.
    assert_eq!(
        std::fs::read_to_string(run.join("config.toml")).unwrap(),
        run_config
    );
    assert_eq!(
        premier::train::checkpoint::checkpoints(&run.join("checkpoints")),
        checkpoints
    );
    // A cold start resumed with another batch is refused the same way.
    w.write_config(RUN_TOML);
    let cold = w.path("cold");
    w.cold_start(&run, &cold, &[]).unwrap();
    assert_refused(
        w.cold_start(&run, &cold, &["--resume", "latest", "--batch-size", "1"]),
        &["another batch_size"],
    );
}

#[test]
fn a_folder_holding_an_earlier_run_is_kept_unless_overwrite_is_given() {
    let _alone = IN_PROCESS_RUNS.lock().unwrap_or_else(|p| p.into_inner());
    let w = World::new();
    let run = w.path("run");
    w.train(&run, "2", &[]).unwrap();
    let weights = sha(&run.join("mod_adapter.safetensors"));
    // With its checkpoints: a fresh run is pointed to `--resume latest`.
    assert_refused(w.train(&run, "2", &[]), &["--resume latest"]);
    // Without them (removed by hand), a fresh run and `--resume-or-start` are refused alike.
    std::fs::remove_dir_all(run.join("checkpoints")).unwrap();
    assert_refused(w.train(&run, "2", &[]), &["earlier run", s(&run)]);
    assert_refused(w.train(&run, "2", &["--resume-or-start"]), &["earlier run"]);
    assert_eq!(sha(&run.join("mod_adapter.safetensors")), weights);
    // `--overwrite` clears it and trains the same run again.
    w.train(&run, "2", &["--overwrite"]).unwrap();
    assert_eq!(sha(&run.join("mod_adapter.safetensors")), weights);
    // `--resume latest` with nothing to resume says so, and writes nothing.
    let empty = w.path("empty");
    assert_refused(
        w.train(&empty, "2", &["--resume", "latest"]),
        &["nothing to resume"],
    );
    // The same for a finished cold start whose checkpoints are gone.
    let cold = w.path("cold");
    let user = w.cold_start(&run, &cold, &[]).unwrap();
    let before = sha(&user);
    std::fs::remove_dir_all(cold.join("checkpoints")).unwrap();
    assert_refused(w.cold_start(&run, &cold, &[]), &["earlier cold start"]);
    assert_eq!(sha(&user), before);
}

#[test]
fn config_keys_that_do_not_exist_are_named_with_their_table_path() {
    let _alone = IN_PROCESS_RUNS.lock().unwrap_or_else(|p| p.into_inner());
    let w = World::new();
    for (text, key) in [
        ("batch_sise = 3\n", "`batch_sise`"),
        ("[stage1]\nsed = 5\n", "`stage1.sed`"),
        ("[stage1.optimizer]\nd00 = 1e-4\n", "`stage1.optimizer.d00`"),
    ] {
        w.write_config(text);
        let run = w.path("run");
        assert_refused(w.train(&run, "1", &[]), &[key, s(&w.config)]);
        assert!(!run.exists(), "a refused run writes nothing");
    }
}

#[test]
fn numbers_out_of_range_are_named_by_their_key_or_flag_before_anything_is_written() {
    let _alone = IN_PROCESS_RUNS.lock().unwrap_or_else(|p| p.into_inner());
    let w = World::new();
    let run = w.path("run");
    for (text, named) in [
        (
            "[stage1.optimizer]\nd0 = 0.0\n",
            "`stage1.optimizer.d0` = 0",
        ),
        ("user_tokens = 0\n", "user_tokens"),
    ] {
        w.write_config(text);
        assert_refused(w.train(&run, "1", &[]), &[named]);
        assert!(!run.exists(), "a refused run writes nothing");
    }
    // Generation: zero steps (noise as an image), steps no one can wait for and a size the
    // base cannot draw are refused, and the grid already there is kept.
    let gen = w.path("gen");
    w.generate(&gen, &[]).unwrap();
    let grid = sha(&gen.join("grid.png"));
    for steps in ["0", "18446744073709551615"] {
        assert_refused(
            w.generate(&gen, &["--steps", steps]),
            &[&format!("--steps {steps}: sampling takes")],
        );
    }
    assert_refused(w.generate(&gen, &["--width", "64"]), &["--width 64"]);
    assert_eq!(sha(&gen.join("grid.png")), grid);
    // The largest seed with two prompts: per-image seeds wrap instead of overflowing.
    let wrapped = w.path("wrapped");
    w.generate(
        &wrapped,
        &["--prompt", "a big square", "--seed", "18446744073709551615"],
    )
    .unwrap();
    assert!(wrapped.join("grid.png").is_file());
}

#[test]
fn a_diverging_run_stops_at_its_first_non_finite_step_and_keeps_its_last_good_checkpoint() {
    let _alone = IN_PROCESS_RUNS.lock().unwrap_or_else(|p| p.into_inner());
    let w = World::new();
    w.write_config("batch_size = 3\n[stage1.optimizer]\nlr = 1e30\n");
    let run = w.path("diverged");
    let msg = w.train(&run, "6", &[]).unwrap_err();
    assert!(
        msg.contains(": the ") && msg.contains("training stopped"),
        "{msg}"
    );
    let kept = premier::train::checkpoint::checkpoints(&run.join("checkpoints"));
    assert!(!kept.is_empty(), "the last good checkpoint is kept: {msg}");
    assert!(
        !run.join("mod_adapter.safetensors").exists(),
        "no final weights are written"
    );
}

#[test]
fn work_over_the_memory_limit_is_refused_before_anything_is_written() {
    let _alone = IN_PROCESS_RUNS.lock().unwrap_or_else(|p| p.into_inner());
    let w = World::new();
    let refused = w.path("refused");
    assert_refused(
        w.train(&refused, "2", &["--max-memory", "0.001"]),
        &["exceeds 1.0 MiB (--max-memory)"],
    );
    // A batch no machine holds: the estimate's sums saturate (they overflowed).
    assert_refused(
        w.train(&refused, "2", &["--batch-size", "18446744073709551615"]),
        &["exceeds"],
    );
    assert!(!refused.exists(), "a refused run writes nothing");
    let run = w.path("run");
    w.train(&run, "1", &[]).unwrap();
    assert_refused(
        w.cold_start(&run, &refused, &["--max-memory", "0.0001"]),
        &["exceeds 0.1 MiB (--max-memory)"],
    );
    assert!(!refused.exists(), "a refused cold start writes nothing");
}

#[test]
fn missing_inputs_are_named_with_the_file_or_flag_that_would_supply_them() {
    let _alone = IN_PROCESS_RUNS.lock().unwrap_or_else(|p| p.into_inner());
    let w = World::new();
    // A trained user without an adapter to draw it with.
    assert_refused(
        w.generate(&w.path("gen"), &["--user", "user001"]),
        &["--user user001 needs --adapter"],
    );
    // A user who is neither `base`, a row, an id of the run nor a file.
    let run = w.path("run");
    w.train(&run, "1", &[]).unwrap();
    let (adapter, table) = (
        run.join("mod_adapter.safetensors"),
        run.join("user_embedding.safetensors"),
    );
    let nobody = [
        "--adapter",
        s(&adapter),
        "--user-table",
        s(&table),
        "--user",
        "nobody",
    ];
    assert_refused(
        w.generate(&w.path("gen"), &nobody),
        &[
            "--user nobody: user `nobody`: not a user id of the run",
            "its 4 users: user000",
        ],
    );
    // A dataset whose images were never encoded into the cache given.
    let other = w.path("other");
    premier(&[
        "synth",
        "export",
        "--out",
        s(&other),
        "--seed",
        "9",
        "--train-users",
        "2",
        "--new-users",
        "0",
        "--images-per-user",
        "2",
    ])
    .unwrap();
    let msg = premier(&[
        "train",
        "--synth-base",
        s(&w.base),
        "--data",
        s(&other.join("train.jsonl")),
        "--cache",
        s(&w.cache),
        "--out",
        s(&w.path("other-run")),
        "--steps",
        "1",
    ])
    .map_err(|e| format!("{e:#}"));
    assert_refused(msg, &["premier encode", "000.png"]);
}

fn json(name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name)).unwrap()).unwrap()
}

/// Copies the safetensors file `src` to `dst` (f32) with element 0 of its first tensor (by
/// name) set to `value`; returns that tensor's name. Written with the raw `safetensors` crate,
/// since premier's own writer refuses non-finite values.
fn poisoned_copy(src: &Path, dst: &Path, value: f32) -> String {
    let file = SafetensorsFile::open(src).unwrap();
    let mut tensors: BTreeMap<String, HostTensor> = file
        .keys()
        .map(|k| (k.to_string(), file.read(k).unwrap()))
        .collect();
    let key = tensors.keys().next().unwrap().clone();
    tensors.get_mut(&key).unwrap().data[0] = value;
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(k, t)| {
            let b = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
            (k.clone(), t.shape.clone(), b)
        })
        .collect();
    let views = bytes.iter().map(|(k, shape, b)| {
        (
            k.clone(),
            TensorView::new(Dtype::F32, shape.clone(), b).unwrap(),
        )
    });
    safetensors::serialize_to_file(views, None, dst).unwrap();
    key
}

/// The error must name `path` and `key` and say why. The model crates wrap `LoadError`
/// transparently, so the message is what is checked; Flux's error is checked by type as well.
fn assert_non_finite(err: &dyn std::error::Error, path: &Path, key: &str) {
    let message = err.to_string();
    assert!(
        message.contains(&path.display().to_string())
            && message.contains(&format!("`{key}`"))
            && message.contains("NaN or infinite"),
        "expected NaN/inf in `{key}` of {}, got: {message}",
        path.display()
    );
}

#[test]
fn non_finite_weights_are_refused_by_every_model_loader() {
    let _alone = IN_PROCESS_RUNS.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let device = Default::default();
    for (i, value) in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY]
        .into_iter()
        .enumerate()
    {
        let flux_config: FluxConfig =
            serde_json::from_value(json("tiny_flux.json")["bfl_params"].clone()).unwrap();
        for name in [
            "tiny_flux_weights_bfl.safetensors",
            "tiny_flux_weights_diffusers.safetensors",
        ] {
            let path = dir.path().join(format!("{i}-{name}"));
            let key = poisoned_copy(&fixture(name), &path, value);
            let err = Flux::<B>::load(&path, &flux_config, &device).unwrap_err();
            assert_non_finite(&err, &path, &key);
            assert!(
                matches!(&err, LoadError::NonFinite { path: p, key: k } if *p == path && *k == key)
            );
        }

        let vae_config: AutoencoderConfig =
            serde_json::from_value(json("vae_tiny.json")["diffusers_config"].clone()).unwrap();
        for name in [
            "vae_tiny_weights_bfl.safetensors",
            "vae_tiny_weights_diffusers.safetensors",
        ] {
            let path = dir.path().join(format!("{i}-{name}"));
            let key = poisoned_copy(&fixture(name), &path, value);
            let err = Autoencoder::<B>::load(&path, &vae_config, &device).unwrap_err();
            assert_non_finite(&err, &path, &key);
        }

        let path = dir.path().join(format!("{i}-t5.safetensors"));
        let key = poisoned_copy(&fixture("t5_tiny_weights.safetensors"), &path, value);
        let t5_config: T5Config =
            serde_json::from_value(json("t5_tiny.json")["config"].clone()).unwrap();
        let err = T5Encoder::<B>::load(&path, &t5_config, &device).unwrap_err();
        assert_non_finite(&err, &path, &key);

        let path = dir.path().join(format!("{i}-clip.safetensors"));
        let key = poisoned_copy(&fixture("clip_text_tiny_weights.safetensors"), &path, value);
        let clip_config: ClipTextConfig =
            serde_json::from_value(json("clip_text_tiny.json")["config"].clone()).unwrap();
        let err = ClipTextEncoder::<B>::load(&path, &clip_config, &device).unwrap_err();
        assert_non_finite(&err, &path, &key);

        // The synth world's base, both of its weight files.
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/premier-synth/base");
        for poisoned in ["flux.safetensors", "text.safetensors"] {
            let base = dir.path().join(format!("{i}-base-{poisoned}"));
            std::fs::create_dir(&base).unwrap();
            for f in [
                "config.json",
                "tokenizer.json",
                "flux.safetensors",
                "text.safetensors",
            ] {
                std::fs::copy(shipped.join(f), base.join(f)).unwrap();
            }
            let path = base.join(poisoned);
            let key = poisoned_copy(&shipped.join(poisoned), &path, value);
            let err = SynthBase::<B>::load(&base, &device).unwrap_err();
            assert_non_finite(&err, &path, &key);
        }
    }
}

#[test]
fn nothing_non_finite_is_written() {
    let _alone = IN_PROCESS_RUNS.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("table.safetensors");
    let good = HostTensor {
        shape: vec![2],
        data: vec![1.0, 2.0],
    };
    let bad = HostTensor {
        shape: vec![3],
        data: vec![0.0, f32::NAN, 1.0],
    };
    for dtype in [SaveDtype::F32, SaveDtype::Bf16] {
        let err = write_safetensors(
            &path,
            &[("good".into(), good.clone()), ("emb".into(), bad.clone())],
            dtype,
        )
        .unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, LoadError::Write { .. }), "{message}");
        assert!(
            message.contains("`emb`") && message.contains("NaN"),
            "{message}"
        );
        assert!(!path.exists(), "a refused write left {}", path.display());
    }
    // The same call with finite values writes the file.
    write_safetensors(&path, &[("good".into(), good)], SaveDtype::F32).unwrap();
    assert!(path.exists());
}
