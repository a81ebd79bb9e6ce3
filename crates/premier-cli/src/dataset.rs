//! What `encode`, `train` and `cold-start` share: dataset options, config files, progress bars.

use std::path::{Path, PathBuf};

use anyhow::Context;

use clap::Args;

use premier::train::data::{Dataset, ReadOptions};

/// A dataset on disk and the encoder cache made from it.
#[derive(Debug, Clone, Args)]
pub struct DataArgs {
    /// The dataset: a folder `<root>/<user>/<image>` with `.txt` captions, a `.jsonl` manifest,
    /// the official `.pkl`, or per-user `.csv` files (`positive_image,caption`).
    #[arg(long = "data", required = true, num_args = 1..)]
    pub data: Vec<PathBuf>,
    /// The encoder cache folder (`premier encode` writes it, training reads it).
    #[arg(long)]
    pub cache: PathBuf,
    /// Skip bad entries (unreadable images, empty captions, users with too few images, duplicate
    /// users) with a warning, and count them, instead of stopping.
    #[arg(long)]
    pub skip_bad: bool,
    /// Fewest images a user may have.
    #[arg(long, default_value_t = 1)]
    pub min_images: usize,
    /// Which element of an official pickle's entries is the caption (default: `[2]` as the
    /// released code reads it when it is text, else `[1]` as its README describes).
    #[arg(long)]
    pub pickle_caption: Option<usize>,
}

impl DataArgs {
    /// Reads the dataset (checking every image), printing what was skipped.
    pub fn read(&self) -> anyhow::Result<Dataset> {
        let dataset = Dataset::read(
            &self.data,
            &ReadOptions {
                min_images: self.min_images,
                check_images: true,
                skip_bad: self.skip_bad,
                pickle_caption: self.pickle_caption,
            },
        )?;
        if !dataset.skipped.is_empty() {
            eprintln!(
                "skipped {} bad entries (--skip-bad):",
                dataset.skipped.len()
            );
            for s in &dataset.skipped {
                eprintln!("  {s}");
            }
        }
        Ok(dataset)
    }
}

/// `defaults` with the TOML file at `path` (if any) over them.
pub fn config_file<T: serde::Serialize + serde::de::DeserializeOwned>(
    path: Option<&Path>,
    defaults: T,
) -> anyhow::Result<T> {
    let Some(path) = path else {
        return Ok(defaults);
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    premier::train::run::config_from_toml(&text, &defaults)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}
