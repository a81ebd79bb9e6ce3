//! `premier synth`: the synthetic preference world.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use premier::synth::export::export_dataset;
use premier::synth::world::{World, WorldConfig};

#[derive(Debug, Clone, Args)]
pub struct SynthArgs {
    #[command(subcommand)]
    pub command: SynthCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum SynthCommand {
    /// Write the world's users and liked images as a dataset: a folder per user with `.txt`
    /// captions, a JSONL manifest and `world.json` (the tastes).
    Export(ExportArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    #[arg(long)]
    pub out: PathBuf,
    /// Draws the users, tastes and images.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = WorldConfig::default().train_users)]
    pub train_users: usize,
    #[arg(long, default_value_t = WorldConfig::default().new_users)]
    pub new_users: usize,
    #[arg(long, default_value_t = WorldConfig::default().images_per_user)]
    pub images_per_user: usize,
}

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
