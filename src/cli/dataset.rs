//! Dataset options shared by `encode`, `train` and `cold-start`, and the progress bars.

use std::path::PathBuf;

use clap::Args;

use crate::train::data::{Dataset, ReadOptions};

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
}

impl DataArgs {
    pub fn read(&self) -> anyhow::Result<Dataset> {
        let dataset = Dataset::read(
            &self.data,
            &ReadOptions {
                min_images: self.min_images,
                check_images: true,
                skip_bad: self.skip_bad,
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

/// A progress bar with ETA.
pub fn progress_bar(len: u64, unit: &str) -> indicatif::ProgressBar {
    indicatif::ProgressBar::new(len).with_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{{bar:40}} {{pos}}/{{len}} {unit} [{{elapsed_precise}}<{{eta_precise}}] {{msg}}"
        ))
        .expect("valid template"),
    )
}
