//! Training inside the experiment, on the project's one stage-1 loop and one cold-start loop:
//! the world encoded once into memory (by the world's own `premier encode` encoders), stage-1
//! runs through [`premier_train::run::train_stage1`] (each writes a run folder `premier
//! generate` can load) and cold starts through [`premier_train::new_user::fit_new_users`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use image::RgbImage;
use premier_mmdit::{Flux, FluxAutodiffBackend};
use premier_text::PromptTokenizer;
use premier_train::encode::Encoders;
use premier_train::metrics::{write_loss_curve, MetricRecord, MetricsLog};
use premier_train::new_user::fit_new_users;
use premier_train::prodigy::ProdigyConfig;
use premier_train::run::{
    train_stage1, ColdStartConfig, ColdStartKind, RunObserver, Start, TrainConfig,
};
use premier_train::samples::{EncodedSample, EncodedUsers};
use premier_train::seeded::seeded;
use premier_train::stage1::{Stage1Config, Stage1Model};
use premier_train::stage2::{NewUser, Stage2Config, Stage2Trainer};
use premier_users::{LinearCombination, UserEmbedding};

use super::config::{ExperimentConfig, Variant};
use super::results::content_index;
use super::{run_err, ExperimentError};
use crate::base::SynthBase;
use crate::encoders::SynthEncoders;
use crate::report::RunEnd;
use crate::world::{Content, World};

/// Every user's liked images and their prompts' features, encoded once for all runs (trained
/// users first, then the new ones, as in the world), and the empty prompt's features.
pub(super) fn encode_world<B: Backend>(
    world: &World,
    base: &SynthBase<B>,
    tokenizer: &PromptTokenizer,
) -> Result<EncodedUsers, ExperimentError> {
    let mut encoders = SynthEncoders {
        text: base.text.clone(),
        tokenizer: tokenizer.clone(),
        base_fingerprint: String::new(),
        device: base.text.embedding.device(),
    };
    let prompts: Vec<String> = Content::all().iter().map(|c| c.prompt()).collect();
    let texts = encoders.encode_captions(&prompts).map_err(run_err)?;
    let null = encoders
        .encode_captions(&[String::new()])
        .map_err(run_err)?
        .remove(0);
    let samples = (0..world.users.len())
        .map(|u| {
            let liked = world.liked_images(u);
            let rgb: Vec<RgbImage> = liked.iter().map(|i| i.rgb.clone()).collect();
            let latents = encoders.encode_images(&rgb).map_err(run_err)?;
            Ok(latents
                .into_iter()
                .zip(&liked)
                .map(|(latent, image)| EncodedSample {
                    latent,
                    text: texts[content_index(&image.content)].clone(),
                })
                .collect())
        })
        .collect::<Result<_, ExperimentError>>()?;
    Ok(EncodedUsers {
        ids: world.users.iter().map(|u| u.id.clone()).collect(),
        samples,
        captions: BTreeMap::from([(String::new(), null)]),
        origin: PathBuf::from(format!("the synthetic world of seed {}", world.config.seed)),
    })
}

/// The users `range` of `data`, each with at most its first `shots` samples.
pub(super) fn users_of(
    data: &EncodedUsers,
    range: std::ops::Range<usize>,
    shots: usize,
) -> EncodedUsers {
    EncodedUsers {
        ids: data.ids[range.clone()].to_vec(),
        samples: data.samples[range]
            .iter()
            .map(|s| s[..shots.min(s.len())].to_vec())
            .collect(),
        captions: data.captions.clone(),
        origin: data.origin.clone(),
    }
}

pub(super) fn select_rows<B: Backend, const D: usize>(
    t: &Tensor<B, D>,
    rows: &[usize],
) -> Tensor<B, D> {
    let device = t.device();
    let idx: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
    t.clone().select(
        0,
        Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [rows.len()]), &device),
    )
}

/// Where a stage-1 run writes its metrics and loss curve.
pub(super) fn stage1_dir(out: &Path, variant: &Variant) -> PathBuf {
    out.join(format!(
        "stage1-{}",
        variant
            .name
            .replace(['/', ' ', '.', '(', ')', '&', ',', ';', '='], "_")
            .replace("Δ_", "")
    ))
}

/// The run `variant` of stage 1 is: the experiment's sizes and optimizer, a final checkpoint
/// only, no validation images.
pub(super) fn stage1_config(config: &ExperimentConfig, variant: &Variant) -> TrainConfig {
    TrainConfig {
        steps: config.stage1_steps as u64,
        batch_size: config.batch_size,
        grad_accum: 1,
        checkpoint_every: 0,
        keep_checkpoints: 1,
        validate_every: 0,
        user_tokens: config.user_tokens,
        user_dim: config.user_dim,
        shared: variant.shared,
        distinct: variant.distinct,
        adapter_init: config.adapter_init,
        workers: config.stage1_workers.max(1),
        stage1: Stage1Config {
            dispersion: variant.dispersion,
            optimizer: ProdigyConfig {
                d0: config.stage1_d0,
                growth_rate: config.stage1_growth_rate.unwrap_or(f64::INFINITY),
                ..ProdigyConfig::premier()
            },
            lr_schedule: config.stage1_decay.schedule(config.stage1_steps as u64),
            seed: config.seed,
            ..Stage1Config::default()
        },
        ..TrainConfig::synth()
    }
}

/// Collects a run's records and reports each step.
struct Records<'a> {
    name: &'a str,
    records: Vec<MetricRecord>,
    tick: &'a dyn Fn(&str),
}

impl<B: AutodiffBackend> RunObserver<B> for Records<'_> {
    fn step(&mut self, record: &MetricRecord) {
        let r = &record.report;
        (self.tick)(&format!(
            "{}: loss {:.4} Δ/y {:.3} d {:.2e}",
            self.name, r.loss, r.delta_to_y, r.d
        ));
        self.records.push(record.clone());
    }
}

/// Stage 1 of `variant` on the trained users' samples `data`, a run in `dir` (an earlier run
/// there is replaced): the trained model and the means of its last 20 steps.
pub(super) fn train_variant<B: FluxAutodiffBackend>(
    config: &ExperimentConfig,
    flux: &Flux<B>,
    mut data: EncodedUsers,
    variant: Variant,
    dir: &Path,
    tick: &dyn Fn(&str),
    device: &B::Device,
) -> Result<(Stage1Model<B>, RunEnd), ExperimentError> {
    let mut records = Records {
        name: variant.name,
        records: Vec::new(),
        tick,
    };
    let (trainer, _) = train_stage1(
        flux.clone(),
        &mut data,
        &stage1_config(config, &variant),
        dir,
        Start::Replace,
        &mut records,
        device,
    )
    .map_err(run_err)?;
    let tail: Vec<&MetricRecord> = records.records.iter().rev().take(20).collect();
    let mean = |f: &dyn Fn(&MetricRecord) -> f64| {
        tail.iter().map(|r| f(r)).sum::<f64>() / tail.len().max(1) as f64
    };
    let end = RunEnd {
        name: variant.name.into(),
        flow: mean(&|r| r.report.flow),
        delta_to_y: mean(&|r| r.report.delta_to_y),
        d: records.records.last().map_or(f64::NAN, |r| r.report.d),
    };
    Ok((trainer.model, end))
}

/// How every new user is fitted from `shots` images.
pub(super) fn cold_start_config(
    config: &ExperimentConfig,
    shots: usize,
    direct: bool,
) -> ColdStartConfig {
    ColdStartConfig {
        kind: if direct {
            ColdStartKind::Direct
        } else {
            ColdStartKind::Linear
        },
        steps: config.cold_start_steps as u64,
        batch_size: config.cold_start_batch.max(1),
        checkpoint_every: 0,
        keep_checkpoints: 1,
        stage2: Stage2Config {
            optimizer: config.cold_start_optimizer.clone(),
            seed: config.seed.wrapping_add(2000 + shots as u64),
            ..Stage2Config::default()
        },
    }
}

/// Fits `trainer`'s new users on `data` (user `k` of both is the same), writing the metrics
/// and the loss curve into `dir`.
pub(super) fn fit_cold_start<B: FluxAutodiffBackend>(
    trainer: &mut Stage2Trainer<B>,
    mut data: EncodedUsers,
    cold: &ColdStartConfig,
    dir: &Path,
    device: &B::Device,
) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let metrics = dir.join("metrics.jsonl");
    let _ = std::fs::remove_file(&metrics);
    let mut log = MetricsLog::append(&metrics).map_err(|e| e.to_string())?;
    let mut records = Vec::new();
    let users: Vec<usize> = (0..data.ids.len()).collect();
    fit_new_users(
        trainer,
        &mut data,
        &users,
        cold,
        &mut |_, record| {
            log.write(record)?;
            records.push(record.clone());
            Ok(())
        },
        device,
    )
    .map_err(|e| e.to_string())?;
    write_loss_curve(&records, &dir.join("loss.png")).map_err(|e| e.to_string())
}

/// A trainer fitting every new user from `shots` images, initialised here (the device RNG is
/// shared, so inits stay on one thread and in a fixed order).
pub(super) fn cold_start_trainer<B: AutodiffBackend>(
    config: &ExperimentConfig,
    flux: &Flux<B>,
    model: &Stage1Model<B>,
    world: &World,
    shots: usize,
    direct: bool,
    device: &B::Device,
) -> Stage2Trainer<B> {
    let seed = config
        .seed
        .wrapping_add(1000 + shots as u64 * 2 + direct as u64);
    let shape = model.users.shape();
    let users = seeded::<B, _>(device, seed, || {
        (world.config.train_users..world.users.len())
            .map(|_| {
                if direct {
                    NewUser::Direct(UserEmbedding::init_direct(shape.tokens, shape.dim, device))
                } else {
                    NewUser::Linear(LinearCombination::init(shape.users, device))
                }
            })
            .collect()
    });
    Stage2Trainer::new_batch(
        flux.clone(),
        model.adapter.clone(),
        model.users.clone(),
        users,
        cold_start_config(config, shots, direct).stage2,
    )
}
