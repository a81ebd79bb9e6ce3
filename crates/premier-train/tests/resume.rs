//! Checkpoints that really resume: N steps + checkpoint + N steps after loading equals 2N steps
//! straight, bit for bit; an interrupted write leaves the previous checkpoint loadable; only the
//! newest K are kept.

use burn::prelude::*;
use burn::tensor::Distribution;
use premier_adapter::{AdapterConfig, PreferenceAdapter};
use premier_mmdit::{Flux, FluxConfig};
use premier_train::checkpoint::{
    checkpoints, latest_checkpoint, load_stage1, read_stage1_state, save_stage1,
};
use premier_train::prodigy::ProdigyConfig;
use premier_train::stage1::{Stage1Batch, Stage1Config, Stage1Model, Stage1Trainer};
use premier_users::{UserShape, UserTable};

mod common;
use common::{bits, edit_tensor, AB};

fn adapter_config() -> AdapterConfig {
    AdapterConfig::small(16, 6, 16, 2)
}

/// Tests run in parallel and share the backend's global RNG: build under a lock so that two
/// calls draw the same initial weights.
static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn fresh() -> (Stage1Trainer<AB>, Stage1Batch<AB>) {
    let _guard = INIT.lock().unwrap_or_else(|e| e.into_inner());
    let device = Default::default();
    <AB as Backend>::seed(&device, 31);
    let normal = Distribution::Normal(0.0, 1.0);
    let flux_config = FluxConfig::tiny();
    let flux = Flux::<AB>::init(&flux_config, &device).unwrap();
    let adapter = PreferenceAdapter::<AB>::init(&adapter_config(), &device).unwrap();
    let users = UserTable::<AB>::init(
        UserShape {
            users: 4,
            tokens: 3,
            dim: 6,
        },
        &device,
    );
    let batch = Stage1Batch {
        x0: Tensor::random([2, 4, 8], normal, &device),
        latent_hw: (4, 4),
        text: Tensor::random([2, 5, 16], normal, &device),
        pooled: Tensor::random([2, 12], normal, &device),
        users: vec![1, 2],
        null_text: Some(Tensor::random([1, 5, 16], normal, &device)),
    };
    let config = Stage1Config {
        optimizer: ProdigyConfig {
            d0: 1e-3,
            ..ProdigyConfig::premier()
        },
        seed: 5,
        ..Stage1Config::default()
    };
    (
        Stage1Trainer::new(flux, Stage1Model { adapter, users }, config),
        batch,
    )
}

#[test]
fn resumed_run_equals_straight_run_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let (mut straight, batch) = fresh();
    for _ in 0..6 {
        straight.step(&batch).unwrap();
    }

    let (mut first, batch) = fresh();
    for _ in 0..3 {
        first.step(&batch).unwrap();
    }
    let saved = save_stage1(&first, &adapter_config(), None, dir.path(), 2).unwrap();
    assert!(saved.ends_with("step-00000003"));
    let flux = first.flux.clone();
    drop(first);
    let mut resumed = load_stage1::<AB>(
        &latest_checkpoint(dir.path()).unwrap(),
        flux,
        &Default::default(),
    )
    .unwrap();
    assert_eq!(resumed.step, 3);
    for _ in 0..3 {
        resumed.step(&batch).unwrap();
    }
    assert_eq!(resumed.step, 6);
    assert_eq!(
        resumed.optimizer.d().to_bits(),
        straight.optimizer.d().to_bits()
    );
    let (a, b) = (bits(&resumed.model), bits(&straight.model));
    let differing = a.iter().zip(&b).filter(|(x, y)| x != y).count();
    assert_eq!(
        differing,
        0,
        "{differing} of {} resumed parameters differ",
        a.len()
    );
}

#[test]
fn interrupted_writes_are_ignored_and_old_checkpoints_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let (mut trainer, batch) = fresh();
    for _ in 0..3 {
        trainer.step(&batch).unwrap();
        save_stage1(&trainer, &adapter_config(), None, dir.path(), 2).unwrap();
    }
    let steps: Vec<u64> = checkpoints(dir.path())
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(steps, vec![2, 3], "keep the newest two");

    // A write that died half-way: a temporary folder with a truncated adapter and no state.json.
    let partial = dir.path().join(".step-00000004.tmp-999");
    std::fs::create_dir(&partial).unwrap();
    std::fs::write(partial.join("mod_adapter.safetensors"), b"\x10\x00\x00").unwrap();
    let latest = latest_checkpoint(dir.path()).unwrap();
    assert!(latest.ends_with("step-00000003"));
    let resumed = load_stage1::<AB>(&latest, trainer.flux.clone(), &Default::default()).unwrap();
    assert_eq!(bits(&resumed.model), bits(&trainer.model));

    // An optimizer file copied in from another checkpoint (the same shapes) is refused, naming
    // the file (its fingerprint differs from the one state.json recorded).
    let step2 = dir.path().join("step-00000002");
    let kept_optimizer = std::fs::read(latest.join("optimizer.safetensors")).unwrap();
    std::fs::copy(
        step2.join("optimizer.safetensors"),
        latest.join("optimizer.safetensors"),
    )
    .unwrap();
    let err = load_stage1::<AB>(&latest, trainer.flux.clone(), &Default::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("step-00000003/optimizer.safetensors")
            && err.contains("not the file this checkpoint was written with"),
        "{err}"
    );

    std::fs::write(latest.join("optimizer.safetensors"), kept_optimizer).unwrap();
    // So is an adapter or a table copied in from another checkpoint, which no shape betrays.
    for file in ["mod_adapter.safetensors", "user_embedding.safetensors"] {
        let kept = std::fs::read(latest.join(file)).unwrap();
        std::fs::copy(step2.join(file), latest.join(file)).unwrap();
        let err = load_stage1::<AB>(&latest, trainer.flux.clone(), &Default::default())
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains(&format!("step-00000003/{file}"))
                && err.contains("not the file this checkpoint was written with"),
            "{err}"
        );
        std::fs::write(latest.join(file), kept).unwrap();
    }

    // A damaged checkpoint is an error naming the file, not a panic.
    std::fs::write(latest.join("optimizer.safetensors"), b"garbage").unwrap();
    let err = load_stage1::<AB>(&latest, trainer.flux.clone(), &Default::default())
        .err()
        .unwrap();
    assert!(err.to_string().contains("optimizer.safetensors"), "{err}");

    // The next checkpoint written removes the dead write's folder.
    trainer.step(&batch).unwrap();
    save_stage1(&trainer, &adapter_config(), None, dir.path(), 2).unwrap();
    assert!(!partial.exists(), "the abandoned temporary folder is left");
}

#[test]
fn a_checkpoint_whose_folder_disagrees_with_its_state_is_refused_and_nothing_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (mut trainer, batch) = fresh();
    for _ in 0..2 {
        trainer.step(&batch).unwrap();
        save_stage1(&trainer, &adapter_config(), None, dir.path(), 3).unwrap();
    }
    // Step 1's checkpoint renamed as if it were step 9: the name says newest, the state step 1.
    let renamed = dir.path().join("step-00000009");
    std::fs::rename(dir.path().join("step-00000001"), &renamed).unwrap();
    let latest = latest_checkpoint(dir.path()).unwrap();
    assert_eq!(latest, renamed);
    let err = read_stage1_state(&latest).unwrap_err().to_string();
    assert!(
        err.contains("named for step 9") && err.contains("step 1"),
        "{err}"
    );
    let err = load_stage1::<AB>(&latest, trainer.flux.clone(), &Default::default())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("named for step 9"), "{err}");
    let steps: Vec<u64> = checkpoints(dir.path())
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(steps, vec![2, 9], "nothing deleted");
}

#[test]
fn an_optimizer_state_that_does_not_fit_the_checkpoint_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut trainer, batch) = fresh();
    trainer.step(&batch).unwrap();
    save_stage1(&trainer, &adapter_config(), None, dir.path(), 3).unwrap();
    let checkpoint = dir.path().join("step-00000001");
    let flux = trainer.flux.clone();
    let load = || {
        load_stage1::<AB>(&checkpoint, flux.clone(), &Default::default())
            .err()
            .map(|e| e.to_string())
    };
    assert_eq!(load(), None);
    // An optimizer that has taken more steps than the checkpoint.
    let state_path = checkpoint.join("state.json");
    let state = std::fs::read_to_string(&state_path).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&state).unwrap();
    json["prodigy"]["k"] = serde_json::json!(5);
    std::fs::write(&state_path, json.to_string()).unwrap();
    let err = load().expect("refused");
    assert!(
        err.contains("taken 5 steps") && err.contains("step 1"),
        "{err}"
    );
    std::fs::write(&state_path, &state).unwrap();
    // The state is read by name: parameters listed in another order (as a model whose
    // modules are visited in another order would save them) get each its own state.
    let mut json: serde_json::Value = serde_json::from_str(&state).unwrap();
    let names = json["param_names"].as_array().unwrap().clone();
    assert_eq!(names.len(), json["params"].as_array().unwrap().len());
    assert_eq!(names[0], "adapter.net.text_proj_in.weight", "{names:?}");
    for list in ["param_names", "params"] {
        json[list].as_array_mut().unwrap().reverse();
    }
    std::fs::write(&state_path, json.to_string()).unwrap();
    let reordered = load_stage1::<AB>(&checkpoint, flux.clone(), &Default::default()).unwrap();
    std::fs::write(&state_path, &state).unwrap();
    let original = load_stage1::<AB>(&checkpoint, flux.clone(), &Default::default()).unwrap();
    assert_eq!(
        reordered.optimizer.state(),
        original.optimizer.state(),
        "the same state per parameter"
    );
    // A checkpoint written before names were recorded (keys by position, no `param_names`)
    // still loads, to the same state.
    let legacy = tempfile::tempdir().unwrap();
    let old = legacy.path().join("step-00000001");
    std::fs::create_dir_all(&old).unwrap();
    for f in ["mod_adapter.safetensors", "user_embedding.safetensors"] {
        std::fs::copy(checkpoint.join(f), old.join(f)).unwrap();
    }
    let names: Vec<String> = serde_json::from_value(names.into()).unwrap();
    let file =
        premier_io::SafetensorsFile::open(&checkpoint.join("optimizer.safetensors")).unwrap();
    let by_position: Vec<(String, premier_io::HostTensor)> = file
        .keys()
        .map(|k| {
            // `{name}.{part}`, the name being the longest that prefixes the key.
            let (i, name) = names
                .iter()
                .enumerate()
                .filter(|(_, n)| k.starts_with(&format!("{n}.")))
                .max_by_key(|(_, n)| n.len())
                .unwrap();
            (
                format!("{i}.{}", &k[name.len() + 1..]),
                file.read(k).unwrap(),
            )
        })
        .collect();
    premier_io::write_safetensors(
        &old.join("optimizer.safetensors"),
        &by_position,
        premier_io::SaveDtype::F32,
    )
    .unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&state).unwrap();
    json.as_object_mut().unwrap().remove("param_names");
    json.as_object_mut().unwrap().remove("files");
    std::fs::write(old.join("state.json"), json.to_string()).unwrap();
    let from_legacy = load_stage1::<AB>(&old, flux.clone(), &Default::default()).unwrap();
    assert_eq!(from_legacy.optimizer.state(), original.optimizer.state());
    // A name the model does not have is refused, naming it.
    let renamed = state.replace(
        "adapter.net.text_proj_in.weight",
        "adapter.net.text_proj_in.weight2",
    );
    std::fs::write(&state_path, &renamed).unwrap();
    let err = load().expect("refused");
    assert!(
        err.contains("`adapter.net.text_proj_in.weight`") && err.contains("another model"),
        "{err}"
    );
    std::fs::write(&state_path, &state).unwrap();
    // A moment one value short, as a file from a differently sized run would be.
    let optimizer = checkpoint.join("optimizer.safetensors");
    let key = "adapter.net.text_proj_in.weight.exp_avg";
    edit_tensor(&optimizer, key, |t| {
        t.data.pop();
        t.shape[0] -= 1;
    });
    let err = load().expect("refused");
    assert!(
        err.contains(&format!("`{key}`")) && err.contains("optimizer.safetensors"),
        "{err}"
    );
}
