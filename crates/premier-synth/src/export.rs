//! Writing the world as a dataset in the real on-disk formats, so the `premier` commands and
//! `premier_train::data` readers run on it unchanged: a folder per user with a `.txt` caption
//! beside each PNG, a JSONL manifest over the same files, and `world.json` with the tastes
//! (the ground truth the scorers use).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::world::{World, WorldConfig};

/// What [`export_dataset`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exported {
    /// `<dir>/users/`: `<user>/<nnn>.png` + `<nnn>.txt`.
    pub folder: PathBuf,
    /// `<dir>/manifest.jsonl`: `{"user", "image", "caption"}` per line.
    pub manifest: PathBuf,
    /// `<dir>/world.json`.
    pub world: PathBuf,
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

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> std::io::Error + '_ {
    move |e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Writes every user's liked images (trained and new users) under `dir`. Captions name only the
/// content, as the users' prompts would.
pub fn export_dataset(world: &World, dir: &Path) -> std::io::Result<Exported> {
    let folder = dir.join("users");
    std::fs::create_dir_all(&folder).map_err(io_err(&folder))?;
    let manifest_path = dir.join("manifest.jsonl");
    let tmp_manifest = dir.join(".manifest.jsonl.tmp");
    let mut manifest = std::fs::File::create(&tmp_manifest).map_err(io_err(&tmp_manifest))?;
    let mut images = 0;
    for (u, user) in world.users.iter().enumerate() {
        let user_dir = folder.join(&user.id);
        std::fs::create_dir_all(&user_dir).map_err(io_err(&user_dir))?;
        for (i, image) in world.liked_images(u).into_iter().enumerate() {
            let png = user_dir.join(format!("{i:03}.png"));
            image
                .rgb
                .save_with_format(&png, image::ImageFormat::Png)
                .map_err(|e| std::io::Error::other(format!("{}: {e}", png.display())))?;
            let caption = image.content.prompt();
            let txt = png.with_extension("txt");
            std::fs::write(&txt, &caption).map_err(io_err(&txt))?;
            let line = ManifestLine {
                user: &user.id,
                image: format!("users/{}/{i:03}.png", user.id),
                caption,
            };
            let json = serde_json::to_string(&line).map_err(std::io::Error::other)?;
            writeln!(manifest, "{json}").map_err(io_err(&tmp_manifest))?;
            images += 1;
        }
    }
    drop(manifest);
    std::fs::rename(&tmp_manifest, &manifest_path).map_err(io_err(&manifest_path))?;
    let world_path = dir.join("world.json");
    let json = serde_json::to_string_pretty(&WorldFile {
        config: &world.config,
        users: &world.users,
    })
    .map_err(std::io::Error::other)?;
    std::fs::write(&world_path, json).map_err(io_err(&world_path))?;
    Ok(Exported {
        folder,
        manifest: manifest_path,
        world: world_path,
        images,
    })
}
