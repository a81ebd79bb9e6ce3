//! A new user from a few liked images, then images in their taste beside the base model's,
//! through the library: [`premier::Premier::new_user`] (the paper's cold start: coefficients
//! over the trained users) and [`premier::Premier::generate`].
//!
//! ```text
//! cargo run --release --example personalize -- --model-dir FLUX.1-dev --run my-run \
//!     --liked liked/ --id erin --prompt "a cabin in the woods" --out out
//! ```
//!
//! `--liked` holds the user's images (`.png`, `.jpg`) with a caption each in a `.txt` of the same
//! name; `--run` is a `premier train` folder.

use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, Flex};
use premier::io::SaveDtype;
use premier::train::run::{user_file_name, ColdStartConfig};
use premier::{LikedImages, Premier, PremierError, User};

/// What the example is asked for.
pub struct Options {
    pub model_dir: PathBuf,
    pub run: PathBuf,
    pub liked: PathBuf,
    pub id: String,
    pub prompts: Vec<String>,
    /// Side of the training squares and of the images drawn.
    pub size: usize,
    /// Cold-start steps (the release: 5000) and sampling steps (default: the variant's).
    pub fit_steps: u64,
    pub sampling_steps: Option<usize>,
    pub out: PathBuf,
}

/// The images of `dir` with a caption each (`<name>.txt` beside `<name>.png`), by name.
fn liked_images(dir: &Path) -> Result<(Vec<image::RgbImage>, Vec<String>), PremierError> {
    let fail = |path: &Path, reason: String| {
        PremierError::Invalid(format!("{}: {reason}", path.display()))
    };
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| fail(dir, e.to_string()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("png" | "jpg" | "jpeg")
            )
        })
        .collect();
    paths.sort();
    let mut images = Vec::new();
    let mut captions = Vec::new();
    for path in paths {
        images.push(
            image::open(&path)
                .map_err(|e| fail(&path, e.to_string()))?
                .to_rgb8(),
        );
        let caption = path.with_extension("txt");
        let text = std::fs::read_to_string(&caption).map_err(|e| fail(&caption, e.to_string()))?;
        captions.push(text.trim().to_string());
    }
    Ok((images, captions))
}

/// Fits the new user, saves it under `out`, draws the prompts for the base model and for the
/// new user; returns the user file and the images written.
pub fn run(options: &Options) -> Result<(PathBuf, Vec<PathBuf>), PremierError> {
    let mut premier = Premier::<Autodiff<Flex>>::builder()
        .model_dir(&options.model_dir)
        .adapter(options.run.join("mod_adapter.safetensors"))
        .user_table(options.run.join("user_embedding.safetensors"))
        .build()?;
    let (images, captions) = liked_images(&options.liked)?;
    let config = ColdStartConfig {
        steps: options.fit_steps,
        ..Default::default()
    };
    let liked = LikedImages {
        id: &options.id,
        images: &images,
        captions: &captions,
        resolution: options.size as u32,
        preprocess: Default::default(),
    };
    let user = premier.new_user_with(&liked, &config, &mut |r| {
        eprint!(
            "\rstep {}/{}: loss {:.4}",
            r.report.step, config.steps, r.report.loss
        )
    })?;
    eprintln!();
    std::fs::create_dir_all(&options.out).map_err(|e| PremierError::Write {
        path: options.out.clone(),
        reason: e.to_string(),
    })?;
    let file = options.out.join(user_file_name(config.kind, &options.id));
    user.save(&file, SaveDtype::F32)?;
    let mut request = premier
        .request(options.prompts.clone())
        .users([User::Base, User::File(file.clone())])
        .size(options.size, options.size);
    if let Some(steps) = options.sampling_steps {
        request = request.steps(steps);
    }
    let written = premier.generate(&request)?.save(&options.out)?;
    Ok((file, written))
}

#[allow(dead_code)] // a test includes this file and calls `run`
fn parse(args: &[String]) -> Result<Options, String> {
    let mut options = Options {
        model_dir: PathBuf::new(),
        run: PathBuf::new(),
        liked: PathBuf::new(),
        id: "new".into(),
        prompts: Vec::new(),
        size: 512,
        fit_steps: 5000,
        sampling_steps: None,
        out: PathBuf::from("out"),
    };
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = |v: &str| v.parse::<u64>().map_err(|e| format!("{flag} {v}: {e}"));
        match flag.as_str() {
            "--model-dir" => options.model_dir = value.into(),
            "--run" => options.run = value.into(),
            "--liked" => options.liked = value.into(),
            "--id" => options.id = value.clone(),
            "--prompt" => options.prompts.push(value.clone()),
            "--size" => options.size = number(value)? as usize,
            "--fit-steps" => options.fit_steps = number(value)?,
            "--steps" => options.sampling_steps = Some(number(value)? as usize),
            "--out" => options.out = value.into(),
            other => return Err(format!("unknown option {other}")),
        }
    }
    let missing = [&options.model_dir, &options.run, &options.liked]
        .iter()
        .any(|p| p.as_os_str().is_empty());
    if missing || options.prompts.is_empty() {
        return Err("give --model-dir, --run, --liked and at least one --prompt".into());
    }
    Ok(options)
}

#[allow(dead_code)] // a test includes this file and calls `run`
fn main() {
    premier::allocator::retain_freed_memory();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = parse(&args).unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(2)
    });
    match run(&options) {
        Ok((user, written)) => println!(
            "wrote {} and {} images, the grid last",
            user.display(),
            written.len()
        ),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1)
        }
    }
}
