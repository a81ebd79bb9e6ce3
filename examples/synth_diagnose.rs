//! Diagnostics of stage 1 on the synthetic world (docs/synth.md, "What stage 1 learns"):
//!
//! 1. **Headroom**: the base's flow loss on the trained users' liked images with the plain
//!    prompt and with the image's style in words — how much a perfect taste could lower it.
//! 2. **Free Δ** (the issue's control): a per-user, per-token Δ trained directly (Adam, no
//!    adapter): does the flow loss fall and preference rise?
//! 3. **Premier**: stage 1 as the quickstart runs it, with the same validation loss and the
//!    user-dependent part of its Δ (Δ minus its mean over users for the same prompt).
//!
//! Every loss is measured on the trained users' own (training) images with fixed noise and
//! times (the same for every model), per user, with a user-clustered standard error: it shows
//! what stage 1 fits, not how it generalises (preference on the evaluation set does that).
//!
//! ```text
//! cargo run --release --example synth_diagnose -- [--seed 0] [--free-steps 600] [--free-lr 0.01]
//!     [--premier-steps N] [--every 200] [--dispersion None] [--init FanInMatched]
//!     [--d0 X] [--growth-rate 1] [--draws 2] [--batch N]
//! ```
//!
//! Stage-1 steps, batch, d0, the user table's shape and the evaluation set default to the
//! quickstart's (`ExperimentConfig::default()`), so the diagnosis trains what the quickstart trains.

use burn::backend::{Autodiff, Flex};
use burn::module::{AutodiffModule, Module, Param};
use burn::prelude::*;
use clap::Parser;
use premier::adapter::AdapterInit;
use premier::losses::DispersionVariant;
use premier::mmdit::{Flux, TextModulation};
use premier::synth::base::{shipped_base_dir, SynthBase};
use premier::synth::codec::{encode, LATENT_HW};
use premier::synth::evaluate::{clustered, paired, EvalSet, ImageScore, Method};
use premier::synth::experiment::ExperimentConfig;
use premier::synth::text::load_tokenizer;
use premier::synth::world::{World, WorldConfig};
use premier::text::TextConditioning;
use premier::train::adamw::{AdamW, AdamWConfig};
use premier::train::params::{apply, gradients, scalar};
use premier::train::prodigy::ProdigyConfig;
use premier::train::sampler::UserBatchSampler;
use premier::train::schedule::StepDecay;
use premier::train::stage1::{
    modulated_flow_loss, step_noise, FlowBatch, Stage1Batch, Stage1Config, Stage1Model,
    Stage1Trainer,
};

type Train = Autodiff<Flex>;
type Infer = Flex;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Steps of the free per-user Δ (0 skips it).
    #[arg(long, default_value_t = 600)]
    free_steps: usize,
    /// Adam's learning rate for the free Δ.
    #[arg(long, default_value_t = 0.01)]
    free_lr: f64,
    /// Stage-1 steps of Premier (0 skips it).
    #[arg(long, default_value_t = ExperimentConfig::default().stage1_steps)]
    premier_steps: usize,
    /// Validation every this many steps.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..))]
    every: u64,
    /// Premier's dispersion: Hinge, Stable, Released, Dispersive or None (default: the
    /// quickstart's).
    #[arg(long)]
    dispersion: Option<String>,
    /// Premier's Prodigy d0.
    #[arg(long, default_value_t = ExperimentConfig::default().stage1_d0)]
    d0: f64,
    /// How Premier's step ends: constant, cosine (over the whole run) or cosine-tail:N (the
    /// last N steps) (default: the quickstart's).
    #[arg(long)]
    lr_schedule: Option<StepDecay>,
    /// Prodigy's growth rate (1 freezes d at d0: Adam at lr d0).
    #[arg(long, default_value_t = f64::INFINITY)]
    growth_rate: f64,
    /// Premier's adapter init: Released or FanInMatched.
    #[arg(long, default_value = "FanInMatched")]
    init: String,
    /// Noise draws per validation image.
    #[arg(long, default_value_t = 2)]
    draws: usize,
    /// Users (distinct) per stage-1 and free-Δ batch.
    #[arg(long, default_value_t = ExperimentConfig::default().batch_size)]
    batch: usize,
}

/// A Δ_shared per (user, text token), no adapter: `[users, txt_tokens, hidden]`.
#[derive(Module, Debug)]
struct FreeDelta<B: Backend> {
    delta: Param<Tensor<B, 3>>,
}

impl<B: Backend> FreeDelta<B> {
    fn of(&self, users: &[usize]) -> TextModulation<B> {
        let device = self.delta.val().device();
        let idx: Vec<i64> = users.iter().map(|&u| u as i64).collect();
        let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [users.len()]), &device);
        TextModulation {
            shared: Some(self.delta.val().select(0, idx)),
            distinct: None,
        }
    }
}

/// Per trained user: its images `[24, tokens, channels]`, plain and told conditioning.
struct Validation<B: Backend> {
    images: Vec<Tensor<B, 3>>,
    plain: Vec<TextConditioning<B>>,
    told: Vec<TextConditioning<B>>,
    noise: Vec<(Tensor<B, 3>, Tensor<B, 1>)>,
}

fn repeat(c: &TextConditioning<Infer>, k: usize) -> TextConditioning<Infer> {
    TextConditioning {
        tokens: c.tokens.clone().repeat_dim(0, k),
        pooled: c.pooled.clone().repeat_dim(0, k),
    }
}

/// Mean flow loss on each user's own images with `delta(user_rows_text_tokens, user)` (None: the base).
fn val_losses(
    flux: &Flux<Infer>,
    v: &Validation<Infer>,
    told: bool,
    delta: &dyn Fn(Tensor<Infer, 3>, usize) -> Option<TextModulation<Infer>>,
) -> Vec<f64> {
    (0..v.images.len())
        .map(|u| {
            let (noise, t) = &v.noise[u];
            let k = noise.dims()[0] / v.images[u].dims()[0];
            let x0 = v.images[u].clone().repeat_dim(0, k);
            let text = repeat(if told { &v.told[u] } else { &v.plain[u] }, k);
            let d = delta(text.tokens.clone(), u);
            scalar(
                modulated_flow_loss(
                    flux,
                    FlowBatch {
                        x0: &x0,
                        latent_hw: LATENT_HW,
                        text: &text.tokens,
                        pooled: &text.pooled,
                    },
                    noise.clone(),
                    t.clone(),
                    Some(1.0),
                    d.as_ref(),
                )
                .expect("validation forward"),
            )
        })
        .collect()
}

fn diff(a: &[f64], b: &[f64]) -> String {
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let (m, se) = clustered(&d);
    format!("{m:+.5} ± {se:.5}")
}

fn mean(a: &[f64]) -> f64 {
    a.iter().sum::<f64>() / a.len() as f64
}

/// RMS of Δ (all blocks), of its mean over users and of the rest, for every content prompt:
/// `[users, tokens, …]` per prompt.
fn user_dependence(
    model: &Stage1Model<Infer>,
    prompts: &TextConditioning<Infer>,
    users: usize,
) -> (f64, f64, f64) {
    let ids: Vec<usize> = (0..users).collect();
    let emb = model.users.lookup(&ids).expect("users");
    let (mut all, mut common, mut rest) = (0.0, 0.0, 0.0);
    let n = prompts.tokens.dims()[0];
    for p in 0..n {
        let text = prompts.tokens.clone().narrow(0, p, 1).repeat_dim(0, users);
        let d = model.adapter.forward(text, emb.clone());
        let blocks = d.distinct.as_ref().map_or(1, |x| x.dims()[2]);
        let total: Tensor<Infer, 4> = match (d.shared, d.distinct) {
            (Some(s), Some(x)) => s.unsqueeze_dim::<4>(2) + x,
            (Some(s), None) => s.unsqueeze_dim::<4>(2).repeat_dim(2, blocks),
            (None, Some(x)) => x,
            (None, None) => return (0.0, 0.0, 0.0),
        };
        let m = total.clone().mean_dim(0);
        let r = total.clone() - m.clone();
        let rms = |t: Tensor<Infer, 4>| scalar(t.powi_scalar(2).mean().sqrt());
        all += rms(total) / n as f64;
        common += rms(m) / n as f64;
        rest += rms(r) / n as f64;
    }
    (all, common, rest)
}

fn main() -> anyhow::Result<()> {
    premier::allocator::retain_freed_memory();
    let args = Args::parse();
    let device = Default::default();
    let dir = shipped_base_dir();
    let (base, _) = SynthBase::<Train>::load(&dir, &device)?;
    let tokenizer = load_tokenizer(&dir)?;
    let inner = base.valid();
    let world = World::new(WorldConfig {
        seed: args.seed,
        ..WorldConfig::default()
    });
    let users = world.config.train_users;
    let contents = premier::synth::world::Content::all();
    let prompts: Vec<String> = contents.iter().map(|c| c.prompt()).collect();
    let refs: Vec<&str> = prompts.iter().map(|s| s.as_str()).collect();
    let all_prompts = inner.text.encode(&tokenizer, &refs)?;
    let null = inner.text.encode(&tokenizer, &[""])?;
    let y_rms = {
        let t = Tensor::<Infer, 1>::full([prompts.len()], 0.5, &device);
        let y = inner
            .flux
            .conditioning_vector(t, all_prompts.pooled.clone(), None);
        scalar(y.powi_scalar(2).mean().sqrt())
    };

    // Validation set: every liked image of every trained user, fixed noise and times.
    let sampler = Stage1Config::default().timesteps;
    let mut v = Validation {
        images: vec![],
        plain: vec![],
        told: vec![],
        noise: vec![],
    };
    let mut train_images = Vec::new();
    for u in 0..users {
        let liked = world.liked_images(u);
        let rgb: Vec<&image::RgbImage> = liked.iter().map(|i| &i.rgb).collect();
        let x0 = encode::<Infer>(&rgb, &device);
        let plain: Vec<String> = liked.iter().map(|i| i.content.prompt()).collect();
        let told: Vec<String> = liked
            .iter()
            .map(|i| i.content.prompt_with_style(&i.style))
            .collect();
        let enc = |p: &[String]| {
            let r: Vec<&str> = p.iter().map(|s| s.as_str()).collect();
            inner.text.encode(&tokenizer, &r)
        };
        let [n, tk, ch] = x0.dims();
        v.noise.push(step_noise(
            9_999,
            u as u64,
            &sampler,
            [n * args.draws, tk, ch],
            &device,
        ));
        v.plain.push(enc(&plain)?);
        v.told.push(enc(&told)?);
        let rows: Vec<usize> = liked
            .iter()
            .map(|i| contents.iter().position(|c| *c == i.content).unwrap_or(0))
            .collect();
        train_images.push((Tensor::<Train, 3>::from_inner(x0.clone()), rows));
        v.images.push(x0);
    }
    let none = |_: Tensor<Infer, 3>, _: usize| None;
    let base_plain = val_losses(&inner.flux, &v, false, &none);
    let base_told = val_losses(&inner.flux, &v, true, &none);
    println!("seed {}: RMS(y) at t = 0.5: {y_rms:.4}", args.seed);
    println!(
        "headroom: base plain {:.5}, told {:.5}, told − plain {}",
        mean(&base_plain),
        mean(&base_told),
        diff(&base_told, &base_plain)
    );

    let quickstart = ExperimentConfig::default();
    let eval = EvalSet::new(quickstart.eval_prompts, quickstart.eval_seeds, args.seed);
    let train_users: Vec<usize> = (0..users).collect();
    // Each method's images scored on the trained users (same prompts and noise for all).
    let scores_of = |method: Method<'_, Infer>| -> anyhow::Result<Vec<ImageScore>> {
        let images = eval
            .generate(&world, &inner, &tokenizer, &train_users, method)
            .map_err(anyhow::Error::msg)?;
        Ok(eval.score(&world, &train_users, &images))
    };
    let base_scores = scores_of(Method::Base)?;
    // Preference paired with the base's image from the same noise, ± user-clustered s.e.
    let vs_base = |method: Method<'_, Infer>| -> anyhow::Result<(f64, f64)> {
        Ok(paired(&scores_of(method)?, &base_scores, |s| s.preference))
    };
    let counts: Vec<usize> = (0..users).map(|u| train_images[u].1.len()).collect();
    let batch_sampler =
        UserBatchSampler::new(counts, args.batch, args.seed).map_err(|e| anyhow::anyhow!(e))?;
    let batch_of = |step: u64| {
        let picks = batch_sampler.batch(step);
        let x0 = Tensor::cat(
            picks
                .iter()
                .map(|&(u, i)| train_images[u].0.clone().narrow(0, i, 1))
                .collect(),
            0,
        );
        let rows: Vec<i64> = picks
            .iter()
            .map(|&(u, i)| train_images[u].1[i] as i64)
            .collect();
        let idx = Tensor::<Train, 1, Int>::from_data(TensorData::new(rows, [picks.len()]), &device);
        Stage1Batch {
            x0,
            latent_hw: LATENT_HW,
            text: Tensor::from_inner(all_prompts.tokens.clone()).select(0, idx.clone()),
            pooled: Tensor::from_inner(all_prompts.pooled.clone()).select(0, idx),
            users: picks.iter().map(|p| p.0).collect(),
            null_text: Some(Tensor::from_inner(null.tokens.clone())),
        }
    };

    if args.free_steps > 0 {
        let [_, tokens, _] = all_prompts.tokens.dims();
        let hidden = inner.flux.hidden_size();
        let mut free = FreeDelta::<Train> {
            delta: Param::from_tensor(Tensor::zeros([users, tokens, hidden], &device)),
        };
        let mut adam = AdamW::new(AdamWConfig {
            lr: args.free_lr,
            weight_decay: 0.0,
            ..AdamWConfig::default()
        });
        let flux = base.flux.clone().no_grad();
        for step in 0..args.free_steps {
            let batch = batch_of(step as u64);
            let (noise, t) = step_noise(args.seed, step as u64, &sampler, batch.x0.dims(), &device);
            let loss = modulated_flow_loss(
                &flux,
                FlowBatch {
                    x0: &batch.x0,
                    latent_hw: LATENT_HW,
                    text: &batch.text,
                    pooled: &batch.pooled,
                },
                noise,
                t,
                Some(1.0),
                Some(&free.of(&batch.users)),
            )?;
            let grads = gradients(&free, loss);
            free = apply(free, grads, None, |p, g| adam.step(p, g))
                .map_err(|norm| anyhow::anyhow!("step {}: gradient norm {norm}", step + 1))?
                .0;
            if (step as u64 + 1) % args.every == 0 || step + 1 == args.free_steps {
                let f = free.valid();
                let l = val_losses(&inner.flux, &v, false, &|tokens, u| {
                    Some(f.of(&vec![u; tokens.dims()[0]]))
                });
                let rms = scalar(f.delta.val().powi_scalar(2).mean().sqrt());
                let m = f.delta.val().mean_dim(0);
                let rest = scalar((f.delta.val() - m).powi_scalar(2).mean().sqrt());
                println!(
                    "free Δ step {:5}: loss − base {}, RMS(Δ)/RMS(y) {:.3}, user part {:.3}",
                    step + 1,
                    diff(&l, &base_plain),
                    rms / y_rms,
                    rest / y_rms
                );
            }
        }
        let f = free.valid();
        let steer = |_tokens: Tensor<Infer, 3>, rows: &[usize]| Ok(f.of(rows));
        let (m, se) = vs_base(Method::Steered(&steer))?;
        println!("free Δ preference vs base: {m:+.3} ± {se:.3}");
    }

    if args.premier_steps > 0 {
        use premier::adapter::{AdapterConfig, PreferenceAdapter};
        use premier::users::{UserShape, UserTable};
        Train::seed(&device, args.seed.wrapping_add(1));
        let adapter_config = AdapterConfig::small(
            all_prompts.tokens.dims()[2],
            quickstart.user_dim,
            inner.flux.hidden_size(),
            inner.flux.depth(),
        );
        let model = Stage1Model {
            adapter: PreferenceAdapter::<Train>::init_with(
                &adapter_config,
                args.init
                    .parse::<AdapterInit>()
                    .map_err(|e| anyhow::anyhow!("--init: {e}"))?,
                &device,
            )?,
            users: UserTable::<Train>::init(
                UserShape {
                    users,
                    tokens: quickstart.user_tokens,
                    dim: quickstart.user_dim,
                },
                &device,
            ),
        };
        let config = Stage1Config {
            dispersion: match &args.dispersion {
                Some(name) => DispersionVariant::parse_choice(name)
                    .map_err(|e| anyhow::anyhow!("--dispersion: {e}"))?,
                None => quickstart.dispersion,
            },
            optimizer: ProdigyConfig {
                d0: args.d0,
                growth_rate: args.growth_rate,
                ..ProdigyConfig::premier()
            },
            lr_schedule: args
                .lr_schedule
                .unwrap_or(quickstart.stage1_decay)
                .schedule(args.premier_steps as u64),
            seed: args.seed,
            ..Stage1Config::default()
        };
        let mut trainer = Stage1Trainer::new(base.flux.clone(), model, config);
        // Training time alone (validation excluded), for steps-per-second comparisons.
        let mut train_time = std::time::Duration::ZERO;
        for step in 0..args.premier_steps {
            let started = std::time::Instant::now();
            let report = trainer.step(&batch_of(step as u64))?;
            train_time += started.elapsed();
            if (step as u64 + 1) % args.every == 0 || step + 1 == args.premier_steps {
                let m = trainer.model.valid();
                let ids: Vec<usize> = (0..users).collect();
                let emb = m.users.lookup(&ids)?;
                let l = val_losses(&inner.flux, &v, false, &|tokens, u| {
                    let k = tokens.dims()[0];
                    Some(
                        m.adapter
                            .forward(tokens, emb.clone().narrow(0, u, 1).repeat_dim(0, k)),
                    )
                });
                let (all, common, rest) = user_dependence(&m, &all_prompts, users);
                println!(
                    "Premier step {:5}: loss − base {}, RMS(Δ)/RMS(y) {:.3}, common {:.3}, user part {:.3}, d {:.2e}, {:.0} s training",
                    step + 1,
                    diff(&l, &base_plain),
                    all / y_rms,
                    common / y_rms,
                    rest / y_rms,
                    report.d,
                    train_time.as_secs_f64()
                );
            }
        }
        let m = trainer.model.valid();
        let lookup = |ids: &[usize]| m.users.lookup(ids).map_err(|e| e.to_string());
        let (pm, se) = vs_base(Method::Premier(&m.adapter, &lookup))?;
        println!("Premier preference vs base: {pm:+.3} ± {se:.3}");
    }
    Ok(())
}
