//! Training inside the experiment: the world encoded once, stage-1 runs, and the cold starts.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use image::RgbImage;
use premier_adapter::{AdapterConfig, PreferenceAdapter};
use premier_mmdit::{Flux, FluxAutodiffBackend};
use premier_text::{PromptTokenizer, TextConditioning};
use premier_train::metrics::{write_loss_curve, MetricRecord, MetricsLog};
use premier_train::prodigy::ProdigyConfig;
use premier_train::sampler::UserBatchSampler;
use premier_train::stage1::{Stage1Batch, Stage1Config, Stage1Model, Stage1Trainer};
use premier_train::stage2::{NewUser, Stage2Batch, Stage2Config, Stage2Trainer};
use premier_users::{LinearCombination, UserEmbedding, UserShape, UserTable};

use super::config::{ExperimentConfig, Variant};
use super::results::content_index;
use super::{run_err, ExperimentError};
use crate::base::SynthBase;
use crate::codec::{encode, LATENT_HW};
use crate::report::RunEnd;
use crate::world::{Content, World};

/// Encoded prompts and images, shared by all runs.
pub(super) struct Encoded<B: Backend> {
    /// Conditioning of every content's prompt, in `Content::all()` order.
    pub(super) prompts: TextConditioning<B>,
    /// Empty prompt `[1, tokens, dim]`.
    pub(super) null: Tensor<B, 3>,
    /// Per user: packed images `[images, tokens, channels]` and their content indices.
    pub(super) images: Vec<(Tensor<B, 3>, Vec<usize>)>,
}

pub(super) fn encode_world<B: AutodiffBackend>(
    world: &World,
    base: &SynthBase<B::InnerBackend>,
    tokenizer: &PromptTokenizer,
) -> Result<Encoded<B>, ExperimentError> {
    let device = base.text.embedding.device();
    let prompts: Vec<String> = Content::all().iter().map(|c| c.prompt()).collect();
    let refs: Vec<&str> = prompts.iter().map(|s| s.as_str()).collect();
    let text = base.text.encode(tokenizer, &refs).map_err(run_err)?;
    let null = base.text.encode(tokenizer, &[""]).map_err(run_err)?;
    let images = (0..world.users.len())
        .map(|u| {
            let liked = world.liked_images(u);
            let rgb: Vec<&RgbImage> = liked.iter().map(|i| &i.rgb).collect();
            (
                Tensor::from_inner(encode::<B::InnerBackend>(&rgb, &device)),
                liked.iter().map(|i| content_index(&i.content)).collect(),
            )
        })
        .collect();
    Ok(Encoded {
        prompts: TextConditioning {
            tokens: Tensor::from_inner(text.tokens),
            pooled: Tensor::from_inner(text.pooled),
        },
        null: Tensor::from_inner(null.tokens),
        images,
    })
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

/// A fresh adapter and user table for `variant` (the same draw for every variant).
pub(super) fn init_stage1<B: AutodiffBackend>(
    config: &ExperimentConfig,
    world: &World,
    flux: &Flux<B>,
    encoded: &Encoded<B>,
    variant: Variant,
    device: &B::Device,
) -> Result<Stage1Model<B>, ExperimentError> {
    B::seed(device, config.seed.wrapping_add(1));
    let adapter_config = AdapterConfig {
        shared: variant.shared,
        distinct: variant.distinct,
        ..AdapterConfig::small(
            encoded.prompts.tokens.dims()[2],
            config.user_dim,
            flux.hidden_size(),
            flux.depth(),
        )
    };
    let adapter = PreferenceAdapter::<B>::init_with(&adapter_config, config.adapter_init, device)
        .map_err(run_err)?;
    let users = UserTable::<B>::init(
        UserShape {
            users: world.config.train_users,
            tokens: config.user_tokens,
            dim: config.user_dim,
        },
        device,
    );
    Ok(Stage1Model { adapter, users })
}

#[allow(clippy::too_many_arguments)]
pub(super) fn train_stage1<B: FluxAutodiffBackend>(
    config: &ExperimentConfig,
    world: &World,
    flux: &Flux<B>,
    encoded: &Encoded<B>,
    model: Stage1Model<B>,
    variant: Variant,
    dir: &Path,
    tick: &dyn Fn(&str),
) -> Result<(Stage1Model<B>, RunEnd), ExperimentError> {
    let stage1 = Stage1Config {
        dispersion: variant.dispersion,
        optimizer: ProdigyConfig {
            d0: config.stage1_d0,
            growth_rate: config.stage1_growth_rate.unwrap_or(f64::INFINITY),
            ..ProdigyConfig::premier()
        },
        lr_schedule: config.stage1_decay.schedule(config.stage1_steps as u64),
        seed: config.seed,
        ..Stage1Config::default()
    };
    let mut trainer =
        Stage1Trainer::new(flux.clone(), model, stage1).with_workers(config.stage1_workers);
    let counts: Vec<usize> = (0..world.config.train_users)
        .map(|u| encoded.images[u].1.len())
        .collect();
    let sampler = UserBatchSampler::new(counts, config.batch_size, config.seed).map_err(run_err)?;
    std::fs::create_dir_all(dir).map_err(run_err)?;
    let metrics_path = dir.join("metrics.jsonl");
    let _ = std::fs::remove_file(&metrics_path);
    let mut log = MetricsLog::append(&metrics_path).map_err(run_err)?;
    let mut records = Vec::new();
    let started = Instant::now();
    for step in 0..config.stage1_steps {
        let picks = sampler.batch(step as u64);
        let users: Vec<usize> = picks.iter().map(|p| p.0).collect();
        let x0 = Tensor::cat(
            picks
                .iter()
                .map(|&(u, i)| select_rows(&encoded.images[u].0, &[i]))
                .collect(),
            0,
        );
        let prompt_rows: Vec<usize> = picks.iter().map(|&(u, i)| encoded.images[u].1[i]).collect();
        let batch = Stage1Batch {
            x0,
            latent_hw: LATENT_HW,
            text: select_rows(&encoded.prompts.tokens, &prompt_rows),
            pooled: select_rows(&encoded.prompts.pooled, &prompt_rows),
            users,
            null_text: Some(encoded.null.clone()),
        };
        let t0 = Instant::now();
        let report = trainer.step(&batch).map_err(run_err)?;
        let record = MetricRecord {
            report,
            it_per_s: 1.0 / t0.elapsed().as_secs_f64().max(1e-9),
            elapsed_s: started.elapsed().as_secs_f64(),
        };
        log.write(&record).map_err(run_err)?;
        records.push(record);
        tick(&format!(
            "{}: loss {:.4} Δ/y {:.3} d {:.2e}",
            variant.name, report.loss, report.delta_to_y, report.d
        ));
    }
    write_loss_curve(&records, &dir.join("loss.png")).map_err(run_err)?;
    let tail: Vec<&MetricRecord> = records.iter().rev().take(20).collect();
    let mean = |f: &dyn Fn(&MetricRecord) -> f64| {
        tail.iter().map(|r| f(r)).sum::<f64>() / tail.len().max(1) as f64
    };
    let end = RunEnd {
        name: variant.name.into(),
        flow: mean(&|r| r.report.flow),
        delta_to_y: mean(&|r| r.report.delta_to_y),
        d: records.last().map_or(f64::NAN, |r| r.report.d),
    };
    Ok((trainer.model, end))
}

/// For every new user, the (user, image) pairs it trains on: its first `shots` liked images.
pub(super) fn cold_start_picks(
    world: &World,
    shots: usize,
    per_step: usize,
) -> (Vec<Vec<usize>>, usize) {
    let shots = shots.min(world.config.images_per_user).max(1);
    let picks = (world.config.train_users..world.users.len())
        .map(|_| (0..shots).collect())
        .collect();
    (picks, per_step.clamp(1, shots))
}

/// Step `step`'s batch: `per_step` images of every new user, cycling through its shots.
pub(super) fn cold_start_batch<B: Backend>(
    encoded: &Encoded<B>,
    (picks, per_step): &(Vec<Vec<usize>>, usize),
    step: usize,
) -> Stage2Batch<B> {
    let first_new = encoded.images.len() - picks.len();
    let mut x0 = Vec::new();
    let mut prompt_rows = Vec::new();
    let mut owners = Vec::new();
    for (k, images) in picks.iter().enumerate() {
        let (latents, contents) = &encoded.images[first_new + k];
        for j in 0..*per_step {
            let i = images[(step * per_step + j) % images.len()];
            x0.push(select_rows(latents, &[i]));
            prompt_rows.push(contents[i]);
            owners.push(k);
        }
    }
    Stage2Batch {
        x0: Tensor::cat(x0, 0),
        latent_hw: LATENT_HW,
        text: select_rows(&encoded.prompts.tokens, &prompt_rows),
        pooled: select_rows(&encoded.prompts.pooled, &prompt_rows),
        owners,
    }
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
    B::seed(
        device,
        config
            .seed
            .wrapping_add(1000 + shots as u64 * 2 + direct as u64),
    );
    let shape = model.users.shape();
    let users = (world.config.train_users..world.users.len())
        .map(|_| {
            if direct {
                NewUser::Direct(UserEmbedding::init_direct(shape.tokens, shape.dim, device))
            } else {
                NewUser::Linear(LinearCombination::init(shape.users, device))
            }
        })
        .collect();
    let stage2 = Stage2Config {
        optimizer: config.cold_start_optimizer.clone(),
        seed: config.seed.wrapping_add(2000 + shots as u64),
        ..Stage2Config::default()
    };
    Stage2Trainer::new_batch(
        flux.clone(),
        model.adapter.clone(),
        model.users.clone(),
        users,
        stage2,
    )
}
