//! Writing the world as a dataset in the real on-disk formats, so the `premier` commands and
//! `premier_train::data` readers run on it unchanged: a folder per user with a `.txt` caption
//! beside each PNG, JSONL manifests over the same files (all users, the training users, the new
//! users), and `world.json` with the tastes
//! (the ground truth the scorers use).

use std::path::{Path, PathBuf};

use premier_io::write_via_temp;
use premier_pipeline::image_io::save_png;
use serde::Serialize;

use crate::world::{World, WorldConfig};

/// What [`export_dataset`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exported {
    /// `<dir>/users/`: `<user>/<nnn>.png` + `<nnn>.txt`.
    pub folder: PathBuf,
    /// `<dir>/manifest.jsonl`: `{"user", "image", "caption"}` per line, every user.
    pub manifest: PathBuf,
    /// `<dir>/train.jsonl`: the same for the users stage 1 trains on.
    pub train: PathBuf,
    /// `<dir>/new_users.jsonl`: the same for the users kept for cold start.
    pub new_users: PathBuf,
    /// `<dir>/world.json`.
    pub world: PathBuf,
    /// Images written.
    pub images: usize,
}

#[derive(Serialize)]
struct ManifestLine<'a> {
    user: &'a str,
    image: String,
    caption: String,
}

#[derive(Serialize)]
struct WorldFile<'a> {
    config: &'a WorldConfig,
    users: &'a [crate::world::User],
}

/// Writes `text` to `path` atomically (temporary file, then rename).
fn write_text(path: &Path, text: &str) -> std::io::Result<()> {
    write_via_temp(path, |tmp| {
        std::fs::write(tmp, text).map_err(|e| e.to_string())
    })
    .map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))
}

/// Writes every user's liked images (trained and new users) under `dir`, each file atomically.
/// Captions name only the content, as the users' prompts would.
pub fn export_dataset(world: &World, dir: &Path) -> std::io::Result<Exported> {
    let folder = dir.join("users");
    let mut manifest = String::new();
    let mut train = String::new();
    let mut images = 0;
    for (u, user) in world.users.iter().enumerate() {
        let user_dir = folder.join(&user.id);
        std::fs::create_dir_all(&user_dir)
            .map_err(|e| std::io::Error::other(format!("{}: {e}", user_dir.display())))?;
        for (i, image) in world.liked_images(u).into_iter().enumerate() {
            let png = user_dir.join(format!("{i:03}.png"));
            save_png(&image.rgb, &png).map_err(std::io::Error::other)?;
            let caption = image.content.prompt();
            write_text(&png.with_extension("txt"), &caption)?;
            let line = ManifestLine {
                user: &user.id,
                image: format!("users/{}/{i:03}.png", user.id),
                caption,
            };
            let line = serde_json::to_string(&line).map_err(std::io::Error::other)? + "\n";
            manifest.push_str(&line);
            if u < world.config.train_users {
                train.push_str(&line);
            }
            images += 1;
        }
    }
    let manifest_path = dir.join("manifest.jsonl");
    write_text(&manifest_path, &manifest)?;
    let train_path = dir.join("train.jsonl");
    write_text(&train_path, &train)?;
    let new_path = dir.join("new_users.jsonl");
    write_text(&new_path, &manifest[train.len()..])?;
    let world_path = dir.join("world.json");
    let json = serde_json::to_string_pretty(&WorldFile {
        config: &world.config,
        users: &world.users,
    })
    .map_err(std::io::Error::other)?;
    write_text(&world_path, &json)?;
    Ok(Exported {
        folder,
        manifest: manifest_path,
        train: train_path,
        new_users: new_path,
        world: world_path,
        images,
    })
}
