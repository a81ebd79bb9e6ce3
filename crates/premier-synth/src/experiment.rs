//! The quickstart experiment: the paper's claims in miniature on a drawn world.
//!
//! Stage 1 trains the adapters and the user table on the world's users through the frozen base
//! (full model and the three ablations); stage 2 cold-starts new users from 2, 4 and 8 images
//! (linear combination and direct embedding); every variant generates the same prompts × seeds
//! and is scored from pixels only.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use image::RgbImage;
use premier_adapter::{AdapterConfig, PreferenceAdapter};
use premier_losses::DispersionVariant;
use premier_mmdit::load::write_via_temp;
use premier_mmdit::{Flux, TextModulation};
use premier_pipeline::image_io::{grid, save_png};
use premier_text::{PromptTokenizer, TextConditioning};
use premier_train::metrics::{write_loss_curve, MetricRecord, MetricsLog};
use premier_train::prodigy::ProdigyConfig;
use premier_train::sampler::UserBatchSampler;
use premier_train::stage1::{Stage1Batch, Stage1Config, Stage1Model, Stage1Trainer};
use premier_train::stage2::{
    ColdStartOptimizer, NewUser, Stage2Batch, Stage2Config, Stage2Trainer,
};
use premier_users::{LinearCombination, UserEmbedding, UserShape, UserTable};
use serde::{Deserialize, Serialize};

use crate::base::{BaseError, SynthBase};
use crate::codec::{encode, LATENT_HW};
use crate::sample::{sample, SAMPLING_STEPS};
use crate::score::{image_distance, preference_score, prompt_fidelity};
use crate::text::load_tokenizer;
use crate::world::{Content, World, WorldConfig};

/// What the experiment runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperimentConfig {
    /// Draws the world (users, tastes, images) and all training randomness.
    pub seed: u64,
    pub world: WorldConfig,
    pub stage1_steps: usize,
    pub batch_size: usize,
    pub cold_start_steps: usize,
    /// Images a new user gives, one cold start each.
    pub shots: Vec<usize>,
    /// Prompts evaluated (spread over all contents).
    pub eval_prompts: usize,
    /// Seeds per prompt.
    pub eval_seeds: usize,
    /// User embedding: tokens × width.
    pub user_tokens: usize,
    pub user_dim: usize,
    /// Run the three stage-1 ablations.
    pub ablations: bool,
}

impl Default for ExperimentConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            world: WorldConfig::default(),
            stage1_steps: 300,
            batch_size: 8,
            cold_start_steps: 100,
            shots: vec![2, 4, 8],
            eval_prompts: 6,
            eval_seeds: 2,
            user_tokens: 4,
            user_dim: 32,
            ablations: true,
        }
    }
}

impl ExperimentConfig {
    /// A few steps of everything, for tests.
    pub fn smoke() -> Self {
        Self {
            world: WorldConfig {
                train_users: 4,
                new_users: 1,
                images_per_user: 8,
                ..WorldConfig::default()
            },
            stage1_steps: 3,
            batch_size: 4,
            cold_start_steps: 2,
            shots: vec![2],
            eval_prompts: 2,
            eval_seeds: 1,
            ablations: false,
            ..Self::default()
        }
    }
}

/// Errors of the experiment.
#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    #[error(transparent)]
    Base(#[from] BaseError),
    #[error("{0}")]
    Run(String),
}

fn run_err(e: impl std::fmt::Display) -> ExperimentError {
    ExperimentError::Run(e.to_string())
}

/// Scores of one variant, averaged over users × prompts × seeds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    /// Preference score (ViPer-score analog), higher is better.
    pub preference: f64,
    /// Standard error of `preference` (sample standard deviation / √images).
    pub preference_se: f64,
    /// Share of images preferred over the base's for the same user, prompt and seed (ties
    /// half), the ViPer-rate analog.
    pub win_rate: f64,
    /// Prompt fidelity (CLIP-T2I analog), higher is better.
    pub fidelity: f64,
    /// Distance to the user's held-out image of the prompt (LPIPS analog), lower is better.
    pub distance: f64,
}

/// One row of a report table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub name: String,
    pub scores: Scores,
}

/// Everything the experiment measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub config: ExperimentConfig,
    /// Base, taste in the prompt, Premier (trained users).
    pub main: Vec<Row>,
    /// Premier without Δ_shared, Δ_distinct, dispersion (trained users).
    pub ablations: Vec<Row>,
    /// Base and each cold start (new users).
    pub cold_start: Vec<Row>,
    /// Final stage-1 loss of each run.
    pub stage1_final_loss: Vec<(String, f64)>,
    pub seconds: f64,
    pub files: Vec<PathBuf>,
}

/// Told what the experiment is doing.
pub trait Progress {
    /// A new phase of `total` units.
    fn phase(&mut self, name: &str, total: u64);
    /// One unit done.
    fn tick(&mut self, message: &str);
}

impl Progress for () {
    fn phase(&mut self, _: &str, _: u64) {}
    fn tick(&mut self, _: &str) {}
}

/// Encoded prompts and images, shared by all runs.
struct Encoded<B: Backend> {
    /// Conditioning of every content's prompt, in `Content::all()` order.
    prompts: TextConditioning<B>,
    /// Empty prompt `[1, tokens, dim]`.
    null: Tensor<B, 3>,
    /// Per user: packed images `[images, tokens, channels]` and their content indices.
    images: Vec<(Tensor<B, 3>, Vec<usize>)>,
}

fn content_index(c: &Content) -> usize {
    Content::all().iter().position(|x| x == c).unwrap_or(0)
}

/// A stage-1 variant.
#[derive(Debug, Clone, Copy)]
struct Variant {
    name: &'static str,
    shared: bool,
    distinct: bool,
    dispersion: Option<DispersionVariant>,
}

/// Runs the experiment with the base model in `base_dir`, writing into `out`.
pub fn run<B: AutodiffBackend>(
    config: &ExperimentConfig,
    base_dir: &Path,
    out: &Path,
    device: &B::Device,
    progress: &mut impl Progress,
) -> Result<Report, ExperimentError> {
    let start = Instant::now();
    std::fs::create_dir_all(out).map_err(run_err)?;
    let world = World::new(WorldConfig {
        seed: config.seed,
        ..config.world.clone()
    });
    let (base, _) = SynthBase::<B>::load(base_dir, device)?;
    let tokenizer = load_tokenizer(base_dir).map_err(run_err)?;
    let base_inner = base.valid();
    let encoded = encode_world::<B>(&world, &base_inner, &tokenizer)?;
    let mut files = Vec::new();

    // Evaluation set: prompts spread over the contents; a noise seed per (user, prompt, k), the
    // same for every variant, so the base is sampled as often as any personalized model.
    let contents = Content::all();
    let eval_contents: Vec<Content> = (0..config.eval_prompts)
        .map(|i| contents[(i * contents.len()) / config.eval_prompts.max(1)])
        .collect();
    let eval = EvalSet {
        contents: eval_contents.clone(),
        seeds_per_prompt: config.eval_seeds,
        seed: config.seed,
    };
    let train_users: Vec<usize> = (0..world.config.train_users).collect();
    let new_users: Vec<usize> = (world.config.train_users..world.users.len()).collect();

    progress.phase("base and taste-in-prompt images", 2);
    let base_images = eval.generate(&world, &base_inner, &tokenizer, &train_users, None, false)?;
    progress.tick("base");
    let prompt_images = eval.generate(&world, &base_inner, &tokenizer, &train_users, None, true)?;
    progress.tick("taste in the prompt");
    let mut main = vec![
        Row {
            name: "Base (FLUX, no personalization)".into(),
            scores: eval.score(&world, &train_users, &base_images, &base_images),
        },
        Row {
            name: "Taste in the prompt (style words added)".into(),
            scores: eval.score(&world, &train_users, &prompt_images, &base_images),
        },
    ];

    let mut variants = vec![Variant {
        name: "Premier",
        shared: true,
        distinct: true,
        dispersion: Some(DispersionVariant::Stable),
    }];
    if config.ablations {
        variants.extend([
            Variant {
                name: "w/o Δ_shared",
                shared: false,
                distinct: true,
                dispersion: Some(DispersionVariant::Stable),
            },
            Variant {
                name: "w/o Δ_distinct",
                shared: true,
                distinct: false,
                dispersion: Some(DispersionVariant::Stable),
            },
            Variant {
                name: "w/o dispersion loss",
                shared: true,
                distinct: true,
                dispersion: None,
            },
            // The released run's loss: squared L2, saturating once users are apart.
            Variant {
                name: "released dispersion (squared L2)",
                shared: true,
                distinct: true,
                dispersion: Some(DispersionVariant::Released),
            },
        ]);
    }
    let mut ablations = Vec::new();
    let mut stage1_final_loss = Vec::new();
    let mut premier: Option<Stage1Model<B>> = None;
    for variant in variants {
        let dir = out.join(format!(
            "stage1-{}",
            variant
                .name
                .replace(['/', ' ', '.', '(', ')'], "_")
                .replace("Δ_", "")
        ));
        let (model, final_loss) = train_stage1(
            config, &world, &base.flux, &encoded, variant, &dir, device, progress,
        )?;
        files.push(dir.join("metrics.jsonl"));
        files.push(dir.join("loss.png"));
        stage1_final_loss.push((variant.name.to_string(), final_loss));
        let inner = model.valid();
        let lookup = |users: &[usize]| inner.users.lookup(users).map_err(run_err);
        let images = eval.generate(
            &world,
            &base_inner,
            &tokenizer,
            &train_users,
            Some((&inner.adapter, &lookup)),
            false,
        )?;
        let row = Row {
            name: variant.name.into(),
            scores: eval.score(&world, &train_users, &images, &base_images),
        };
        if variant.name == "Premier" {
            main.push(row);
            // The grid: the base, then a row per trained user (up to 6), a column per prompt.
            let shown = train_users.len().min(6);
            let per_user = eval.contents.len() * eval.seeds_per_prompt;
            let mut rows = vec![every_seed0(&base_images[..per_user], eval.seeds_per_prompt)];
            for u in 0..shown {
                rows.push(every_seed0(
                    &images[u * per_user..(u + 1) * per_user],
                    eval.seeds_per_prompt,
                ));
            }
            let path = out.join("grid.png");
            save_png(&upscale_grid(&grid(&rows, 2), 4), &path).map_err(run_err)?;
            files.push(path);
            premier = Some(model);
        } else {
            ablations.push(row);
        }
    }

    // Cold start of the new users from the full model.
    let model = premier.ok_or_else(|| run_err("the full model was not trained"))?;
    let base_new = eval.generate(&world, &base_inner, &tokenizer, &new_users, None, false)?;
    let mut cold_start = vec![Row {
        name: "Base (new users)".into(),
        scores: eval.score(&world, &new_users, &base_new, &base_new),
    }];
    let runs = config.shots.len() * 2 * new_users.len();
    progress.phase("cold start", runs as u64);
    for &shots in &config.shots {
        for direct in [false, true] {
            let mut embeddings = Vec::new();
            for &u in &new_users {
                embeddings.push(cold_start_user(
                    config, &base.flux, &model, &encoded, u, shots, direct, device,
                )?);
                progress.tick(&format!(
                    "{} {} images",
                    if direct { "direct" } else { "linear" },
                    shots
                ));
            }
            let inner_adapter = model.adapter.valid();
            let lookup = |users: &[usize]| {
                let rows: Vec<Tensor<B::InnerBackend, 3>> = users
                    .iter()
                    .map(|u| embeddings[u - world.config.train_users].clone())
                    .collect();
                Ok(Tensor::cat(rows, 0))
            };
            let images = eval.generate(
                &world,
                &base_inner,
                &tokenizer,
                &new_users,
                Some((&inner_adapter, &lookup)),
                false,
            )?;
            cold_start.push(Row {
                name: format!(
                    "{} from {shots} images",
                    if direct {
                        "Direct embedding"
                    } else {
                        "Linear combination"
                    }
                ),
                scores: eval.score(&world, &new_users, &images, &base_new),
            });
        }
    }

    let report = Report {
        config: config.clone(),
        main,
        ablations,
        cold_start,
        stage1_final_loss,
        seconds: start.elapsed().as_secs_f64(),
        files: Vec::new(),
    };
    let md = out.join("report.md");
    write_atomic(&md, &report.markdown())?;
    let json = out.join("report.json");
    write_atomic(
        &json,
        &serde_json::to_string_pretty(&report).map_err(run_err)?,
    )?;
    files.push(md);
    files.push(json);
    Ok(Report { files, ..report })
}

fn write_atomic(path: &Path, text: &str) -> Result<(), ExperimentError> {
    write_via_temp(path, |tmp| {
        std::fs::write(tmp, text).map_err(|e| e.to_string())
    })
    .map_err(|e| run_err(format!("{}: {e}", path.display())))
}

/// The first seed's image of each prompt, from images ordered (prompt, seed).
fn every_seed0(images: &[RgbImage], seeds: usize) -> Vec<RgbImage> {
    images.iter().step_by(seeds.max(1)).cloned().collect()
}

/// Nearest-neighbour upscaling, so 32-pixel tiles are visible.
fn upscale_grid(image: &RgbImage, factor: u32) -> RgbImage {
    image::imageops::resize(
        image,
        image.width() * factor,
        image.height() * factor,
        image::imageops::FilterType::Nearest,
    )
}

fn encode_world<B: AutodiffBackend>(
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

fn select_rows<B: Backend, const D: usize>(t: &Tensor<B, D>, rows: &[usize]) -> Tensor<B, D> {
    let device = t.device();
    let idx: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
    t.clone().select(
        0,
        Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [rows.len()]), &device),
    )
}

#[allow(clippy::too_many_arguments)]
fn train_stage1<B: AutodiffBackend>(
    config: &ExperimentConfig,
    world: &World,
    flux: &Flux<B>,
    encoded: &Encoded<B>,
    variant: Variant,
    dir: &Path,
    device: &B::Device,
    progress: &mut impl Progress,
) -> Result<(Stage1Model<B>, f64), ExperimentError> {
    B::seed(device, config.seed.wrapping_add(1));
    let hidden = flux.hidden_size();
    let adapter_config = AdapterConfig {
        shared: variant.shared,
        distinct: variant.distinct,
        ..AdapterConfig::small(
            encoded.prompts.tokens.dims()[2],
            config.user_dim,
            hidden,
            flux.depth(),
        )
    };
    let adapter = PreferenceAdapter::<B>::init(&adapter_config, device).map_err(run_err)?;
    let users = UserTable::<B>::init(
        UserShape {
            users: world.config.train_users,
            tokens: config.user_tokens,
            dim: config.user_dim,
        },
        device,
    );
    let stage1 = Stage1Config {
        dispersion: variant.dispersion,
        optimizer: ProdigyConfig::premier(),
        seed: config.seed,
        ..Stage1Config::default()
    };
    let mut trainer = Stage1Trainer::new(flux.clone(), Stage1Model { adapter, users }, stage1);
    let counts: Vec<usize> = (0..world.config.train_users)
        .map(|u| encoded.images[u].1.len())
        .collect();
    let sampler = UserBatchSampler::new(counts, config.batch_size, config.seed).map_err(run_err)?;
    std::fs::create_dir_all(dir).map_err(run_err)?;
    let metrics_path = dir.join("metrics.jsonl");
    let _ = std::fs::remove_file(&metrics_path);
    let mut log = MetricsLog::append(&metrics_path).map_err(run_err)?;
    let mut records = Vec::new();
    progress.phase(
        &format!("stage 1: {}", variant.name),
        config.stage1_steps as u64,
    );
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
        progress.tick(&format!("loss {:.4} d {:.2e}", report.loss, report.d));
    }
    write_loss_curve(&records, &dir.join("loss.png")).map_err(run_err)?;
    let tail = records.len().min(20).max(1);
    let final_loss = records
        .iter()
        .rev()
        .take(tail)
        .map(|r| r.report.flow)
        .sum::<f64>()
        / tail as f64;
    Ok((trainer.model, final_loss))
}

/// Trains one new user from their first `shots` images; returns the embedding `[1, T, D]`.
#[allow(clippy::too_many_arguments)]
fn cold_start_user<B: AutodiffBackend>(
    config: &ExperimentConfig,
    flux: &Flux<B>,
    model: &Stage1Model<B>,
    encoded: &Encoded<B>,
    user: usize,
    shots: usize,
    direct: bool,
    device: &B::Device,
) -> Result<Tensor<B::InnerBackend, 3>, ExperimentError> {
    B::seed(
        device,
        config.seed.wrapping_add(user as u64 * 7 + shots as u64),
    );
    let (images, prompts) = &encoded.images[user];
    let shots = shots.min(prompts.len());
    let rows: Vec<usize> = (0..shots).collect();
    let prompt_rows: Vec<usize> = prompts[..shots].to_vec();
    let batch = Stage2Batch {
        x0: select_rows(images, &rows),
        latent_hw: LATENT_HW,
        text: select_rows(&encoded.prompts.tokens, &prompt_rows),
        pooled: select_rows(&encoded.prompts.pooled, &prompt_rows),
    };
    let shape = model.users.shape();
    let (new_user, optimizer) = if direct {
        (
            NewUser::Direct(UserEmbedding::init_direct(shape.tokens, shape.dim, device)),
            ColdStartOptimizer::Prodigy(ProdigyConfig::premier()),
        )
    } else {
        (
            NewUser::Linear(LinearCombination::init(shape.users, device)),
            Stage2Config::default().optimizer,
        )
    };
    let stage2 = Stage2Config {
        optimizer,
        seed: config.seed.wrapping_add(1000 + user as u64),
        ..Stage2Config::default()
    };
    let mut trainer = Stage2Trainer::new(
        flux.clone(),
        model.adapter.clone(),
        model.users.clone(),
        new_user,
        stage2,
    );
    for _ in 0..config.cold_start_steps {
        trainer.step(&batch).map_err(run_err)?;
    }
    Ok(trainer.embedding().map_err(run_err)?.inner())
}

/// Prompts × seeds every variant generates, per user.
struct EvalSet {
    contents: Vec<Content>,
    seeds_per_prompt: usize,
    /// The experiment's seed.
    seed: u64,
}

/// The embeddings `[users, tokens, dim]` of the given user indices.
type UserLookup<'a, B> = &'a dyn Fn(&[usize]) -> Result<Tensor<B, 3>, ExperimentError>;

impl EvalSet {
    /// The noise seed of user `u`, prompt `ci`, sample `k`.
    fn noise_seed(&self, u: usize, ci: usize, k: usize) -> u64 {
        10_000 + self.seed * 10_000_000 + (u * 10_000 + ci * 100 + k) as u64
    }

    /// Images ordered (user, prompt, seed): the base model, steered by the adapter and the
    /// users' embeddings when `personal` is given, with the users' taste words in the prompt
    /// when `taste_in_prompt`.
    fn generate<B: Backend>(
        &self,
        world: &World,
        base: &SynthBase<B>,
        tokenizer: &PromptTokenizer,
        users: &[usize],
        personal: Option<(&PreferenceAdapter<B>, UserLookup<'_, B>)>,
        taste_in_prompt: bool,
    ) -> Result<Vec<RgbImage>, ExperimentError> {
        let mut prompts = Vec::new();
        let mut row_users = Vec::new();
        let mut seeds = Vec::new();
        for &u in users {
            for (ci, c) in self.contents.iter().enumerate() {
                for k in 0..self.seeds_per_prompt {
                    prompts.push(if taste_in_prompt {
                        c.prompt_with_style(&world.users[u].taste.mode())
                    } else {
                        c.prompt()
                    });
                    row_users.push(u);
                    seeds.push(self.noise_seed(u, ci, k));
                }
            }
        }
        let mut out = Vec::with_capacity(prompts.len());
        const CHUNK: usize = 96;
        for start in (0..prompts.len()).step_by(CHUNK) {
            let end = (start + CHUNK).min(prompts.len());
            let refs: Vec<&str> = prompts[start..end].iter().map(|s| s.as_str()).collect();
            let text = base.text.encode(tokenizer, &refs).map_err(run_err)?;
            let delta: Option<TextModulation<B>> = match personal {
                Some((adapter, lookup)) => {
                    Some(adapter.forward(text.tokens.clone(), lookup(&row_users[start..end])?))
                }
                None => None,
            };
            out.extend(
                sample(
                    &base.flux,
                    &text,
                    delta.as_ref(),
                    &seeds[start..end],
                    SAMPLING_STEPS,
                )
                .map_err(run_err)?,
            );
        }
        Ok(out)
    }

    /// Mean scores of `images` (ordered as generated) against the users' tastes, the base's
    /// images of the same (user, prompt, seed), and each user's held-out image of the prompt.
    fn score(
        &self,
        world: &World,
        users: &[usize],
        images: &[RgbImage],
        base: &[RgbImage],
    ) -> Scores {
        let mut totals = [0.0f64; 4];
        let mut squares = 0.0f64;
        let mut i = 0;
        for &u in users {
            let taste = &world.users[u].taste;
            for c in &self.contents {
                let reference = world.held_out_image(u, *c, 0);
                for _ in 0..self.seeds_per_prompt {
                    let (img, b) = (&images[i], &base[i]);
                    let p = preference_score(img, taste);
                    let pb = preference_score(b, taste);
                    totals[0] += p as f64;
                    squares += (p as f64) * (p as f64);
                    totals[1] += if p > pb {
                        1.0
                    } else if p == pb {
                        0.5
                    } else {
                        0.0
                    };
                    totals[2] += prompt_fidelity(img, c) as f64;
                    totals[3] += image_distance(img, &reference.rgb) as f64;
                    i += 1;
                }
            }
        }
        let n = i.max(1) as f64;
        let mean = totals[0] / n;
        let variance = ((squares - n * mean * mean) / (n - 1.0).max(1.0)).max(0.0);
        Scores {
            preference: mean,
            preference_se: (variance / n).sqrt(),
            win_rate: totals[1] / n,
            fidelity: totals[2] / n,
            distance: totals[3] / n,
        }
    }
}

impl Report {
    /// The report as markdown tables.
    pub fn markdown(&self) -> String {
        let table = |rows: &[Row]| {
            let mut s = String::from(
                "| Method | Preference ± s.e. ↑ | Win rate vs base ↑ | Prompt fidelity ↑ | Distance ↓ |\n|---|---|---|---|---|\n",
            );
            for r in rows {
                s.push_str(&format!(
                    "| {} | {:.3} ± {:.3} | {:.3} | {:.3} | {:.3} |\n",
                    r.name,
                    r.scores.preference,
                    r.scores.preference_se,
                    r.scores.win_rate,
                    r.scores.fidelity,
                    r.scores.distance
                ));
            }
            s
        };
        let c = &self.config;
        let mut md = format!(
            "# Premier in miniature (seed {})\n\n\
             World: {} trained users, {} new users, {} liked images each; {} prompts × {} seeds \
             per user, {} Euler steps. Stage 1: {} steps of batch {}; cold start: {} steps.\n\
             Scores read pixels only: preference (ViPer-score analog), win rate against the base \
             for the same user, prompt and seed (ViPer-rate analog), prompt fidelity (CLIP-T2I \
             analog), distance to the user's held-out image of the prompt (LPIPS analog).\n\n",
            c.seed,
            c.world.train_users,
            c.world.new_users,
            c.world.images_per_user,
            c.eval_prompts,
            c.eval_seeds,
            SAMPLING_STEPS,
            c.stage1_steps,
            c.batch_size,
            c.cold_start_steps
        );
        md.push_str("## Trained users\n\n");
        md.push_str(&table(&self.main));
        if !self.ablations.is_empty() {
            md.push_str("\n## Ablations (trained users)\n\n");
            let premier = self.main.iter().filter(|r| r.name == "Premier");
            let rows: Vec<Row> = premier.chain(&self.ablations).cloned().collect();
            md.push_str(&table(&rows));
        }
        md.push_str("\n## Cold start (new users)\n\n");
        md.push_str(&table(&self.cold_start));
        md.push_str("\n## Claims\n\n");
        for line in self.claims() {
            md.push_str(&format!("- {line}\n"));
        }
        md.push_str(&format!(
            "\nStage-1 flow loss, mean of the last steps: {}.\n\nRan in {:.0} s.\n",
            self.stage1_final_loss
                .iter()
                .map(|(n, l)| format!("{n} {l:.4}"))
                .collect::<Vec<_>>()
                .join(", "),
            self.seconds
        ));
        md
    }

    /// Each of the paper's claims and whether this run reproduces it.
    pub fn claims(&self) -> Vec<String> {
        let find = |rows: &[Row], name: &str| {
            rows.iter()
                .find(|r| r.name.starts_with(name))
                .map(|r| r.scores)
        };
        let verdict = |ok: bool| if ok { "reproduced" } else { "NOT reproduced" };
        // "a has higher preference than b", judged against two standard errors of the difference.
        let higher = |a: Scores, b: Scores| {
            let margin = 2.0 * (a.preference_se.powi(2) + b.preference_se.powi(2)).sqrt();
            if a.preference - b.preference > margin {
                "reproduced"
            } else if b.preference - a.preference > margin {
                "NOT reproduced"
            } else {
                "inconclusive (difference within 2 standard errors)"
            }
        };
        let mut out = Vec::new();
        if let (Some(base), Some(premier)) = (find(&self.main, "Base"), find(&self.main, "Premier"))
        {
            out.push(format!(
                "Premier raises preference over the base ({:.3} → {:.3}): {}",
                base.preference,
                premier.preference,
                higher(premier, base)
            ));
            out.push(format!(
                "Premier keeps prompt fidelity within 0.05 of the base ({:.3} vs {:.3}): {}",
                premier.fidelity,
                base.fidelity,
                verdict(premier.fidelity >= base.fidelity - 0.05)
            ));
            if let Some(prompt) = find(&self.main, "Taste in the prompt") {
                out.push(format!(
                    "Premier beats the taste written in the prompt on preference ({:.3} vs {:.3}): {}",
                    premier.preference,
                    prompt.preference,
                    higher(premier, prompt)
                ));
            }
            for ablation in self.ablations.iter().filter(|a| a.name.starts_with("w/o")) {
                out.push(format!(
                    "{} scores below the full model on preference ({:.3} vs {:.3}): {}",
                    ablation.name,
                    ablation.scores.preference,
                    premier.preference,
                    higher(premier, ablation.scores)
                ));
            }
        }
        for &shots in &self.config.shots {
            let lin = find(
                &self.cold_start,
                &format!("Linear combination from {shots} "),
            );
            let dir = find(&self.cold_start, &format!("Direct embedding from {shots} "));
            if let (Some(lin), Some(dir)) = (lin, dir) {
                out.push(format!(
                    "With {shots} images the linear combination beats direct training on preference ({:.3} vs {:.3}): {}",
                    lin.preference,
                    dir.preference,
                    higher(lin, dir)
                ));
            }
        }
        out
    }
}
