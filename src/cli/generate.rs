//! `premier generate`: prompts × users → PNGs and a grid, on real FLUX.1 files.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use burn::prelude::*;
use clap::{Args, ValueEnum};

use super::{BackendKind, Precision};
use crate::adapter::{AdapterConfig, PreferenceAdapter};
use crate::mmdit::{Flux, FluxConfig};
use crate::pipeline::image_io::{grid, save_png, tensor_to_rgb};
use crate::pipeline::{GenerateRequest, Generator, UserChoice};
use crate::text::{
    ClipTextConfig, ClipTextEncoder, PromptTokenizer, T5Config, T5Encoder, TextEncoder,
};
use crate::users::{UserRef, UserShape, UserTable};
use crate::vae::{Autoencoder, AutoencoderConfig};

/// FLUX.1 variant: sets the default config, schedule shift, T5 length and step count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Variant {
    Dev,
    Schnell,
}

#[derive(Debug, Clone, Args)]
pub struct GenerateArgs {
    /// A diffusers FLUX.1 folder (transformer/, vae/, text_encoder/, text_encoder_2/, tokenizer/,
    /// tokenizer_2/); the single-path options below override its parts.
    #[arg(long)]
    pub model_dir: Option<PathBuf>,
    /// Transformer: BFL `flux1-dev.safetensors` or a diffusers transformer folder.
    #[arg(long)]
    pub flux: Option<PathBuf>,
    /// Autoencoder: BFL `ae.safetensors` or a diffusers vae folder.
    #[arg(long)]
    pub ae: Option<PathBuf>,
    /// T5-v1.1-XXL encoder (file or folder of shards).
    #[arg(long)]
    pub t5: Option<PathBuf>,
    /// CLIP-L text encoder (file or folder).
    #[arg(long)]
    pub clip: Option<PathBuf>,
    /// T5 tokenizer.json (default: the one shipped with premier-text).
    #[arg(long)]
    pub t5_tokenizer: Option<PathBuf>,
    /// CLIP tokenizer.json (default: the one shipped with premier-text).
    #[arg(long)]
    pub clip_tokenizer: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "dev")]
    pub variant: Variant,
    /// Premier adapters (`mod_adapter.safetensors`).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Trained users (`user_embedding.safetensors`).
    #[arg(long)]
    pub user_table: Option<PathBuf>,
    /// Number of users in the table (the released table: 1000).
    #[arg(long, default_value_t = 1000)]
    pub num_users: usize,
    /// A grid row per user: `base`, a table index, or a user file (`user_embedding_<id>` or
    /// `user_combination_<id>.safetensors`). Default: `base`.
    #[arg(long = "user")]
    pub users: Vec<String>,
    /// A grid column per prompt.
    #[arg(long = "prompt", required = true)]
    pub prompts: Vec<String>,
    #[arg(long, default_value_t = 512)]
    pub width: usize,
    #[arg(long, default_value_t = 512)]
    pub height: usize,
    /// Sampling steps (default: 28 for dev, 4 for schnell).
    #[arg(long)]
    pub steps: Option<usize>,
    #[arg(long, default_value_t = 3.5)]
    pub guidance: f32,
    /// Seed of the first column; column c uses seed + c, the same for every user.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Preference strength: 0 = plain FLUX, 1 = as trained.
    #[arg(long, default_value_t = 1.0)]
    pub alpha: f64,
    #[arg(long, default_value = "out")]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value = "flex")]
    pub backend: BackendKind,
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: Precision,
}

/// The files of one FLUX.1 model, resolved from `--model-dir` and the single-path options.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelFiles {
    pub flux: PathBuf,
    pub ae: PathBuf,
    pub t5: PathBuf,
    pub clip: PathBuf,
    pub t5_tokenizer: Option<PathBuf>,
    pub clip_tokenizer: Option<PathBuf>,
}

impl ModelFiles {
    pub fn resolve(args: &GenerateArgs) -> anyhow::Result<Self> {
        let part = |given: &Option<PathBuf>, sub: &str, flag: &str| -> anyhow::Result<PathBuf> {
            match (given, &args.model_dir) {
                (Some(p), _) => Ok(p.clone()),
                (None, Some(dir)) => Ok(dir.join(sub)),
                (None, None) => bail!("give --model-dir or --{flag}"),
            }
        };
        let tokenizer = |given: &Option<PathBuf>, sub: &str| {
            given.clone().or_else(|| {
                let p = args.model_dir.as_ref()?.join(sub).join("tokenizer.json");
                p.is_file().then_some(p)
            })
        };
        Ok(Self {
            flux: part(&args.flux, "transformer", "flux")?,
            ae: part(&args.ae, "vae", "ae")?,
            t5: part(&args.t5, "text_encoder_2", "t5")?,
            clip: part(&args.clip, "text_encoder", "clip")?,
            t5_tokenizer: tokenizer(&args.t5_tokenizer, "tokenizer_2"),
            clip_tokenizer: tokenizer(&args.clip_tokenizer, "tokenizer"),
        })
    }
}

/// `config.json` next to (or inside) a model path, if there is one.
fn config_beside(path: &Path) -> Option<PathBuf> {
    let dir = if path.is_dir() { path } else { path.parent()? };
    let config = dir.join("config.json");
    config.is_file().then_some(config)
}

/// Parses a `--user` value.
pub fn parse_user(spec: &str) -> anyhow::Result<UserChoice> {
    if spec == "base" {
        return Ok(UserChoice::Base);
    }
    if let Ok(index) = spec.parse::<usize>() {
        return Ok(UserChoice::User(UserRef::Index(index)));
    }
    let path = PathBuf::from(spec);
    let file = crate::mmdit::load::SafetensorsFile::open(&path)
        .with_context(|| format!("--user {spec}"))?;
    Ok(UserChoice::User(
        if file.shape("combination_weights").is_some() {
            UserRef::CombinationFile(path)
        } else {
            UserRef::EmbeddingFile(path)
        },
    ))
}

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

fn generate<B: Backend>(args: GenerateArgs, device: B::Device) -> anyhow::Result<()> {
    let total = Instant::now();
    let files = ModelFiles::resolve(&args)?;
    let users: Vec<UserChoice> = if args.users.is_empty() {
        vec![UserChoice::Base]
    } else {
        args.users
            .iter()
            .map(|u| parse_user(u))
            .collect::<anyhow::Result<_>>()?
    };

    let flux_config = match config_beside(&files.flux) {
        Some(c) if files.flux.is_dir() => {
            FluxConfig::from_diffusers_json(&std::fs::read_to_string(&c)?)?
        }
        _ => match args.variant {
            Variant::Dev => FluxConfig::dev(),
            Variant::Schnell => FluxConfig::schnell(),
        },
    };
    let vae_config = match config_beside(&files.ae) {
        Some(c) if files.ae.is_dir() => AutoencoderConfig::from_json_file(c)?,
        _ => AutoencoderConfig::flux(),
    };
    let t5_config = config_beside(&files.t5)
        .map(T5Config::from_json_file)
        .transpose()?
        .unwrap_or_else(T5Config::v1_1_xxl);
    let clip_config = config_beside(&files.clip)
        .map(ClipTextConfig::from_json_file)
        .transpose()?
        .unwrap_or_else(ClipTextConfig::vit_large_patch14);
    let t5_len = match args.variant {
        Variant::Dev => 512,
        Variant::Schnell => 256,
    };

    eprintln!("loading models…");
    let load = Instant::now();
    let flux = Flux::<B>::load(&files.flux, &flux_config, &device)?;
    let vae = Autoencoder::<B>::load(&files.ae, &vae_config, &device)?;
    let t5 = T5Encoder::<B>::load(&files.t5, &t5_config, &device)?;
    let clip = ClipTextEncoder::<B>::load(&files.clip, &clip_config, &device)?;
    let t5_tokenizer = match &files.t5_tokenizer {
        Some(p) => PromptTokenizer::t5(p, t5_len)?,
        None => PromptTokenizer::shipped_t5(t5_len)?,
    };
    let clip_tokenizer = match &files.clip_tokenizer {
        Some(p) => PromptTokenizer::clip(p)?,
        None => PromptTokenizer::shipped_clip()?,
    };
    let adapter_config = AdapterConfig {
        text_dim: t5_config.d_model,
        hidden: flux_config.hidden_size,
        blocks: flux_config.depth,
        ..AdapterConfig::released()
    };
    let adapter = args
        .adapter
        .as_ref()
        .map(|p| PreferenceAdapter::<B>::load(p, &adapter_config, &device))
        .transpose()?;
    let user_shape = UserShape {
        users: args.num_users,
        tokens: 30,
        dim: adapter_config.user_dim,
    };
    let table = args
        .user_table
        .as_ref()
        .map(|p| UserTable::<B>::load(p, user_shape, &device))
        .transpose()?;
    eprintln!("models loaded in {:.1?}", load.elapsed());

    let text = TextEncoder::new(t5, clip, t5_tokenizer, clip_tokenizer);
    let mut generator = Generator::new(flux, vae, vae_config, text, adapter, table, device);
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let steps = args.steps.unwrap_or(match args.variant {
        Variant::Dev => 28,
        Variant::Schnell => 4,
    });
    let columns = args.prompts.len();
    let bar = indicatif::ProgressBar::new((users.len() * steps) as u64).with_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} steps [{elapsed_precise}<{eta_precise}] {msg}",
        )
        .expect("valid template"),
    );
    let mut rows = Vec::new();
    let mut timings = Vec::new();
    for (r, user) in users.iter().enumerate() {
        bar.set_message(format!("row {}/{}", r + 1, users.len()));
        let request = GenerateRequest {
            prompts: args.prompts.clone(),
            users: vec![user.clone(); columns],
            seeds: (0..columns as u64).map(|c| args.seed + c).collect(),
            width: args.width,
            height: args.height,
            steps,
            guidance: args.guidance,
            shift: args.variant == Variant::Dev,
            alpha: args.alpha,
        };
        let base = (r * steps) as u64;
        let out = generator.generate(&request, &mut |done: usize, _| {
            bar.set_position(base + done as u64)
        })?;
        let images = tensor_to_rgb(out.images);
        for (c, image) in images.iter().enumerate() {
            save_png(image, args.out.join(format!("user{r}_prompt{c}.png")))?;
        }
        rows.push(images);
        timings.push(out.timings);
    }
    bar.finish_and_clear();
    let grid_path = args.out.join("grid.png");
    save_png(&grid(&rows, 4), &grid_path)?;
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
    println!(
        "wrote {} images and {} in {:.1?}",
        users.len() * columns,
        grid_path.display(),
        total.elapsed()
    );
    Ok(())
}
