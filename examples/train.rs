//! Stage 1 from the library: a dataset encoded once into a cache, then the adapters and the user
//! table trained against the frozen FLUX.1 — what `premier encode` and `premier train` do.
//!
//! ```text
//! cargo run --release --example train -- FLUX.1-dev users/ cache/ run/ 1000
//! ```
//!
//! `users/` holds a folder per user with images and a `.txt` caption beside each (the official
//! pickle, per-user CSVs and JSONL manifests read the same way). The run folder ends with
//! `mod_adapter.safetensors`, `user_embedding.safetensors` and `premier.json`, which
//! `Premier::builder().adapter(..).user_table(..)` loads.

use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, Flex};
use premier::encoders::{FluxEncoders, Preprocess};
use premier::train::batches::CachedUsers;
use premier::train::cache::EncodedCache;
use premier::train::data::{Dataset, ReadOptions};
use premier::train::encode::{encode_dataset, EncodeOptions};
use premier::train::run::{train_stage1, RunSummary, Start, TrainConfig};
use premier::{ModelFiles, Variant};

type Error = Box<dyn std::error::Error>;

/// Encodes `data` into `cache` (what is cached already is kept) and trains `config` into `out`.
pub fn run(
    model_dir: &Path,
    data: &Path,
    cache: &Path,
    out: &Path,
    resolution: u32,
    config: &TrainConfig,
) -> Result<RunSummary, Error> {
    let files = ModelFiles::from_dir(model_dir);
    let device = Default::default();
    let dataset = Dataset::read(&[data.to_path_buf()], &ReadOptions::default())?;

    let mut encoders = FluxEncoders::<Flex>::load(
        &files,
        Variant::Dev,
        resolution,
        Preprocess::Resize,
        &device,
    )?;
    let mut encoded = EncodedCache::open(cache, true)?;
    // The empty prompt: the dispersion loss's negatives are Δ of the null prompt.
    encode_dataset(
        &dataset,
        &[String::new()],
        &mut encoded,
        &mut encoders,
        &EncodeOptions::default(),
        &mut |_, _| {},
    )?;
    drop(encoders);

    let flux =
        files.load_flux::<Autodiff<Flex>>(&files.flux_config(Variant::Dev)?, &device, None)?;
    let mut samples = CachedUsers::new(&dataset, encoded)?;
    let (_, summary) = train_stage1(
        flux,
        &mut samples,
        config,
        out,
        Start::Fresh,
        &mut (),
        &device,
    )?;
    Ok(summary)
}

#[allow(dead_code)] // a test includes this file and calls `run`
fn main() -> Result<(), Error> {
    premier::allocator::retain_freed_memory();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, data, cache, out, steps] = args.as_slice() else {
        return Err("usage: train MODEL_DIR DATA CACHE OUT STEPS".into());
    };
    let config = TrainConfig {
        steps: steps.parse()?,
        ..TrainConfig::default()
    };
    let summary = run(
        &PathBuf::from(model),
        &PathBuf::from(data),
        &PathBuf::from(cache),
        &PathBuf::from(out),
        512,
        &config,
    )?;
    println!(
        "{} steps in {:.0} s: {} and {}",
        summary.steps,
        summary.seconds,
        summary.adapter.display(),
        summary.table.display()
    );
    Ok(())
}
