//! Personalized generation: prompts and users in, images out.

use std::time::{Duration, Instant};

use burn::prelude::*;
use premier_adapter::PreferenceAdapter;
use premier_mmdit::{img_ids, pack, txt_ids, unpack, Flux, FluxOps, TextModulation};
use premier_text::bounded_cache::{tensor_bytes, BoundedCache};
use premier_text::{TextConditioning, TextEncoder};
use premier_users::{UserRef, UserTable};
use premier_vae::{Autoencoder, AutoencoderConfig, Tiling};

use crate::codec::{LatentCodec, LatentSpace, VaeCodec};
use crate::error::PipelineError;
use crate::noise::seeded_noise;
use crate::sampler::{denoise, StepObserver};
use crate::schedule::schedule;

/// The largest image side a request may ask for: beyond it the activations alone outgrow any
/// machine, and allocating them would abort the process instead of returning an error.
pub const MAX_SIDE: usize = 4096;
/// The most sampling steps a request may ask for (FLUX.1-dev samples in 28–50): beyond it a
/// typo runs for days, and the schedule's allocation can overflow.
pub const MAX_STEPS: usize = 1000;
/// Whose taste an image follows.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum UserChoice {
    /// Plain FLUX (Δ = 0).
    Base,
    /// A Premier user: table index, embedding file or coefficient file.
    User(UserRef),
}

/// One batch of images: entry `i` is `prompts[i]` for `users[i]` with `seeds[i]`.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    /// One per image.
    pub prompts: Vec<String>,
    /// One per image; empty means every image is [`UserChoice::Base`].
    pub users: Vec<UserChoice>,
    /// One per image: the seed of its initial noise.
    pub seeds: Vec<u64>,
    /// Pixels; multiples of 16.
    pub width: usize,
    /// Pixels; multiples of 16.
    pub height: usize,
    /// Euler steps (1 to [`MAX_STEPS`]).
    pub steps: usize,
    /// Distilled guidance scale (dev: 3.5 in diffusers, 2.5 in Premier's evaluation).
    pub guidance: f32,
    /// Resolution-dependent schedule shift (dev: true, schnell: false).
    pub shift: bool,
    /// Preference strength α: Δ is multiplied by α (0 = plain FLUX, 1 = as trained).
    pub alpha: f64,
}

/// Where the time went.
#[derive(Debug, Clone, Default)]
pub struct Timings {
    /// Encoding the prompts (cached ones are free).
    pub text: Duration,
    /// Computing Δ (once per (prompt, user), not per step).
    pub delta: Duration,
    /// The Euler loop.
    pub denoise: Duration,
    /// The autoencoder's decoding.
    pub decode: Duration,
}

/// Images `[batch, 3, height, width]` in [-1, 1] and the time each stage took.
#[derive(Debug, Clone)]
pub struct Generated<B: Backend> {
    /// `[batch, 3, height, width]` in [-1, 1].
    pub images: Tensor<B, 4>,
    /// Where the time went.
    pub timings: Timings,
}

/// Everything needed to turn prompts and users into images. The models are read-only once
/// built (getters only), so the prompt features and Δ it caches cannot go stale.
pub struct Generator<B: Backend> {
    flux: Flux<B>,
    vae: Autoencoder<B>,
    vae_config: AutoencoderConfig,
    text: TextEncoder<B>,
    /// Premier's adapters and trained users; without them only [`UserChoice::Base`] works.
    adapter: Option<PreferenceAdapter<B>>,
    users: Option<UserTable<B>>,
    device: B::Device,
    /// Decode in tiles (less memory for large images; approximate near the seams); `None`:
    /// whole.
    pub vae_tiling: Option<Tiling>,
    /// Δ per (prompt, user), computed once and reused across requests.
    delta_cache: DeltaCache<B>,
}

impl<B: FluxOps> Generator<B> {
    /// The generator of these models; `adapter` and `users` together make users other than
    /// [`UserChoice::Base`] drawable. Caches start empty at their default budgets.
    pub fn new(
        flux: Flux<B>,
        vae: Autoencoder<B>,
        vae_config: AutoencoderConfig,
        text: TextEncoder<B>,
        adapter: Option<PreferenceAdapter<B>>,
        users: Option<UserTable<B>>,
        device: B::Device,
    ) -> Self {
        Self {
            flux,
            vae,
            vae_config,
            text,
            adapter,
            users,
            device,
            vae_tiling: None,
            delta_cache: DeltaCache::new(DEFAULT_DELTA_CACHE_BYTES),
        }
    }

    /// The transformer.
    pub fn flux(&self) -> &Flux<B> {
        &self.flux
    }

    /// The autoencoder.
    pub fn vae(&self) -> &Autoencoder<B> {
        &self.vae
    }

    /// The autoencoder's config.
    pub fn vae_config(&self) -> &AutoencoderConfig {
        &self.vae_config
    }

    /// T5, CLIP and their tokenizers.
    pub fn text(&self) -> &TextEncoder<B> {
        &self.text
    }

    /// Premier's adapters, if loaded.
    pub fn adapter(&self) -> Option<&PreferenceAdapter<B>> {
        self.adapter.as_ref()
    }

    /// The trained users, if loaded.
    pub fn users(&self) -> Option<&UserTable<B>> {
        self.users.as_ref()
    }

    /// Where everything runs.
    pub fn device(&self) -> &B::Device {
        &self.device
    }

    /// Bounds the prompt-feature and Δ caches to these many bytes (0: no cache), evicting the
    /// least recently used entries (defaults: [`premier_text::DEFAULT_TEXT_CACHE_BYTES`],
    /// [`DEFAULT_DELTA_CACHE_BYTES`]).
    pub fn set_cache_budgets(&mut self, text_bytes: usize, delta_bytes: usize) {
        self.text.set_cache_budget(text_bytes);
        self.delta_cache.set_budget(delta_bytes);
    }

    /// Bytes the caches hold: (prompt features, Δ).
    pub fn cached_bytes(&self) -> (usize, usize) {
        (self.text.cached_bytes(), self.delta_cache.bytes())
    }

    /// Generates one image per prompt; see [`GenerateRequest`].
    pub fn generate(
        &mut self,
        request: &GenerateRequest,
        observer: &mut impl StepObserver,
    ) -> Result<Generated<B>, PipelineError> {
        check_request(request, self.adapter.is_some() && self.users.is_some())?;
        let mut timings = Timings::default();

        let start = Instant::now();
        let prompts: Vec<&str> = request.prompts.iter().map(String::as_str).collect();
        let text = self.text.encode(&prompts, &self.device)?;
        timings.text = start.elapsed();

        let start = Instant::now();
        let modulation = match (&self.adapter, &self.users) {
            (Some(adapter), Some(table)) => request_modulation(
                adapter,
                table,
                request,
                &text.tokens,
                (self.flux.hidden_size(), self.flux.depth()),
                &mut self.delta_cache,
            )?,
            _ => None,
        };
        timings.delta = start.elapsed();

        let start = Instant::now();
        let codec = VaeCodec {
            vae: &self.vae,
            config: &self.vae_config,
            tiling: self.vae_tiling,
        };
        let latent = denoise_latents(
            &self.flux,
            &request.sampling(),
            codec.space(),
            &text,
            modulation.as_ref(),
            observer,
        )?;
        timings.denoise = start.elapsed();

        let start = Instant::now();
        let images = codec.decode(latent)?;
        timings.decode = start.elapsed();
        Ok(Generated { images, timings })
    }
}

/// Checks `request` before any work; `personalizable`: adapters and a user table are loaded.
pub fn check_request(request: &GenerateRequest, personalizable: bool) -> Result<(), PipelineError> {
    let r = request;
    if r.width == 0 || r.height == 0 || r.width % 16 != 0 || r.height % 16 != 0 {
        return Err(PipelineError::Size {
            width: r.width,
            height: r.height,
        });
    }
    if r.width > MAX_SIDE || r.height > MAX_SIDE {
        return Err(PipelineError::Request(format!(
            "image size {}×{}: at most {MAX_SIDE} pixels a side (FLUX.1 was trained up to \
             about 2 megapixels; a {MAX_SIDE}² image already needs {} image tokens)",
            r.width,
            r.height,
            (MAX_SIDE / 16) * (MAX_SIDE / 16)
        )));
    }
    let n = r.prompts.len();
    if n == 0 || r.seeds.len() != n || !(r.users.is_empty() || r.users.len() == n) {
        return Err(PipelineError::Request(format!(
            "{} prompts, {} seeds and {} users: give one seed per prompt and one user per prompt (or none)",
            n,
            r.seeds.len(),
            r.users.len()
        )));
    }
    if r.steps == 0 || r.steps > MAX_STEPS {
        return Err(PipelineError::Request(format!(
            "{} sampling steps: at least 1, at most {MAX_STEPS}",
            r.steps
        )));
    }
    if !r.alpha.is_finite() || !r.guidance.is_finite() {
        return Err(PipelineError::Request(format!(
            "alpha {} and guidance {} must be finite numbers",
            r.alpha, r.guidance
        )));
    }
    let personal = r.users.iter().any(|u| *u != UserChoice::Base);
    if personal && !personalizable {
        return Err(PipelineError::Request(
            "a user was asked for, but no adapter and user table are loaded".into(),
        ));
    }
    Ok(())
}

/// Δ per (prompt, user), computed once and reused across requests, bounded in bytes (the least
/// recently used evicted first).
pub type DeltaCache<B> = BoundedCache<(String, UserChoice), TextModulation<B>>;

/// The Δ cache's default budget: 8 (prompt, user) pairs at FLUX.1-dev's sizes (512 tokens ×
/// 3072 × (1 + 19 blocks) in f32, 126 MB each).
pub const DEFAULT_DELTA_CACHE_BYTES: usize = 1 << 30;

/// Δ for each image of `request` (zeros for the base), scaled by α; `None` if no image is
/// personalized. tokens: `[images, txt_tokens, text_dim]`; `flux`: the backbone's (width, double
/// blocks).
pub fn request_modulation<B: FluxOps>(
    adapter: &PreferenceAdapter<B>,
    table: &UserTable<B>,
    request: &GenerateRequest,
    tokens: &Tensor<B, 3>,
    flux: (usize, usize),
    cache: &mut DeltaCache<B>,
) -> Result<Option<TextModulation<B>>, PipelineError> {
    if request.users.iter().all(|u| *u == UserChoice::Base) {
        return Ok(None);
    }
    let [_, txt_tokens, _] = tokens.dims();
    let (hidden, depth) = flux;
    let device = tokens.device();
    let mut shared = Vec::new();
    let mut distinct = Vec::new();
    for (i, user) in request.users.iter().enumerate() {
        let key = (request.prompts[i].clone(), user.clone());
        let delta = match cache.get(&key) {
            Some(delta) => delta,
            None => {
                let delta = match user {
                    UserChoice::Base => TextModulation::new(
                        Tensor::zeros([1, txt_tokens, hidden], &device),
                        Tensor::zeros([1, txt_tokens, depth, hidden], &device),
                    ),
                    UserChoice::User(user_ref) => {
                        let embedding = user_ref.resolve(table)?;
                        adapter.forward(tokens.clone().narrow(0, i, 1), embedding)
                    }
                };
                let bytes = delta.shared.as_ref().map_or(0, tensor_bytes)
                    + delta.distinct.as_ref().map_or(0, tensor_bytes);
                cache.insert(key, delta.clone(), bytes);
                delta
            }
        };
        shared.push(
            delta
                .shared
                .clone()
                .unwrap_or_else(|| Tensor::zeros([1, txt_tokens, hidden], &device)),
        );
        distinct.push(
            delta
                .distinct
                .clone()
                .unwrap_or_else(|| Tensor::zeros([1, txt_tokens, depth, hidden], &device)),
        );
    }
    Ok(Some(
        TextModulation::new(Tensor::cat(shared, 0), Tensor::cat(distinct, 0)).scaled(request.alpha),
    ))
}

/// How a batch is drawn: one image per seed, its size, the Euler steps, the guidance and the
/// schedule's shift (the prompts and users are carried by the text and Δ given beside it).
#[derive(Debug, Clone, Copy)]
pub struct Sampling<'a> {
    /// One per image: the seed of its initial noise.
    pub seeds: &'a [u64],
    /// Pixels; a multiple of twice the latent space's downsampling.
    pub width: usize,
    /// Pixels; a multiple of twice the latent space's downsampling.
    pub height: usize,
    /// Euler steps.
    pub steps: usize,
    /// Distilled guidance scale (read only by models with a guidance embedding).
    pub guidance: f32,
    /// Resolution-dependent schedule shift (dev: true, schnell: false).
    pub shift: bool,
}

impl GenerateRequest {
    /// How this request's images are drawn.
    pub fn sampling(&self) -> Sampling<'_> {
        Sampling {
            seeds: &self.seeds,
            width: self.width,
            height: self.height,
            steps: self.steps,
            guidance: self.guidance,
            shift: self.shift,
        }
    }
}

/// The Euler loop from each seed's noise in `space`: the latents `[images, channels, h, w]`
/// (unpacked), for a [`LatentCodec`] of that space to decode. text: `[images, txt_tokens,
/// text_dim]` and pooled `[images, vec_dim]`; `modulation` is Premier's Δ (already scaled).
pub fn denoise_latents<B: FluxOps>(
    flux: &Flux<B>,
    sampling: &Sampling<'_>,
    space: LatentSpace,
    text: &TextConditioning<B>,
    modulation: Option<&TextModulation<B>>,
    observer: &mut impl StepObserver,
) -> Result<Tensor<B, 4>, PipelineError> {
    let n = sampling.seeds.len();
    let device = text.tokens.device();
    let (h, w) = space.latent_hw(sampling.height, sampling.width);
    let noise = seeded_noise::<B>(sampling.seeds, space.channels, h, w, &device);
    let txt_tokens = text.tokens.dims()[1];
    let timesteps = schedule(sampling.steps, (h / 2) * (w / 2), sampling.shift);
    let latent = denoise(
        flux,
        pack(noise),
        img_ids(n, h, w, &device),
        text.tokens.clone(),
        txt_ids(n, txt_tokens, &device),
        text.pooled.clone(),
        Some(Tensor::full([n], sampling.guidance, &device)),
        &timesteps,
        modulation,
        observer,
    )?;
    Ok(unpack(latent, h, w))
}
