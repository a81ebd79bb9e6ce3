//! Helpers of the end-to-end tests: the `premier` CLI in process, paths as arguments, file hashes.

use std::path::{Path, PathBuf};

use clap::Parser;
use premier::cli::{run, Cli};

/// Runs `premier ARGS…` in this process.
pub fn premier(args: &[&str]) -> anyhow::Result<()> {
    let mut full = vec!["premier"];
    full.extend_from_slice(args);
    run(Cli::try_parse_from(full)?)
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

pub fn sha(path: &Path) -> String {
    premier::train::cache::content_hash(&std::fs::read(path).unwrap())
}

pub fn synth_base() -> PathBuf {
    premier::synth::base::shipped_base_dir()
}
