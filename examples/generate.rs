//! Personalized generation with FLUX.1 files, through the library's [`premier::Premier`]:
//! every prompt for every user, one PNG each and a grid.
//!
//! ```text
//! cargo run --release --example generate -- --model-dir FLUX.1-dev --run my-run \
//!     --user base --user alice --prompt "a cabin in the woods" --steps 28 --out out
//! ```
//!
//! `--run` is a `premier train` folder (`mod_adapter.safetensors`, `user_embedding.safetensors`,
//! `premier.json`); without it only `base` can be drawn. A `--user` is `base`, a table row, an id
//! of the run, or a user file written by the cold start.

use std::path::PathBuf;

use premier::{Premier, PremierError, User};

/// What the example is asked for.
pub struct Options {
    pub model_dir: PathBuf,
    pub run: Option<PathBuf>,
    pub users: Vec<User>,
    pub prompts: Vec<String>,
    pub steps: Option<usize>,
    pub size: usize,
    pub out: PathBuf,
}

/// Loads the model (and the run's adapter and users), draws, saves; returns the files written.
pub fn run(options: &Options) -> Result<Vec<PathBuf>, PremierError> {
    let mut builder = Premier::<burn::backend::Flex>::builder().model_dir(&options.model_dir);
    if let Some(run) = &options.run {
        builder = builder
            .adapter(run.join("mod_adapter.safetensors"))
            .user_table(run.join("user_embedding.safetensors"));
    }
    let mut premier = builder.build()?;
    let mut request = premier
        .request(options.prompts.clone())
        .users(options.users.clone())
        .size(options.size, options.size);
    if let Some(steps) = options.steps {
        request = request.steps(steps);
    }
    let images = premier.generate_with(&request, &mut |done: usize, total: usize| {
        eprint!("\rstep {done}/{total}")
    })?;
    eprintln!();
    images.save(&options.out)
}

#[allow(dead_code)] // a test includes this file and calls `run`
fn parse(args: &[String]) -> Result<Options, String> {
    let mut options = Options {
        model_dir: PathBuf::new(),
        run: None,
        users: Vec::new(),
        prompts: Vec::new(),
        steps: None,
        size: 512,
        out: PathBuf::from("out"),
    };
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = |v: &str| v.parse::<usize>().map_err(|e| format!("{flag} {v}: {e}"));
        match flag.as_str() {
            "--model-dir" => options.model_dir = PathBuf::from(value),
            "--run" => options.run = Some(PathBuf::from(value)),
            "--user" => options.users.push(User::parse(value)),
            "--prompt" => options.prompts.push(value.clone()),
            "--steps" => options.steps = Some(number(value)?),
            "--size" => options.size = number(value)?,
            "--out" => options.out = PathBuf::from(value),
            other => return Err(format!("unknown option {other}")),
        }
    }
    if options.model_dir.as_os_str().is_empty() || options.prompts.is_empty() {
        return Err("give --model-dir and at least one --prompt".into());
    }
    if options.users.is_empty() {
        options.users.push(User::Base);
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
        Ok(written) => println!("wrote {} files, the grid last", written.len()),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1)
        }
    }
}
