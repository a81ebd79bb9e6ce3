//! `premier eval`: the paper's metrics on images on disk (CLIP-T2I, the CLIP preference proxy, the
//! win rate over the base, LPIPS), as report.md and report.json.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use burn::backend::Flex;
use clap::{Args, ValueEnum};
use image::RgbImage;
use premier::eval::{evaluate, ClipScorer, Lpips, LpipsNet, UserImages};
use premier::io::write_via_temp;
use premier::text::{ClipConfig, ClipImageProcessor, ClipModel, PromptTokenizer};

/// `premier eval`. Image folders hold a folder per user with `<k>.png` (or `.jpg`) for prompt
/// `k` (counting from 0, the line of `--prompts`).
#[derive(Debug, Clone, Args)]
pub struct EvalArgs {
    /// A Hugging Face CLIP folder: `config.json`, `model.safetensors`, `tokenizer.json` and
    /// (optional) `preprocessor_config.json` (e.g. `openai/clip-vit-large-patch14`).
    #[arg(long)]
    pub clip: PathBuf,
    /// The personalized images: `<dir>/<user>/<k>.png`.
    #[arg(long)]
    pub generated: PathBuf,
    /// Each user's held-out images, one per prompt, in the same layout.
    #[arg(long)]
    pub reference: PathBuf,
    /// The prompts, one per line.
    #[arg(long)]
    pub prompts: PathBuf,
    /// The base model's images of the same prompts and seeds, in the same layout (for the win
    /// rate and the base row).
    #[arg(long)]
    pub base: Option<PathBuf>,
    /// LPIPS's backbone: `alex` or `vgg` (with `--lpips-weights` and `--lpips-lin`).
    #[arg(long, value_enum, requires_all = ["lpips_weights", "lpips_lin"])]
    pub lpips: Option<LpipsArg>,
    /// The backbone's weights in torchvision's keys (`features.N.*`), as safetensors.
    #[arg(long)]
    pub lpips_weights: Option<PathBuf>,
    /// The lin layers (`linN.model.1.weight`), as safetensors (the lpips package's v0.1 weights).
    #[arg(long)]
    pub lpips_lin: Option<PathBuf>,
    /// Where report.md and report.json go.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace an earlier report in `--out`.
    #[arg(long)]
    pub overwrite: bool,
}

/// `--lpips`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LpipsArg {
    /// AlexNet (the lpips package's default).
    Alex,
    /// VGG16.
    Vgg,
}

/// `<dir>/<user>/<k>.png` (or `.jpg`, `.jpeg`) for `k` in `0..prompts`.
fn user_images(dir: &Path, user: &str, prompts: usize) -> anyhow::Result<Vec<RgbImage>> {
    (0..prompts)
        .map(|k| {
            let found = ["png", "jpg", "jpeg"]
                .iter()
                .map(|ext| dir.join(user).join(format!("{k}.{ext}")))
                .find(|p| p.is_file());
            let Some(path) = found else {
                bail!(
                    "{}: no image for prompt {k} (expected {k}.png or {k}.jpg)",
                    dir.join(user).display()
                );
            };
            Ok(image::open(&path)
                .with_context(|| format!("reading {}", path.display()))?
                .to_rgb8())
        })
        .collect()
}

/// The CLIP of a Hugging Face folder: `config.json`, `model.safetensors`, `tokenizer.json` and
/// (optional) `preprocessor_config.json`, on the CPU.
pub(crate) fn clip_scorer(dir: &Path) -> anyhow::Result<ClipScorer<Flex>> {
    let device = Default::default();
    let config = ClipConfig::from_json_file(dir.join("config.json"))?;
    let processor_file = dir.join("preprocessor_config.json");
    let processor = if processor_file.is_file() {
        ClipImageProcessor::from_json_file(&processor_file)?
    } else {
        ClipImageProcessor::default()
    };
    Ok(ClipScorer {
        model: ClipModel::load(dir.join("model.safetensors"), &config, &device)?,
        processor,
        tokenizer: PromptTokenizer::clip(dir.join("tokenizer.json"))?,
        device,
    })
}

/// Writes `text` to `path` through a temporary file.
pub(crate) fn write_atomic(path: &Path, text: &str) -> anyhow::Result<()> {
    write_via_temp(path, |tmp| {
        std::fs::write(tmp, text).map_err(|e| e.to_string())
    })
    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Runs `premier eval`.
pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let (md_path, json_path) = (args.out.join("report.md"), args.out.join("report.json"));
    if !args.overwrite {
        if let Some(found) = [&md_path, &json_path].into_iter().find(|p| p.exists()) {
            bail!(
                "{} exists: pass --overwrite to replace it, or --out another folder",
                found.display()
            );
        }
    }
    let prompts: Vec<String> = std::fs::read_to_string(&args.prompts)
        .with_context(|| format!("reading {}", args.prompts.display()))?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if prompts.is_empty() {
        bail!("{}: no prompts", args.prompts.display());
    }
    let mut ids: Vec<String> = std::fs::read_dir(&args.generated)
        .with_context(|| format!("reading {}", args.generated.display()))?
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    ids.sort();
    if ids.is_empty() {
        bail!(
            "{}: no user folders (expected <user>/<k>.png)",
            args.generated.display()
        );
    }
    let users = ids
        .iter()
        .map(|id| {
            Ok(UserImages {
                id: id.clone(),
                generated: user_images(&args.generated, id, prompts.len())?,
                base: args
                    .base
                    .as_deref()
                    .map(|dir| user_images(dir, id, prompts.len()))
                    .transpose()?,
                reference: user_images(&args.reference, id, prompts.len())?,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;

    let clip = clip_scorer(&args.clip)?;
    let lpips = match (args.lpips, &args.lpips_weights, &args.lpips_lin) {
        (Some(net), Some(weights), Some(lin)) => {
            let net = match net {
                LpipsArg::Alex => LpipsNet::Alex,
                LpipsArg::Vgg => LpipsNet::Vgg,
            };
            Some(Lpips::<Flex>::load(net, weights, lin, &Default::default())?)
        }
        _ => None,
    };
    let report = evaluate(clip, lpips.as_ref(), &prompts, &users)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    write_atomic(&md_path, &report.markdown())?;
    write_atomic(&json_path, &serde_json::to_string_pretty(&report)?)?;
    print!("{}", report.markdown());
    println!("wrote {} and {}", md_path.display(), json_path.display());
    Ok(())
}
