//! Encoder caches written by `premier encode` and read by training, so training never loads T5,
//! CLIP or the VAE.
//!
//! Layout of a cache folder:
//! - `images-NNNNN.safetensors`: per image, `{hash}.mean` and `{hash}.logvar`, the VAE posterior
//!   `[channels, h, w]` (training samples `mean + exp(logvar / 2) · ε` each step, as released);
//! - `text-NNNNN.safetensors`: per caption, `{hash}.tokens` `[txt_tokens, text_dim]` and
//!   `{hash}.pooled` `[vec_dim]`;
//! - `index.json`: which shard holds each hash. It is rewritten (atomically) after every shard,
//!   so an interrupted encode resumes from the last complete shard.
//!
//! Keys are content hashes (SHA-256 of the image file's bytes, of the caption's UTF-8), so the
//! same image or caption is encoded once however many users share it, and a cache stays valid
//! when files move. What encoded them — the encoders' weights, configs, resolution and
//! preprocessing — is recorded once per cache ([`EncoderIdentity`] in `index.json`): a cache
//! holds one such identity and refuses to mix in entries of another.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use premier_io::LoadError;
use premier_io::{write_safetensors, write_via_temp, HostTensor, SafetensorsFile, SaveDtype};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Errors of reading or writing a cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// A file or folder could not be read, written or parsed.
    #[error("{path}: {reason}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A safetensors shard could not be read.
    #[error(transparent)]
    File(#[from] LoadError),
    /// The index has no entry for an image or caption.
    #[error("{cache}: no entry for {what} {hash} (run `premier encode` on this dataset)")]
    Missing {
        /// The cache folder.
        cache: PathBuf,
        /// `"image"` or `"caption"`.
        what: &'static str,
        /// The content hash looked up.
        hash: String,
    },
    /// The cache's entries were made by other encoders than the ones asked for.
    #[error("{cache}: its {part} were encoded by {cached}, not by {asked}; encode into another cache folder (entries of two encoders are never mixed)")]
    OtherEncoders {
        /// The cache folder.
        cache: PathBuf,
        /// The part that differs: `"images"` or `"captions"`.
        part: &'static str,
        /// The identity of that part recorded in the cache.
        cached: String,
        /// The identity of that part asked for.
        asked: String,
    },
    /// The cache holds entries but records no encoder identity.
    #[error("{cache}: this cache does not record which encoders made it (written by an older premier); encode into a new cache folder")]
    UnknownEncoders {
        /// The cache folder.
        cache: PathBuf,
    },
}

/// What made a cache's entries: the same image encoded by another autoencoder, at another
/// resolution or with other preprocessing (or a caption by other text encoders) is another
/// value, so a cache is only valid for the encoders that wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncoderIdentity {
    /// The image encoder: weights fingerprint, config, resolution, preprocessing.
    pub images: String,
    /// The text encoders: weights fingerprints, tokenizers, lengths.
    pub text: String,
}

/// A fingerprint of a weights file or folder that reads a few MiB, not the whole file: per
/// file (a folder's files in name order), its name, size, and SHA-256 of its first and last MiB
/// (which hold a safetensors header and data from both ends).
pub fn weights_fingerprint(path: &Path) -> Result<String, CacheError> {
    use std::io::{Read, Seek, SeekFrom};
    const PART: u64 = 1 << 20;
    let mut files = if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| io(path, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && p.extension()
                        .is_some_and(|e| e == "safetensors" || e == "json")
            })
            .collect();
        files.sort();
        files
    } else {
        vec![path.to_path_buf()]
    };
    let mut hasher = Sha256::new();
    for file in files.drain(..) {
        let mut f = std::fs::File::open(&file).map_err(|e| io(&file, e))?;
        let size = f.metadata().map_err(|e| io(&file, e))?.len();
        hasher.update(file.file_name().unwrap_or_default().as_encoded_bytes());
        hasher.update(size.to_le_bytes());
        let mut buf = Vec::new();
        (&mut f)
            .take(PART)
            .read_to_end(&mut buf)
            .map_err(|e| io(&file, e))?;
        if size > PART {
            f.seek(SeekFrom::Start(size.saturating_sub(PART).max(PART)))
                .map_err(|e| io(&file, e))?;
            f.read_to_end(&mut buf).map_err(|e| io(&file, e))?;
        }
        hasher.update(&buf);
    }
    Ok(hasher
        .finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect())
}

fn io(path: &Path, e: impl std::fmt::Display) -> CacheError {
    CacheError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Hex SHA-256 of `bytes`.
pub fn content_hash(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Hash of an image file's bytes.
pub fn image_hash(path: &Path) -> Result<String, CacheError> {
    let bytes = std::fs::read(path).map_err(|e| io(path, e))?;
    Ok(content_hash(&bytes))
}

/// Hash of a caption.
pub fn caption_hash(caption: &str) -> String {
    content_hash(caption.as_bytes())
}

/// `index.json`: shard file name of every cached hash.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheIndex {
    /// Image hash → shard file name.
    pub images: BTreeMap<String, String>,
    /// Caption hash → shard file name.
    pub captions: BTreeMap<String, String>,
    /// What encoded the entries; `None` only for an empty cache (or one of an older premier).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoders: Option<EncoderIdentity>,
}

/// A VAE posterior: mean and log-variance `[channels, h, w]`.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedLatent {
    /// Mean `[channels, h, w]`.
    pub mean: HostTensor,
    /// Log-variance `[channels, h, w]`.
    pub logvar: HostTensor,
}

/// A caption's text features.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedText {
    /// `[txt_tokens, text_dim]`.
    pub tokens: HostTensor,
    /// `[vec_dim]`.
    pub pooled: HostTensor,
}

/// An open cache folder.
pub struct EncodedCache {
    dir: PathBuf,
    /// The cache's `index.json`, as read (and updated as shards are written).
    pub index: CacheIndex,
    shards: BTreeMap<String, SafetensorsFile>,
}

impl EncodedCache {
    /// Opens (or, with `create`, starts) the cache in `dir`.
    pub fn open(dir: &Path, create: bool) -> Result<Self, CacheError> {
        let index_path = dir.join("index.json");
        let index = if index_path.is_file() {
            let text = std::fs::read_to_string(&index_path).map_err(|e| io(&index_path, e))?;
            serde_json::from_str(&text).map_err(|e| io(&index_path, e))?
        } else if create {
            std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
            CacheIndex::default()
        } else {
            return Err(io(&index_path, "no cache here (run `premier encode`)"));
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            index,
            shards: BTreeMap::new(),
        })
    }

    /// The cache's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the image with `hash` is cached.
    pub fn has_image(&self, hash: &str) -> bool {
        self.index.images.contains_key(hash)
    }

    /// Whether the caption with `hash` is cached.
    pub fn has_caption(&self, hash: &str) -> bool {
        self.index.captions.contains_key(hash)
    }

    /// The two tensors `{hash}.{part}` of an image (`what` = "image") or caption entry, read from
    /// the shard the index names (opened, memory-mapped, on first use).
    fn entry(
        &mut self,
        what: &'static str,
        hash: &str,
        parts: [&str; 2],
    ) -> Result<[HostTensor; 2], CacheError> {
        let index = if what == "image" {
            &self.index.images
        } else {
            &self.index.captions
        };
        let name = index
            .get(hash)
            .cloned()
            .ok_or_else(|| CacheError::Missing {
                cache: self.dir.clone(),
                what,
                hash: hash.into(),
            })?;
        if !self.shards.contains_key(&name) {
            let file = SafetensorsFile::open(&self.dir.join(&name))?;
            self.shards.insert(name.clone(), file);
        }
        let file = &self.shards[&name];
        Ok([
            file.read(&format!("{hash}.{}", parts[0]))?,
            file.read(&format!("{hash}.{}", parts[1]))?,
        ])
    }

    /// The posterior of the image with `hash`.
    pub fn latent(&mut self, hash: &str) -> Result<CachedLatent, CacheError> {
        let [mean, logvar] = self.entry("image", hash, ["mean", "logvar"])?;
        Ok(CachedLatent { mean, logvar })
    }

    /// The text features of the caption with `hash`.
    pub fn text(&mut self, hash: &str) -> Result<CachedText, CacheError> {
        let [tokens, pooled] = self.entry("caption", hash, ["tokens", "pooled"])?;
        Ok(CachedText { tokens, pooled })
    }

    fn next_shard_name(&self, prefix: &str) -> String {
        let used = self
            .index
            .images
            .values()
            .chain(self.index.captions.values())
            .filter(|s| s.starts_with(prefix))
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        format!("{prefix}-{used:05}.safetensors")
    }

    fn commit_index(&self) -> Result<(), CacheError> {
        let path = self.dir.join("index.json");
        let json = serde_json::to_string_pretty(&self.index).map_err(|e| io(&path, e))?;
        write_via_temp(&path, |tmp| {
            std::fs::write(tmp, json).map_err(|e| e.to_string())
        })
        .map_err(|e| io(&path, e))
    }

    /// Writes `{hash}.{name}` for every entry into the next `{prefix}-NNNNN.safetensors` and
    /// returns the shard's file name.
    fn write_shard(
        &self,
        prefix: &str,
        entries: &[(String, [(&str, &HostTensor); 2])],
    ) -> Result<String, CacheError> {
        let name = self.next_shard_name(prefix);
        let tensors: Vec<(String, HostTensor)> = entries
            .iter()
            .flat_map(|(hash, parts)| {
                parts
                    .iter()
                    .map(move |(part, t)| (format!("{hash}.{part}"), (*t).clone()))
            })
            .collect();
        write_safetensors(&self.dir.join(&name), &tensors, SaveDtype::F32)?;
        Ok(name)
    }

    /// Makes `identity` this cache's encoders: recorded in an empty cache, accepted when equal,
    /// refused (naming the part that differs) when the entries were made by other encoders.
    pub fn claim(&mut self, identity: &EncoderIdentity) -> Result<(), CacheError> {
        match &self.index.encoders {
            Some(cached) if cached == identity => Ok(()),
            Some(cached) => {
                let (part, cached, asked) = if cached.images != identity.images {
                    ("images", &cached.images, &identity.images)
                } else {
                    ("captions", &cached.text, &identity.text)
                };
                Err(CacheError::OtherEncoders {
                    cache: self.dir.clone(),
                    part,
                    cached: cached.clone(),
                    asked: asked.clone(),
                })
            }
            None if self.index.images.is_empty() && self.index.captions.is_empty() => {
                self.index.encoders = Some(identity.clone());
                self.commit_index()
            }
            None => Err(CacheError::UnknownEncoders {
                cache: self.dir.clone(),
            }),
        }
    }

    /// Writes a shard of image posteriors and records them in the index.
    pub fn add_latents(&mut self, items: Vec<(String, CachedLatent)>) -> Result<(), CacheError> {
        if items.is_empty() {
            return Ok(());
        }
        let entries: Vec<_> = items
            .iter()
            .map(|(h, l)| (h.clone(), [("mean", &l.mean), ("logvar", &l.logvar)]))
            .collect();
        let name = self.write_shard("images", &entries)?;
        for (hash, _) in items {
            self.index.images.insert(hash, name.clone());
        }
        self.commit_index()
    }

    /// Writes a shard of caption features and records them in the index.
    pub fn add_texts(&mut self, items: Vec<(String, CachedText)>) -> Result<(), CacheError> {
        if items.is_empty() {
            return Ok(());
        }
        let entries: Vec<_> = items
            .iter()
            .map(|(h, t)| (h.clone(), [("tokens", &t.tokens), ("pooled", &t.pooled)]))
            .collect();
        let name = self.write_shard("text", &entries)?;
        for (hash, _) in items {
            self.index.captions.insert(hash, name.clone());
        }
        self.commit_index()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(shape: Vec<usize>, start: f32) -> HostTensor {
        let n = shape.iter().product();
        HostTensor {
            shape,
            data: (0..n).map(|i| start + i as f32).collect(),
        }
    }

    #[test]
    fn entries_survive_reopening_and_missing_ones_name_the_hash() {
        let dir = tempfile::tempdir().unwrap();
        let mut cache = EncodedCache::open(dir.path(), true).unwrap();
        let h1 = caption_hash("a small circle");
        let latent = CachedLatent {
            mean: host(vec![2, 2, 2], 0.0),
            logvar: host(vec![2, 2, 2], -4.0),
        };
        cache
            .add_latents(vec![("img1".into(), latent.clone())])
            .unwrap();
        let text = CachedText {
            tokens: host(vec![3, 4], 1.0),
            pooled: host(vec![5], 2.0),
        };
        cache.add_texts(vec![(h1.clone(), text.clone())]).unwrap();
        cache
            .add_latents(vec![("img2".into(), latent.clone())])
            .unwrap();
        drop(cache);

        let mut cache = EncodedCache::open(dir.path(), false).unwrap();
        assert!(cache.has_image("img1") && cache.has_image("img2") && cache.has_caption(&h1));
        assert_ne!(cache.index.images["img1"], cache.index.images["img2"]);
        assert_eq!(cache.latent("img2").unwrap(), latent);
        assert_eq!(cache.text(&h1).unwrap(), text);
        let err = cache.latent("nope").unwrap_err().to_string();
        assert!(
            err.contains("nope") && err.contains("premier encode"),
            "{err}"
        );
    }

    #[test]
    fn hashes_follow_content() {
        assert_eq!(caption_hash("a"), caption_hash("a"));
        assert_ne!(caption_hash("a"), caption_hash("b"));
        assert_eq!(
            content_hash(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let no_cache = tempfile::tempdir().unwrap();
        assert!(EncodedCache::open(no_cache.path(), false).is_err());
    }
}
