//! `premier generate`: prompts × users → PNGs and a grid, on FLUX.1 files or the synthetic
//! world's base model.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use burn::prelude::*;
use burn::tensor::FloatDType;
use clap::Args;

use crate::models::ModelArgs;
use crate::{BackendKind, Precision};
use premier::adapter::{AdapterConfig, PreferenceAdapter};
use premier::mmdit::FluxOps;
use premier::model_files::{ModelConfigs, ModelFiles};
use premier::personalized::Personalization;
use premier::pipeline::image_io::{grid, save_png, tensor_to_rgb};
use premier::pipeline::memory::{GenerationMemory, GenerationPlan};
use premier::pipeline::{
    check_request, denoise_latents, request_modulation, DeltaCache, GenerateRequest, LatentCodec,
    UserChoice, VaeCodec,
};
use premier::synth::base::SynthBase;
use premier::train::run::{TrainedModel, TRAINED_MODEL_FILE};
use premier::users::{UserShape, UserTable};
use premier::User;

/// `premier generate`: a grid of images, a row per user and a column per prompt.
#[derive(Debug, Clone, Args)]
pub struct GenerateArgs {
    /// Where the FLUX.1 files (or the synthetic base) are.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Premier adapters (`mod_adapter.safetensors`).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Trained users (`user_embedding.safetensors`).
    #[arg(long)]
    pub user_table: Option<PathBuf>,
    /// Number of users in the table (default: from `premier.json` beside the adapter, else the
    /// released table's 1000).
    #[arg(long)]
    pub num_users: Option<usize>,
    /// A grid row per user: `base`, a table index, a trained user's id (from the `premier.json`
    /// beside the adapter), or a user file (`user_embedding_<id>` or
    /// `user_combination_<id>.safetensors`). Default: `base`.
    #[arg(long = "user")]
    pub users: Vec<String>,
    /// A grid column per prompt.
    #[arg(long = "prompt", required = true)]
    pub prompts: Vec<String>,
    /// Image width in pixels (default 512; the synthetic world draws only its own size).
    #[arg(long)]
    pub width: Option<usize>,
    /// Image height in pixels (default 512; the synthetic world draws only its own size).
    #[arg(long)]
    pub height: Option<usize>,
    /// Sampling steps (default: 28 for dev, 4 for schnell; the synthetic world: 12).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Distilled guidance of FLUX.1-dev (Premier evaluates at 2.5; ignored by schnell).
    #[arg(long, default_value_t = 3.5, value_parser = crate::finite::<f32>)]
    pub guidance: f32,
    /// Seed of the first column; column c uses seed + c (wrapping past 2⁶⁴ − 1), the same for
    /// every user.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Preference strength: 0 = plain FLUX, 1 = as trained (negative: away from the taste).
    #[arg(long, default_value_t = 1.0, allow_hyphen_values = true, value_parser = crate::finite::<f64>)]
    pub alpha: f64,
    /// Folder for the PNGs and `grid.png` (existing files are kept unless overwritten by name).
    #[arg(long, default_value = "out")]
    pub out: PathBuf,
    /// Score what was just made with CLIP-T2I (a Hugging Face CLIP folder, as `premier eval
    /// --clip`): `eval.md` and `eval.json` beside the images, a row per user. The preference
    /// proxy, win rate and LPIPS need the users' held-out images: run `premier eval`.
    #[arg(long)]
    pub eval: Option<PathBuf>,
    /// Which backend runs the models.
    #[arg(long, value_enum, default_value = "flex")]
    pub backend: BackendKind,
    /// Float type of the models' weights and activations.
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: Precision,
    /// Load one model at a time, each released before the next: T5 and CLIP encode the
    /// prompts, the adapters compute Δ, FLUX denoises, the VAE decodes. The same images; the
    /// device holds only the largest stage (FLUX.1-dev at 512² in bf16: about 22.6 GiB), at the
    /// cost of loading every model once per run.
    #[arg(long)]
    pub low_memory: bool,
    /// Float type of the adapters' weights (default: that of `--dtype`); bf16 halves their
    /// memory (Δ stays within 3e-2 relative of f32's).
    #[arg(long, value_enum)]
    pub adapter_dtype: Option<Precision>,
    /// Decode in tiles of this many latent pixels a side (8× as many image pixels), overlapping
    /// by a quarter: the decoder's memory grows with the tile, not the image. Approximate near
    /// the seams (the decoder sees one tile at a time); for images too large to decode whole.
    #[arg(long)]
    pub vae_tile: Option<usize>,
    /// Refuse to start when the estimated device memory (printed first) exceeds this many GiB
    /// (default: what the device has free: the host's available memory on the CPU, GPU 0's free
    /// memory on CUDA).
    #[arg(long, value_parser = crate::parse_gib)]
    pub max_memory: Option<f64>,
}

/// Runs `premier generate`.
pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    match (args.backend, args.dtype) {
        (BackendKind::Flex, precision) => {
            let device = Default::default();
            if precision == Precision::Bf16 {
                burn::tensor::set_default_dtypes::<burn::backend::Flex>(
                    &device,
                    burn::tensor::FloatDType::BF16,
                    burn::tensor::IntDType::I32,
                )
                .map_err(|e| anyhow::anyhow!("bf16 on flex: {e:?}"))?;
            }
            generate::<burn::backend::Flex>(args, device)
        }
        #[cfg(feature = "cuda")]
        (BackendKind::Cuda, Precision::F32) => generate::<burn::backend::Cuda<f32>>(args, Default::default()),
        #[cfg(feature = "cuda")]
        (BackendKind::Cuda, Precision::Bf16) => generate::<burn::backend::Cuda<half::bf16>>(args, Default::default()),
        #[cfg(feature = "wgpu")]
        (BackendKind::Wgpu, Precision::F32) => generate::<burn::backend::Wgpu>(args, Default::default()),
        (backend, precision) => bail!(
            "backend {backend:?} with {precision:?} is not in this build: rebuild with `--features {}`{}",
            format!("{backend:?}").to_lowercase(),
            if backend == BackendKind::Wgpu { " (wgpu runs f32 only)" } else { "" }
        ),
    }
}

/// The `premier.json` beside the adapter (written by `premier train`), if there is one.
fn trained_beside(args: &GenerateArgs) -> anyhow::Result<Option<TrainedModel>> {
    Ok(args
        .adapter
        .as_ref()
        .and_then(|a| a.parent())
        .filter(|dir| dir.join(TRAINED_MODEL_FILE).is_file())
        .map(TrainedModel::read)
        .transpose()?)
}

/// The adapter and table sizes: `trained`'s (a `premier train` run), else the released sizes for
/// this backbone.
fn trained_sizes(
    args: &GenerateArgs,
    trained: Option<&TrainedModel>,
    text_dim: usize,
    flux: (usize, usize),
) -> anyhow::Result<(AdapterConfig, UserShape)> {
    if let (None, true, Some(adapter)) = (trained, args.model.is_synth(), &args.adapter) {
        bail!(
            "--adapter {}: the synthetic world's adapters need the premier.json of their run \
             beside them (give the run's mod_adapter.safetensors)",
            adapter.display()
        );
    }
    let (adapter, mut users) = premier::personalization_sizes(trained, text_dim, flux);
    if let Some(n) = args.num_users {
        users.users = n;
    }
    Ok((adapter, users))
}

/// The `--adapter` and `--user-table` files, if given, at the sizes [`trained_sizes`] finds.
#[allow(clippy::type_complexity)]
fn load_personalization<B: Backend>(
    args: &GenerateArgs,
    trained: Option<&TrainedModel>,
    text_dim: usize,
    flux: (usize, usize),
    device: &B::Device,
) -> anyhow::Result<(Option<PreferenceAdapter<B>>, Option<UserTable<B>>)> {
    let (adapter_config, user_shape) = trained_sizes(args, trained, text_dim, flux)?;
    let adapter = args
        .adapter
        .as_ref()
        .map(|p| PreferenceAdapter::<B>::load(p, &adapter_config, device))
        .transpose()?
        .map(|a| match adapter_dtype(args) {
            Some(dtype) => a.with_weight_dtype(dtype),
            None => a,
        });
    let table = args
        .user_table
        .as_ref()
        .map(|p| UserTable::<B>::load(p, user_shape, device))
        .transpose()?;
    Ok((adapter, table))
}

/// The `--user` rows; a trained user's id is looked up in `trained`.
fn users_of(
    args: &GenerateArgs,
    trained: Option<&TrainedModel>,
) -> anyhow::Result<Vec<UserChoice>> {
    if args.users.is_empty() {
        return Ok(vec![UserChoice::Base]);
    }
    if let Some(user) = args.users.iter().find(|u| *u != "base") {
        if args.adapter.is_none() {
            bail!(
                "--user {user} needs --adapter (a run's mod_adapter.safetensors; the released \
                 file for the released users)"
            );
        }
        if args.user_table.is_none() {
            bail!(
                "--user {user} needs --user-table (a run's user_embedding.safetensors; the \
                 released file for the released users)"
            );
        }
    }
    args.users
        .iter()
        .map(|u| {
            premier::resolve_user(&User::parse(u), trained).with_context(|| format!("--user {u}"))
        })
        .collect()
}

/// Writes each image and the grid; prints where.
fn write_rows(
    args: &GenerateArgs,
    rows: &[Vec<image::RgbImage>],
    started: Instant,
) -> anyhow::Result<()> {
    for (r, row) in rows.iter().enumerate() {
        for (c, image) in row.iter().enumerate() {
            save_png(image, args.out.join(format!("user{r}_prompt{c}.png")))?;
        }
    }
    let grid_path = args.out.join("grid.png");
    save_png(&grid(rows, 4), &grid_path)?;
    println!(
        "wrote {} images and {} in {:.1?}",
        rows.iter().map(Vec::len).sum::<usize>(),
        grid_path.display(),
        started.elapsed()
    );
    if let Some(clip) = &args.eval {
        score_rows(clip, args, rows)?;
    }
    Ok(())
}

/// CLIP-T2I of every image with its prompt, a row per user (`--eval`).
fn score_rows(
    clip: &Path,
    args: &GenerateArgs,
    rows: &[Vec<image::RgbImage>],
) -> anyhow::Result<()> {
    use premier::eval::{clip_score, cosines, MeanSe};
    let scorer = crate::eval::clip_scorer(clip)?;
    let prompts: Vec<&str> = args.prompts.iter().map(String::as_str).collect();
    // The prompts go through CLIP once, not once per row.
    let texts = scorer.text_embeddings(&prompts)?;
    let mut md = String::from(
        "# CLIP-T2I of the generated images\n\nMeans ± standard errors over the prompts.\n\n\
         | Row | CLIP-T2I (cos) ↑ | CLIPScore ↑ |\n|---|---|---|\n",
    );
    let mut json = Vec::new();
    for (r, row) in rows.iter().enumerate() {
        let cos = cosines(&scorer.image_embeddings(row)?, &texts);
        let scores: Vec<f64> = cos.iter().map(|&c| clip_score(c)).collect();
        let (c, s) = (MeanSe::of(&cos), MeanSe::of(&scores));
        md.push_str(&format!(
            "| user{r} | {c} | {:.2} ± {:.2} |\n",
            s.mean, s.se
        ));
        json.push(serde_json::json!({
            "row": format!("user{r}"),
            "clip_t2i": cos,
            "clip_score": scores,
        }));
    }
    crate::eval::write_atomic(&args.out.join("eval.md"), &md)?;
    let all = serde_json::json!({ "prompts": prompts, "rows": json });
    crate::eval::write_atomic(
        &args.out.join("eval.json"),
        &serde_json::to_string_pretty(&all)?,
    )?;
    print!("{md}");
    Ok(())
}

/// The synthetic world's base model: its text encoder and codec, 12 Euler steps.
fn generate_synth<B: FluxOps>(
    args: GenerateArgs,
    dir: &Path,
    device: B::Device,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let side = premier::synth::world::IMAGE_SIZE;
    for (flag, value) in [("--width", args.width), ("--height", args.height)] {
        if let Some(v) = value.filter(|&v| v != side) {
            bail!("{flag} {v}: the synthetic world's base draws only {side}×{side} images");
        }
    }
    let steps = args.steps.unwrap_or(premier::synth::sample::SAMPLING_STEPS);
    check_steps(steps)?;
    let trained = trained_beside(&args)?;
    let users = users_of(&args, trained.as_ref())?;
    let (base, config) = SynthBase::<B>::load(dir, &device)
        .with_context(|| format!("synth base {}", dir.display()))?;
    let tokenizer = premier::synth::text::load_tokenizer(dir)?;
    let (adapter, table) = load_personalization::<B>(
        &args,
        trained.as_ref(),
        config.flux.context_in_dim,
        (config.flux.hidden_size, config.flux.depth),
        &device,
    )?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let prompts: Vec<&str> = args.prompts.iter().map(String::as_str).collect();
    let text = base.text.encode(&tokenizer, &prompts)?;
    let n = prompts.len();
    let seeds: Vec<u64> = (0..n as u64).map(|c| args.seed.wrapping_add(c)).collect();
    let mut rows = Vec::new();
    for user in &users {
        let delta = match user {
            UserChoice::Base => None,
            UserChoice::User(user) => {
                let (Some(adapter), Some(table)) = (&adapter, &table) else {
                    bail!("--user {user:?} needs --adapter and --user-table");
                };
                let embedding = user.resolve(table)?.repeat_dim(0, n);
                Some(
                    adapter
                        .forward(text.tokens.clone(), embedding)
                        .scaled(args.alpha),
                )
            }
        };
        rows.push(premier::synth::sample::sample(
            &base.flux,
            &text,
            delta.as_ref(),
            &seeds,
            steps,
        )?);
    }
    write_rows(&args, &rows, started)
}

fn generate<B: FluxOps>(args: GenerateArgs, device: B::Device) -> anyhow::Result<()> {
    if let Some(dir) = args.model.synth_base.clone() {
        return generate_synth::<B>(args, &dir, device);
    }
    let total = Instant::now();
    // The sizes first: the memory estimate below multiplies them.
    for (flag, side) in [("--width", args.width), ("--height", args.height)] {
        side.map_or(Ok(()), |side| crate::check_side(flag, side))?;
    }
    check_steps(args.steps.unwrap_or(args.model.variant.steps()))?;
    let trained = trained_beside(&args)?;
    let users = users_of(&args, trained.as_ref())?;
    let files = args.model.files()?;
    let configs = files.configs(args.model.variant)?;
    // Advisory: a file it cannot read is named by the loading below, in load order.
    if let Ok(estimate) = memory_estimate::<B>(&args, trained.as_ref(), &files, &configs) {
        eprintln!("estimated device memory: {estimate}");
        if let Some(limit) = crate::memory_limit(args.max_memory, args.backend) {
            let format = premier::mmdit::memory::format_bytes;
            let (staged, _) = estimate.staged_peak();
            let needed = if args.low_memory {
                staged
            } else {
                estimate.resident_peak()
            };
            if needed > limit.bytes {
                let hint = if !args.low_memory && staged <= limit.bytes {
                    format!("--low-memory would fit ({})", format(staged))
                } else {
                    "try --vae-tile 64, --dtype bf16, --adapter-dtype bf16, fewer prompts or a smaller image"
                        .to_string()
                };
                bail!(
                    "estimated device memory {} exceeds {} ({}); {hint}, or raise --max-memory",
                    format(needed),
                    limit.source,
                    format(limit.bytes)
                );
            }
        }
    }
    if args.low_memory {
        return generate_one_model_at_a_time::<B>(&args, &users, &files, &configs, device);
    }

    eprintln!("loading models…");
    let load = Instant::now();
    let mut builder = premier::Premier::<B>::builder()
        .model_files(files)
        .variant(args.model.variant)
        .device(device);
    if let (Some(adapter), Some(table)) = (&args.adapter, &args.user_table) {
        builder = builder.adapter(adapter).user_table(table);
    }
    if let Some(n) = args.num_users {
        builder = builder.num_users(n);
    }
    if let Some(dtype) = adapter_dtype(&args) {
        builder = builder.adapter_dtype(dtype);
    }
    if let Some(tiling) = vae_tiling(&args) {
        builder = builder.vae_tiling(tiling);
    }
    let mut premier = builder.build()?;
    eprintln!("models loaded in {:.1?}", load.elapsed());
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let steps = args.steps.unwrap_or(args.model.variant.steps());
    let bar = crate::progress::Progress::new((users.len() * steps) as u64, "steps");
    let mut rows = Vec::new();
    let mut timings = Vec::new();
    for (r, user) in users.iter().enumerate() {
        bar.set_message(format!("row {}/{}", r + 1, users.len()));
        let request = row_request(&args, user);
        let base = (r * steps) as u64;
        let out = premier.generate_batch(&request, &mut |done: usize, _| {
            bar.set_position(base + done as u64)
        })?;
        rows.push(tensor_to_rgb(out.images));
        timings.push(out.timings);
    }
    bar.finish_and_clear();
    for (r, t) in timings.iter().enumerate() {
        eprintln!(
            "row {r}: text {:.2?}, Δ {:.2?}, denoise {:.2?} ({:.2?}/step), decode {:.2?}",
            t.text,
            t.delta,
            t.denoise,
            t.denoise / steps as u32,
            t.decode
        );
    }
    write_rows(&args, &rows, total)
}

/// `--steps`, checked before anything is loaded.
fn check_steps(steps: usize) -> anyhow::Result<()> {
    let max = premier::pipeline::MAX_STEPS;
    anyhow::ensure!(
        (1..=max).contains(&steps),
        "--steps {steps}: sampling takes at least 1 and at most {max} steps"
    );
    Ok(())
}

/// The request of one grid row: every prompt for `user`.
fn row_request(args: &GenerateArgs, user: &UserChoice) -> GenerateRequest {
    let columns = args.prompts.len();
    GenerateRequest {
        prompts: args.prompts.clone(),
        users: vec![user.clone(); columns],
        seeds: (0..columns as u64)
            .map(|c| args.seed.wrapping_add(c))
            .collect(),
        width: args.width.unwrap_or(512),
        height: args.height.unwrap_or(512),
        steps: args.steps.unwrap_or(args.model.variant.steps()),
        guidance: args.guidance,
        shift: args.model.variant.shift(),
        alpha: args.alpha,
    }
}

/// The device memory of this run, from the configs and the files' headers (nothing loaded).
fn memory_estimate<B: FluxOps>(
    args: &GenerateArgs,
    trained: Option<&TrainedModel>,
    files: &ModelFiles,
    configs: &ModelConfigs,
) -> anyhow::Result<GenerationMemory> {
    let (flux, t5) = (&configs.flux, &configs.t5);
    let stored = |path: &Path| -> anyhow::Result<u64> {
        Ok(premier::io::Checkpoint::open(path)?.stored_elements())
    };
    let adapter_params = match &args.adapter {
        Some(_) => {
            let (adapter, users) =
                trained_sizes(args, trained, t5.d_model, (flux.hidden_size, flux.depth))?;
            adapter.param_count() + (users.users * users.tokens * users.dim) as u64
        }
        None => 0,
    };
    let element_bytes = if args.dtype == Precision::Bf16 { 2 } else { 4 };
    Ok(GenerationMemory::estimate(&GenerationPlan {
        flux,
        vae: &configs.vae,
        text_encoder_params: stored(&files.t5)? + stored(&files.clip)?,
        vae_params: stored(&files.ae)?,
        adapter_params,
        text_width: t5.d_ff.max(t5.d_model),
        images: args.prompts.len(),
        width: args.width.unwrap_or(512),
        height: args.height.unwrap_or(512),
        txt_tokens: args.model.variant.t5_len(),
        element_bytes,
        vae_tile: args.vae_tile,
        adapter_bytes: match adapter_dtype(args) {
            Some(FloatDType::BF16) => 2,
            Some(_) => 4,
            None => element_bytes,
        },
        fused_attention: B::FUSED_ATTENTION,
    }))
}

/// `--low-memory`: each model is loaded for its stage and released before the next, over all
/// rows at once (prompts → Δ per row → latents per row → images), through the same stage
/// functions as [`Generator::generate`].
fn generate_one_model_at_a_time<B: FluxOps>(
    args: &GenerateArgs,
    users: &[UserChoice],
    files: &ModelFiles,
    configs: &ModelConfigs,
    device: B::Device,
) -> anyhow::Result<()> {
    let total = Instant::now();
    let requests: Vec<GenerateRequest> = users.iter().map(|u| row_request(args, u)).collect();
    for request in &requests {
        check_request(request, args.adapter.is_some() && args.user_table.is_some())?;
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let release = |what: &str, started: Instant| {
        B::memory_cleanup(&device);
        eprintln!("{what}: {:.1?}", started.elapsed());
    };

    let stage = Instant::now();
    let text = {
        let mut encoder = files.load_text::<B>(configs, args.model.variant, &device)?;
        let prompts: Vec<&str> = args.prompts.iter().map(String::as_str).collect();
        encoder.encode(&prompts, &device)?
    };
    release("T5 and CLIP (loaded, encoded, released)", stage);

    let stage = Instant::now();
    let flux_config = &configs.flux;
    let modulations = {
        let (adapter, table) = match (&args.adapter, &args.user_table) {
            (Some(adapter), Some(table)) => {
                let personal =
                    Personalization::check(adapter, table, args.num_users, files, configs)?;
                let (adapter, table) = personal.load::<B>(adapter_dtype(args), &device)?;
                (Some(adapter), Some(table))
            }
            _ => (None, None),
        };
        let mut cache = DeltaCache::new(premier::pipeline::DEFAULT_DELTA_CACHE_BYTES);
        requests
            .iter()
            .map(|request| match (&adapter, &table) {
                (Some(adapter), Some(table)) => request_modulation(
                    adapter,
                    table,
                    request,
                    &text.tokens,
                    (flux_config.hidden_size, flux_config.depth),
                    &mut cache,
                ),
                _ => Ok(None),
            })
            .collect::<Result<Vec<_>, _>>()?
    };
    release("adapters (loaded, Δ computed, released)", stage);

    let stage = Instant::now();
    let vae_config = &configs.vae;
    let latents = {
        let flux = files.load_flux::<B>(flux_config, &device, None)?;
        let steps = requests.first().map_or(0, |r| r.steps);
        let bar = crate::progress::Progress::new((requests.len() * steps) as u64, "steps");
        let latents = requests
            .iter()
            .zip(&modulations)
            .enumerate()
            .map(|(r, (request, modulation))| {
                let base = (r * steps) as u64;
                denoise_latents(
                    &flux,
                    &request.sampling(),
                    vae_config.into(),
                    &text,
                    modulation.as_ref(),
                    &mut |done: usize, _| bar.set_position(base + done as u64),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        bar.finish_and_clear();
        latents
    };
    release("FLUX (loaded, denoised, released)", stage);

    let stage = Instant::now();
    let rows = {
        let vae = files.load_vae::<B>(vae_config, &device)?;
        let codec = VaeCodec {
            vae: &vae,
            config: vae_config,
            tiling: vae_tiling(args),
        };
        latents
            .into_iter()
            .map(|latent| Ok(tensor_to_rgb(codec.decode(latent)?)))
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    release("VAE (loaded, decoded, released)", stage);
    write_rows(args, &rows, total)
}

/// `--adapter-dtype` as a float type.
fn adapter_dtype(args: &GenerateArgs) -> Option<FloatDType> {
    args.adapter_dtype.map(|p| match p {
        Precision::Bf16 => FloatDType::BF16,
        Precision::F32 => FloatDType::F32,
    })
}

/// `--vae-tile`'s tiling: tiles of that side overlapping by a quarter.
fn vae_tiling(args: &GenerateArgs) -> Option<premier::vae::Tiling> {
    args.vae_tile.map(|tile| premier::vae::Tiling {
        tile,
        overlap: tile / 4,
    })
}
