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

/// Exports a synthetic world (`train_users` + 1 new user, `images` each) into `root/world` and
/// encodes it with the shipped base into `root/cache`; returns (world, cache).
pub fn encoded_synth_world(root: &Path, train_users: usize, images: usize) -> (PathBuf, PathBuf) {
    let (world, cache) = (root.join("world"), root.join("cache"));
    let (users, images) = (train_users.to_string(), images.to_string());
    premier(&[
        "synth",
        "export",
        "--out",
        s(&world),
        "--train-users",
        &users,
        "--new-users",
        "1",
        "--images-per-user",
        &images,
    ])
    .unwrap();
    let all = world.join("manifest.jsonl");
    let base = synth_base();
    premier(&[
        "encode",
        "--synth-base",
        s(&base),
        "--data",
        s(&all),
        "--cache",
        s(&cache),
    ])
    .unwrap();
    (world, cache)
}
