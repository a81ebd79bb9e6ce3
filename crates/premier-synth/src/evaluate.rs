//! Scoring a method: the same prompts × noise seeds for every method, each image scored from
//! pixels and compared with the base's image from the same noise; standard errors clustered by
//! user (a user's images share one taste, so they are not independent draws).

use burn::prelude::*;
use image::RgbImage;
use premier_adapter::PreferenceAdapter;
use premier_mmdit::{FluxOps, TextModulation};
use premier_text::PromptTokenizer;
use serde::{Deserialize, Serialize};

use crate::base::SynthBase;
use crate::render::{render, Jitter};
use crate::sample::{sample, SAMPLING_STEPS};
use crate::score::{factor_scores, image_distance, preference_score, prompt_fidelity};
use crate::world::{rng_for, Content, Style, World, FACTORS};

/// Prompts × seeds every method generates, per user.
#[derive(Debug, Clone)]
pub struct EvalSet {
    /// The prompts, as the contents they ask for.
    pub contents: Vec<Content>,
    /// Noise seeds drawn per prompt (the same for every method).
    pub seeds_per_prompt: usize,
    /// The experiment's seed.
    pub seed: u64,
    /// Every user gets the same noise for a (prompt, sample) (for grids); otherwise each
    /// (user, prompt, sample) has its own.
    pub shared_noise: bool,
}

/// The embeddings `[users, tokens, dim]` of the given user indices.
pub type UserLookup<'a, B> = &'a (dyn Fn(&[usize]) -> Result<Tensor<B, 3>, String> + Sync);

/// Any Δ from the prompts' text tokens `[batch, txt_tokens, text_dim]` and each row's user (for
/// controls such as a free per-user Δ without adapter).
pub type DeltaFn<'a, B> =
    &'a (dyn Fn(Tensor<B, 3>, &[usize]) -> Result<TextModulation<B>, String> + Sync);

/// What a method's images are made from.
#[derive(Clone, Copy)]
pub enum Method<'a, B: Backend> {
    /// The base model on the plain prompts.
    Base,
    /// The base model with the user's taste (its mode) in words.
    TasteInPrompt,
    /// The base model steered by the adapter and the users' embeddings.
    Premier(&'a PreferenceAdapter<B>, UserLookup<'a, B>),
    /// The base model steered by any Δ.
    Steered(DeltaFn<'a, B>),
}

/// One image's scores.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ImageScore {
    /// Index into `World::users`.
    pub user: usize,
    /// Mean preference score over the user's images (0 to 1).
    pub preference: f32,
    /// Mean score of each taste factor.
    pub factors: [f32; FACTORS],
    /// Mean prompt fidelity: the content asked for is the content drawn.
    pub fidelity: f32,
    /// Mean pixel distance to the base model's image from the same noise.
    pub distance: f32,
}

/// The mean over users of each user's mean, and its standard error across users (0 for one
/// user). `per_user`: one value per user.
pub fn clustered(per_user: &[f64]) -> (f64, f64) {
    let n = per_user.len();
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    let mean = per_user.iter().sum::<f64>() / n as f64;
    if n < 2 {
        return (mean, 0.0);
    }
    let var = per_user.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    (mean, (var / n as f64).sqrt())
}

/// Per user, the mean of `value(i)` over that user's images `i` (images ordered by user, as
/// generated).
pub fn user_means(scores: &[ImageScore], value: impl Fn(usize) -> f64) -> Vec<f64> {
    let mut out: Vec<(usize, f64, usize)> = Vec::new();
    for (i, s) in scores.iter().enumerate() {
        match out.last_mut() {
            Some((u, sum, count)) if *u == s.user => {
                *sum += value(i);
                *count += 1;
            }
            _ => out.push((s.user, value(i), 1)),
        }
    }
    out.into_iter().map(|(_, sum, n)| sum / n as f64).collect()
}

/// A paired comparison `a − b` of `value` over the same images (same users, prompts, noise):
/// the mean difference and its user-clustered standard error.
pub fn paired(
    a: &[ImageScore],
    b: &[ImageScore],
    value: impl Fn(&ImageScore) -> f32,
) -> (f64, f64) {
    let n = a.len().min(b.len());
    clustered(&user_means(&a[..n], |i| {
        (value(&a[i]) - value(&b[i])) as f64
    }))
}

/// A method's summary over users × prompts × seeds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    /// Preference score (ViPer-score analog), higher is better.
    pub preference: f64,
    /// Standard error of `preference`, clustered by user.
    pub preference_se: f64,
    /// Mean preference difference to the base's image from the same noise.
    pub vs_base: f64,
    /// Its standard error, clustered by user.
    pub vs_base_se: f64,
    /// Preference per factor (palette, background, texture, pattern).
    pub factors: [f64; FACTORS],
    /// Share of images preferred over the base's for the same user, prompt and seed (ties
    /// half), the ViPer-rate analog.
    pub win_rate: f64,
    /// Prompt fidelity (CLIP-T2I analog), higher is better.
    pub fidelity: f64,
    /// Distance to the user's held-out image of the prompt (LPIPS analog), lower is better.
    pub distance: f64,
}

impl Scores {
    /// Summarises `images` against the base's `base` (same order).
    pub fn of(images: &[ImageScore], base: &[ImageScore]) -> Self {
        let n = images.len().max(1) as f64;
        let (preference, preference_se) =
            clustered(&user_means(images, |i| images[i].preference as f64));
        let (vs_base, vs_base_se) = paired(images, base, |s| s.preference);
        let mean = |f: &dyn Fn(&ImageScore) -> f64| images.iter().map(f).sum::<f64>() / n;
        let win_rate = images
            .iter()
            .zip(base)
            .map(|(a, b)| {
                if a.preference > b.preference {
                    1.0
                } else if a.preference == b.preference {
                    0.5
                } else {
                    0.0
                }
            })
            .sum::<f64>()
            / n;
        Self {
            preference,
            preference_se,
            vs_base,
            vs_base_se,
            factors: std::array::from_fn(|f| mean(&|s| s.factors[f] as f64)),
            win_rate,
            fidelity: mean(&|s| s.fidelity as f64),
            distance: mean(&|s| s.distance as f64),
        }
    }
}

impl EvalSet {
    /// `prompts` contents spread over all contents, `seeds_per_prompt` noise seeds each.
    pub fn new(prompts: usize, seeds_per_prompt: usize, seed: u64) -> Self {
        let all = Content::all();
        Self {
            contents: (0..prompts)
                .map(|i| all[(i * all.len()) / prompts.max(1)])
                .collect(),
            seeds_per_prompt,
            seed,
            shared_noise: false,
        }
    }

    /// The noise seed of user `u`, prompt `ci`, sample `k`: the same for every method, so each
    /// image has a base image from the same noise.
    fn noise_seed(&self, u: usize, ci: usize, k: usize) -> u64 {
        let u = if self.shared_noise { 0 } else { u };
        10_000 + self.seed * 10_000_000 + (u * 10_000 + ci * 100 + k) as u64
    }

    /// (user, content index, sample) of every image, in generation order.
    fn slots<'a>(&'a self, users: &'a [usize]) -> impl Iterator<Item = (usize, usize, usize)> + 'a {
        users.iter().flat_map(move |&u| {
            (0..self.contents.len())
                .flat_map(move |ci| (0..self.seeds_per_prompt).map(move |k| (u, ci, k)))
        })
    }

    /// Images ordered (user, prompt, seed) of `method` for `users`.
    pub fn generate<B: FluxOps>(
        &self,
        world: &World,
        base: &SynthBase<B>,
        tokenizer: &PromptTokenizer,
        users: &[usize],
        method: Method<'_, B>,
    ) -> Result<Vec<RgbImage>, String> {
        let mut prompts = Vec::new();
        let mut row_users = Vec::new();
        let mut seeds = Vec::new();
        for (u, ci, k) in self.slots(users) {
            let c = self.contents[ci];
            prompts.push(match method {
                Method::TasteInPrompt => c.prompt_with_style(&world.users[u].taste.mode()),
                _ => c.prompt(),
            });
            row_users.push(u);
            seeds.push(self.noise_seed(u, ci, k));
        }
        let mut out = Vec::with_capacity(prompts.len());
        const CHUNK: usize = 96;
        for start in (0..prompts.len()).step_by(CHUNK) {
            let end = (start + CHUNK).min(prompts.len());
            let refs: Vec<&str> = prompts[start..end].iter().map(|s| s.as_str()).collect();
            let text = base
                .text
                .encode(tokenizer, &refs)
                .map_err(|e| e.to_string())?;
            let delta: Option<TextModulation<B>> = match method {
                Method::Premier(adapter, lookup) => {
                    Some(adapter.forward(text.tokens.clone(), lookup(&row_users[start..end])?))
                }
                Method::Steered(delta) => Some(delta(text.tokens.clone(), &row_users[start..end])?),
                _ => None,
            };
            out.extend(
                sample(
                    &base.flux,
                    &text,
                    delta.as_ref(),
                    &seeds[start..end],
                    SAMPLING_STEPS,
                )
                .map_err(|e| e.to_string())?,
            );
        }
        Ok(out)
    }

    /// Reference images instead of generated ones: a held-out image in the user's taste
    /// (`in_taste`), or the prompt's content in a uniformly random style.
    pub fn references(&self, world: &World, users: &[usize], in_taste: bool) -> Vec<RgbImage> {
        self.slots(users)
            .map(|(u, ci, k)| {
                let c = self.contents[ci];
                if in_taste {
                    // Index 1 onwards: index 0 is the distance score's reference.
                    world.held_out_image(u, c, 1 + k).rgb
                } else {
                    let mut rng = rng_for(self.seed, 7, self.noise_seed(u, ci, k));
                    let style = Style::random(&mut rng);
                    let jitter = Jitter::draw(&mut rng);
                    render(c, style, &jitter)
                }
            })
            .collect()
    }

    /// Scores `images` (ordered as generated) against the users' tastes and each user's held-out
    /// image of the prompt.
    pub fn score(&self, world: &World, users: &[usize], images: &[RgbImage]) -> Vec<ImageScore> {
        self.slots(users)
            .zip(images)
            .map(|((u, ci, _), img)| {
                let taste = &world.users[u].taste;
                let c = self.contents[ci];
                let reference = world.held_out_image(u, c, 0);
                ImageScore {
                    user: u,
                    preference: preference_score(img, taste),
                    factors: factor_scores(img, taste),
                    fidelity: prompt_fidelity(img, &c),
                    distance: image_distance(img, &reference.rgb),
                }
            })
            .collect()
    }
}
