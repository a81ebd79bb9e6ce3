//! Cold start on tiny sizes: only the new user learns (adapters and table bitwise unchanged), the
//! flow loss on the new user's two images goes down, for both the linear combination (AdamW, as
//! released) and a direct embedding (Prodigy); AdamW follows torch's formula.

use burn::backend::Flex;
use burn::prelude::*;
use burn::tensor::Distribution;
use premier_adapter::{AdapterConfig, PreferenceAdapter};
use premier_io::SaveDtype;
use premier_mmdit::{Flux, FluxConfig};
use premier_train::adamw::{AdamW, AdamWConfig};
use premier_train::prodigy::ProdigyConfig;
use premier_train::stage2::{
    ColdStartOptimizer, NewUser, Stage2Batch, Stage2Config, Stage2Trainer,
};
use premier_users::{LinearCombination, UserEmbedding, UserShape, UserTable};

mod common;
use common::{bits, AB};

fn run(user: NewUser<AB>, optimizer: ColdStartOptimizer) -> (f64, f64, Stage2Trainer<AB>) {
    let device = Default::default();
    <AB as Backend>::seed(&device, 23);
    let normal = Distribution::Normal(0.0, 1.0);
    let flux_config = FluxConfig::tiny();
    let flux = Flux::<AB>::init(&flux_config, &device).unwrap();
    let mut adapter =
        PreferenceAdapter::<AB>::init(&AdapterConfig::small(16, 6, 16, 2), &device).unwrap();
    // A trained adapter's output is not ~0: give it unit LayerNorm weights.
    for net in [
        adapter.net.as_mut().unwrap(),
        adapter.net2.as_mut().unwrap(),
    ] {
        let n = net.norm_weight.dims()[0];
        net.norm_weight = burn::module::Param::from_tensor(Tensor::ones([n], &device));
    }
    let table = UserTable::<AB>::init(
        UserShape {
            users: 5,
            tokens: 3,
            dim: 6,
        },
        &device,
    );
    // Two images of the new user.
    let batch = Stage2Batch {
        x0: Tensor::random([2, 4, 8], normal, &device),
        latent_hw: (4, 4),
        text: Tensor::random([2, 5, 16], normal, &device),
        pooled: Tensor::random([2, 12], normal, &device),
        owners: Vec::new(),
    };
    let noise = Tensor::<AB, 3>::random([2, 4, 8], normal, &device);
    let t = Tensor::<AB, 1>::from_floats([0.3, 0.7], &device);
    let (adapter_bits, table_bits) = (bits(&adapter), bits(&table));
    let config = Stage2Config {
        optimizer,
        ..Stage2Config::default()
    };
    let mut trainer = Stage2Trainer::new(flux, adapter, table, user, config);
    let first = trainer
        .step_with(&batch, noise.clone(), t.clone())
        .unwrap()
        .loss;
    for _ in 0..30 {
        trainer.step_with(&batch, noise.clone(), t.clone()).unwrap();
    }
    let last = trainer.loss(&batch, noise, t).unwrap().into_scalar() as f64;
    assert_eq!(bits(&trainer.adapter), adapter_bits, "adapter changed");
    assert_eq!(bits(&trainer.table), table_bits, "table changed");
    (first, last, trainer)
}

#[test]
fn linear_combination_learns_alone() {
    let device = Default::default();
    let (first, last, trainer) = run(
        NewUser::Linear(LinearCombination::init(5, &device)),
        ColdStartOptimizer::AdamW(AdamWConfig::premier_cold_start()),
    );
    eprintln!("linear: flow loss {first:.6} -> {last:.6}");
    assert!(last < first, "{first} -> {last}");
    // The trained coefficients save and load back.
    let NewUser::Linear(combination) = trainer.user().unwrap() else {
        unreachable!()
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("user_combination_9.safetensors");
    combination.save(&path, SaveDtype::F32).unwrap();
    let back = LinearCombination::<Flex>::load(&path, 5, &device).unwrap();
    assert_eq!(
        back.weights.val().into_data().to_vec::<f32>().unwrap(),
        combination
            .weights
            .val()
            .into_data()
            .to_vec::<f32>()
            .unwrap()
    );
}

#[test]
fn direct_embedding_learns_alone() {
    let device = Default::default();
    let (first, last, _) = run(
        NewUser::Direct(UserEmbedding::init_direct(3, 6, &device)),
        ColdStartOptimizer::Prodigy(ProdigyConfig {
            d0: 1e-3,
            ..ProdigyConfig::premier()
        }),
    );
    eprintln!("direct: flow loss {first:.6} -> {last:.6}");
    assert!(last < first, "{first} -> {last}");
}

#[test]
fn adamw_follows_torch() {
    let device = Default::default();
    let config = AdamWConfig {
        lr: 0.05,
        weight_decay: 0.1,
        ..AdamWConfig::default()
    };
    let mut opt = AdamW::<Flex>::new(config.clone());
    let mut p = vec![0.5f64, -1.0, 2.0];
    let (mut m, mut v) = (vec![0.0f64; 3], vec![0.0f64; 3]);
    let mut params = vec![Tensor::<Flex, 1>::from_floats([0.5, -1.0, 2.0], &device)];
    for step in 1..=5 {
        let g: Vec<f64> = p.iter().map(|x| 2.0 * x - 0.3 * step as f64).collect();
        params = opt.step(
            params,
            vec![Tensor::from_floats(
                [g[0] as f32, g[1] as f32, g[2] as f32],
                &device,
            )],
        );
        let (b1, b2) = config.betas;
        for i in 0..3 {
            p[i] *= 1.0 - config.lr * config.weight_decay;
            m[i] = b1 * m[i] + (1.0 - b1) * g[i];
            v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
            let denom = v[i].sqrt() / (1.0 - b2.powi(step)).sqrt() + config.eps;
            p[i] -= config.lr / (1.0 - b1.powi(step)) * m[i] / denom;
        }
        let got = params[0].clone().into_data().to_vec::<f32>().unwrap();
        for i in 0..3 {
            let rel = (got[i] as f64 - p[i]).abs() / p[i].abs();
            assert!(rel < 1e-5, "step {step}: {} vs {}", got[i], p[i]);
        }
    }
}

#[test]
fn new_users_in_one_batch_train_as_they_would_alone() {
    let device = Default::default();
    <AB as Backend>::seed(&device, 23);
    let normal = Distribution::Normal(0.0, 1.0);
    let flux = Flux::<AB>::init(&FluxConfig::tiny(), &device).unwrap();
    let adapter =
        PreferenceAdapter::<AB>::init(&AdapterConfig::small(16, 6, 16, 2), &device).unwrap();
    let shape = UserShape {
        users: 3,
        tokens: 2,
        dim: 6,
    };
    let table = UserTable::<AB>::init(shape, &device);
    let users: Vec<NewUser<AB>> = (0..2)
        .map(|_| NewUser::Linear(LinearCombination::init(shape.users, &device)))
        .collect();
    let batch = |n: usize| Stage2Batch {
        x0: Tensor::random([n, 4, 8], normal, &device),
        latent_hw: (4, 4),
        text: Tensor::random([n, 5, 16], normal, &device),
        pooled: Tensor::random([n, 12], normal, &device),
        owners: Vec::new(),
    };
    let (a, b) = (batch(2), batch(2));
    let (noise_a, noise_b) = (
        Tensor::<AB, 3>::random([2, 4, 8], normal, &device),
        Tensor::<AB, 3>::random([2, 4, 8], normal, &device),
    );
    let t = Tensor::<AB, 1>::from_floats([0.3, 0.7], &device);
    // AdamW is per element and scale-free up to ε (the joint batch halves each user's
    // gradient; a fresh adapter's gradients are small enough for ε = 1e-8 to matter, so it is
    // made negligible), and without clipping the users do not interact: fitting both in one
    // batch must give what fitting each alone gives.
    let config = Stage2Config {
        optimizer: ColdStartOptimizer::AdamW(AdamWConfig {
            eps: 1e-20,
            ..AdamWConfig::premier_cold_start()
        }),
        clip_norm: None,
        ..Stage2Config::default()
    };
    let trainer = |users: Vec<NewUser<AB>>| {
        Stage2Trainer::new_batch(
            flux.clone(),
            adapter.clone(),
            table.clone(),
            users,
            config.clone(),
        )
    };
    let mut alone: Vec<_> = users.iter().map(|u| trainer(vec![u.clone()])).collect();
    let mut together = trainer(users);
    let joint = Stage2Batch {
        x0: Tensor::cat(vec![a.x0.clone(), b.x0.clone()], 0),
        latent_hw: (4, 4),
        text: Tensor::cat(vec![a.text.clone(), b.text.clone()], 0),
        pooled: Tensor::cat(vec![a.pooled.clone(), b.pooled.clone()], 0),
        owners: vec![0, 0, 1, 1],
    };
    let joint_noise = Tensor::cat(vec![noise_a.clone(), noise_b.clone()], 0);
    let joint_t = Tensor::cat(vec![t.clone(), t.clone()], 0);
    for _ in 0..5 {
        alone[0].step_with(&a, noise_a.clone(), t.clone()).unwrap();
        alone[1].step_with(&b, noise_b.clone(), t.clone()).unwrap();
        together
            .step_with(&joint, joint_noise.clone(), joint_t.clone())
            .unwrap();
    }
    let got: Vec<f32> = together.embedding().unwrap().into_data().to_vec().unwrap();
    let want: Vec<f32> = Tensor::cat(alone.iter().map(|t| t.embedding().unwrap()).collect(), 0)
        .into_data()
        .to_vec()
        .unwrap();
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() <= 1e-4 * w.abs().max(1e-2), "{g} vs {w}");
    }
    // A sample naming a user the trainer does not have is an error, not a panic.
    let bad = Stage2Batch {
        owners: vec![0, 2],
        ..a
    };
    assert!(together.step(&bad).is_err());
}
