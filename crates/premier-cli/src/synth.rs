//! `premier synth`: the synthetic preference world.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use premier::synth::export::export_dataset;
use premier::synth::world::{World, WorldConfig};

/// `premier synth`: the synthetic preference world.
#[derive(Debug, Clone, Args)]
pub struct SynthArgs {
    /// What to do with the world.
    #[command(subcommand)]
    pub command: SynthCommand,
}

/// The subcommands of `premier synth`.
#[derive(Debug, Clone, Subcommand)]
pub enum SynthCommand {
    /// Write the world's users and liked images as a dataset: a folder per user with `.txt`
    /// captions, a JSONL manifest and `world.json` (the tastes).
    Export(ExportArgs),
}

/// `premier synth export`: the world written as a dataset in the real formats.
#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    /// The folder to write (it must not hold an earlier export).
    #[arg(long)]
    pub out: PathBuf,
    /// Draws the users, tastes and images.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Users stage 1 trains on.
    #[arg(long, default_value_t = WorldConfig::default().train_users)]
    pub train_users: usize,
    /// Users held back for cold starts.
    #[arg(long, default_value_t = WorldConfig::default().new_users)]
    pub new_users: usize,
    /// Liked images drawn per user.
    #[arg(long, default_value_t = WorldConfig::default().images_per_user)]
    pub images_per_user: usize,
}

/// Runs `premier synth`.
pub fn run(args: SynthArgs) -> anyhow::Result<()> {
    match args.command {
        SynthCommand::Export(a) => {
            let world = World::new(WorldConfig {
                seed: a.seed,
                train_users: a.train_users,
                new_users: a.new_users,
                images_per_user: a.images_per_user,
                ..WorldConfig::default()
            });
            let exported = export_dataset(&world, &a.out)?;
            println!(
                "wrote {} images of {} users:\n  {}\n  {} (all users)\n  {} (stage-1 users)\n  {} (new users)\n  {}",
                exported.images,
                world.users.len(),
                exported.folder.display(),
                exported.manifest.display(),
                exported.train.display(),
                exported.new_users.display(),
                exported.world.display()
            );
            Ok(())
        }
    }
}
