//! Cold-start checkpoints resume bit for bit: N steps + checkpoint + N steps after loading equals
//! 2N steps straight, for the linear combination with AdamW and a direct embedding with Prodigy;
//! a checkpoint of another table's shape is refused.

use burn::prelude::*;
use burn::tensor::Distribution;
use premier_adapter::{AdapterConfig, PreferenceAdapter};
use premier_mmdit::{Flux, FluxConfig};
use premier_train::adamw::AdamWConfig;
use premier_train::checkpoint::{checkpoints, load_stage2, save_stage2};
use premier_train::prodigy::ProdigyConfig;
use premier_train::stage2::{
    ColdStartOptimizer, NewUser, Stage2Batch, Stage2Config, Stage2Trainer,
};
use premier_users::{LinearCombination, UserEmbedding, UserShape, UserTable};

mod common;
use common::{bits, edit_tensor, AB};

/// Tests share the backend's global RNG: build under a lock so two calls draw the same weights.
static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn fresh(linear: bool) -> (Stage2Trainer<AB>, Stage2Batch<AB>) {
    let _guard = INIT.lock().unwrap_or_else(|e| e.into_inner());
    let device = Default::default();
    <AB as Backend>::seed(&device, 41);
    let normal = Distribution::Normal(0.0, 1.0);
    let flux = Flux::<AB>::init(&FluxConfig::tiny(), &device).unwrap();
    let adapter =
        PreferenceAdapter::<AB>::init(&AdapterConfig::small(16, 6, 16, 2), &device).unwrap();
    let shape = UserShape {
        users: 5,
        tokens: 3,
        dim: 6,
    };
    let table = UserTable::<AB>::init(shape, &device);
    let (user, optimizer) = if linear {
        (
            NewUser::Linear(LinearCombination::init(shape.users, &device)),
            ColdStartOptimizer::AdamW(AdamWConfig::premier_cold_start()),
        )
    } else {
        (
            NewUser::Direct(UserEmbedding::init_direct(shape.tokens, shape.dim, &device)),
            ColdStartOptimizer::Prodigy(ProdigyConfig {
                d0: 1e-3,
                ..ProdigyConfig::premier()
            }),
        )
    };
    let batch = Stage2Batch {
        x0: Tensor::random([2, 4, 8], normal, &device),
        latent_hw: (4, 4),
        text: Tensor::random([2, 5, 16], normal, &device),
        pooled: Tensor::random([2, 12], normal, &device),
        owners: Vec::new(),
    };
    let config = Stage2Config {
        optimizer,
        seed: 5,
        ..Stage2Config::default()
    };
    (
        Stage2Trainer::new(flux, adapter, table, user, config),
        batch,
    )
}

#[test]
fn cold_start_resumes_bit_for_bit() {
    let device = Default::default();
    for linear in [true, false] {
        let (mut straight, batch) = fresh(linear);
        for _ in 0..6 {
            straight.step(&batch).unwrap();
        }

        let (mut first, batch) = fresh(linear);
        for _ in 0..3 {
            first.step(&batch).unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let path = save_stage2(&first, None, dir.path(), 2).unwrap();
        assert_eq!(checkpoints(dir.path()).len(), 1);
        let (flux, adapter, table) = (
            first.flux.clone(),
            first.adapter.clone(),
            first.table.clone(),
        );
        drop(first);
        let mut resumed = load_stage2(&path, flux, adapter, table, &device).unwrap();
        assert_eq!(resumed.step, 3);
        for _ in 0..3 {
            resumed.step(&batch).unwrap();
        }
        assert_eq!(
            bits(&resumed.users),
            bits(&straight.users),
            "linear: {linear}"
        );

        // A checkpoint read against a table of another shape is refused, naming the file.
        let other = UserTable::<AB>::init(
            UserShape {
                users: 4,
                tokens: 3,
                dim: 6,
            },
            &device,
        );
        let err = load_stage2(
            &path,
            straight.flux.clone(),
            straight.adapter.clone(),
            other,
            &device,
        )
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("state.json"), "{err}");

        // An optimizer file from another step of the same cold start is refused.
        let dir6 = tempfile::tempdir().unwrap();
        let later = save_stage2(&straight, None, dir6.path(), 2).unwrap();
        std::fs::copy(
            path.join("optimizer.safetensors"),
            later.join("optimizer.safetensors"),
        )
        .unwrap();
        let err = load_stage2(
            &later,
            straight.flux.clone(),
            straight.adapter.clone(),
            straight.table.clone(),
            &device,
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            err.contains("optimizer.safetensors")
                && err.contains("not the file this checkpoint was written with"),
            "{err}"
        );
    }
}

#[test]
fn an_optimizer_state_of_another_length_is_refused_naming_the_key() {
    let device = Default::default();
    for linear in [true, false] {
        let (mut trainer, batch) = fresh(linear);
        trainer.step(&batch).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = save_stage2(&trainer, None, dir.path(), 2).unwrap();
        let optimizer = path.join("optimizer.safetensors");
        // Keyed by the parameter's name.
        let key = if linear {
            "users.0.Linear.weights.exp_avg"
        } else {
            "users.0.Direct.tokens.exp_avg"
        };
        edit_tensor(&optimizer, key, |t| {
            t.data.push(0.0);
            t.shape[0] += 1;
        });
        let (flux, adapter, table) = (
            trainer.flux.clone(),
            trainer.adapter.clone(),
            trainer.table.clone(),
        );
        let err = load_stage2(&path, flux, adapter, table, &device)
            .err()
            .expect("refused")
            .to_string();
        assert!(
            err.contains(&format!("`{key}`")) && err.contains("optimizer.safetensors"),
            "linear: {linear}: {err}"
        );
    }
}
