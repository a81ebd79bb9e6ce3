//! Datasets of users' liked images with captions, in the formats Premier's data comes in:
//! - the official pickle: a list (or dict) of users, each a list of `[image_path, caption, …]`
//!   entries, the last entry a metadata dict (skipped);
//! - per-user CSV with columns `positive_image,caption` (the official cold-start scripts);
//! - a folder `<root>/<user>/<image>` with a `.txt` caption beside each image;
//! - a JSONL manifest, one `{"user", "image", "caption"}` object per line.
//!
//! Bad data is an error naming the file and line, or with `skip_bad` a warning counted in
//! [`Dataset::skipped`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;

/// One liked image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Path of the image file.
    pub image: PathBuf,
    /// The image's caption, trimmed.
    pub caption: String,
}

/// A user and their images, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserData {
    /// The user's id, unique in the dataset.
    pub id: String,
    /// The user's images with their captions.
    pub samples: Vec<Sample>,
}

/// Users in the order they appear; the index is the user's row in the table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Dataset {
    /// The users, in table-row order.
    pub users: Vec<UserData>,
    /// Problems skipped with `skip_bad`, as "file:line: reason".
    pub skipped: Vec<String>,
}

/// What is wrong with the data, and where.
#[derive(Debug, thiserror::Error)]
#[error("{file}{}: {reason}", line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct DataError {
    /// The file (or folder).
    pub file: PathBuf,
    /// Where in the file (a line, or a pickle's user index), when known.
    pub line: Option<usize>,
    /// What is wrong.
    pub reason: String,
}

/// Checks applied while reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadOptions {
    /// Fewest images a user may have.
    pub min_images: usize,
    /// Check that every image file exists and decodes its header.
    pub check_images: bool,
    /// Skip bad entries (and users) with a warning instead of failing.
    pub skip_bad: bool,
    /// Which element of an official pickle's entry is the caption. `None`: the released
    /// code's `entry[2]` when it is text, else `entry[1]` (the layout its README gives).
    pub pickle_caption: Option<usize>,
}

impl Default for ReadOptions {
    fn default() -> Self {
        Self {
            min_images: 1,
            check_images: true,
            skip_bad: false,
            pickle_caption: None,
        }
    }
}

/// The users of an official pickle in the file's order: serde_pickle's `Value` keeps a dict in
/// a sorted map, and the table's rows follow Python's insertion order.
struct PickleUsers(Vec<(String, serde_pickle::Value)>);

impl<'de> serde::Deserialize<'de> for PickleUsers {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Users;
        impl<'de> serde::de::Visitor<'de> for Users {
            type Value = PickleUsers;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list or dict of users")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<PickleUsers, A::Error> {
                let mut users = Vec::new();
                while let Some(user) = seq.next_element()? {
                    users.push((users.len().to_string(), user));
                }
                Ok(PickleUsers(users))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<PickleUsers, A::Error> {
                use serde_pickle::HashableValue;
                let mut users = Vec::new();
                while let Some((key, user)) =
                    map.next_entry::<HashableValue, serde_pickle::Value>()?
                {
                    let id = match key {
                        HashableValue::String(s) => s,
                        HashableValue::I64(i) => i.to_string(),
                        other => format!("{other:?}"),
                    };
                    users.push((id, user));
                }
                Ok(PickleUsers(users))
            }
        }
        deserializer.deserialize_any(Users)
    }
}

fn err(file: &Path, line: Option<usize>, reason: impl Into<String>) -> DataError {
    DataError {
        file: file.to_path_buf(),
        line,
        reason: reason.into(),
    }
}

/// A manifest's text: a UTF-8 byte-order mark (as some editors write) is dropped, and a byte
/// that is not UTF-8 is an error naming its line and column.
fn read_text(path: &Path) -> Result<String, DataError> {
    let bytes = std::fs::read(path).map_err(|e| err(path, None, e.to_string()))?;
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(&bytes);
    match std::str::from_utf8(bytes) {
        Ok(text) => Ok(text.to_string()),
        Err(e) => {
            let before = &bytes[..e.valid_up_to()];
            let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
            let column = before.len()
                - before
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .map_or(0, |i| i + 1)
                + 1;
            Err(err(
                path,
                Some(line),
                format!(
                    "byte 0x{:02x} at column {column} is not UTF-8 (save the file as UTF-8)",
                    bytes[e.valid_up_to()]
                ),
            ))
        }
    }
}

/// Collects users entry by entry, applying [`ReadOptions`].
struct Builder<'a> {
    options: &'a ReadOptions,
    users: Vec<UserData>,
    index: BTreeMap<String, usize>,
    skipped: Vec<String>,
}

impl<'a> Builder<'a> {
    fn new(options: &'a ReadOptions) -> Self {
        Self {
            options,
            users: Vec::new(),
            index: BTreeMap::new(),
            skipped: Vec::new(),
        }
    }

    /// Fails, or records and skips with `skip_bad`.
    fn problem(&mut self, e: DataError) -> Result<(), DataError> {
        if self.options.skip_bad {
            tracing::warn!("skipping: {e}");
            self.skipped.push(e.to_string());
            Ok(())
        } else {
            Err(e)
        }
    }

    /// Starts a user; a second user with the same id is an error.
    fn user(
        &mut self,
        id: &str,
        file: &Path,
        line: Option<usize>,
    ) -> Result<Option<usize>, DataError> {
        if self.index.contains_key(id) {
            self.problem(err(file, line, format!("duplicate user id {id:?}")))?;
            return Ok(None);
        }
        self.index.insert(id.to_string(), self.users.len());
        self.users.push(UserData {
            id: id.to_string(),
            samples: Vec::new(),
        });
        Ok(Some(self.users.len() - 1))
    }

    fn sample(
        &mut self,
        user: usize,
        image: PathBuf,
        caption: &str,
        file: &Path,
        line: Option<usize>,
    ) -> Result<(), DataError> {
        if caption.trim().is_empty() {
            return self.problem(err(
                file,
                line,
                format!("empty caption for {}", image.display()),
            ));
        }
        if self.options.check_images {
            if let Err(e) = image::ImageReader::open(&image)
                .and_then(|r| r.with_guessed_format())
                .map_err(|e| e.to_string())
                .and_then(|r| r.into_dimensions().map_err(|e| e.to_string()))
            {
                return self.problem(err(
                    file,
                    line,
                    format!("unreadable image {}: {e}", image.display()),
                ));
            }
        }
        self.users[user].samples.push(Sample {
            image,
            caption: caption.trim().to_string(),
        });
        Ok(())
    }

    fn finish(mut self, file: &Path) -> Result<Dataset, DataError> {
        let min = self.options.min_images;
        let mut kept = Vec::new();
        for user in std::mem::take(&mut self.users) {
            if user.samples.len() < min {
                self.problem(err(
                    file,
                    None,
                    format!(
                        "user {:?} has {} images, fewer than {min}",
                        user.id,
                        user.samples.len()
                    ),
                ))?;
            } else {
                kept.push(user);
            }
        }
        if kept.is_empty() {
            let why = if self.skipped.is_empty() {
                "no users with images in it".to_string()
            } else {
                format!(
                    "no users with images left after skipping {} bad entries (the last: {})",
                    self.skipped.len(),
                    self.skipped[self.skipped.len() - 1]
                )
            };
            return Err(err(file, None, why));
        }
        Ok(Dataset {
            users: kept,
            skipped: self.skipped,
        })
    }
}

/// Paths in a file are relative to the file's folder unless absolute.
fn resolve(base: &Path, image: &str) -> PathBuf {
    let p = PathBuf::from(image);
    if p.is_absolute() {
        p
    } else {
        base.parent().unwrap_or(Path::new(".")).join(p)
    }
}

impl Dataset {
    /// A JSONL manifest: one `{"user": …, "image": …, "caption": …}` per line (user may be a
    /// string or a number); users in order of first appearance.
    pub fn from_jsonl(path: &Path, options: &ReadOptions) -> Result<Self, DataError> {
        let text = read_text(path)?;
        let mut b = Builder::new(options);
        for (i, line) in text.lines().enumerate() {
            let n = Some(i + 1);
            if line.trim().is_empty() {
                continue;
            }
            let v: serde_json::Value = match serde_json::from_str(line) {
                Ok(v) => v,
                Err(e) => {
                    b.problem(err(path, n, format!("not JSON: {e}")))?;
                    continue;
                }
            };
            let field = |k: &str| match &v[k] {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Number(x) => Some(x.to_string()),
                _ => None,
            };
            let (Some(user), Some(image)) = (field("user"), field("image")) else {
                b.problem(err(path, n, "needs \"user\" and \"image\""))?;
                continue;
            };
            let caption = field("caption").unwrap_or_default();
            let index = match b.index.get(&user) {
                Some(&i) => i,
                None => match b.user(&user, path, n)? {
                    Some(i) => i,
                    None => continue,
                },
            };
            b.sample(index, resolve(path, &image), &caption, path, n)?;
        }
        b.finish(path)
    }

    /// Reads whichever format `paths` are in: one folder (folder layout), one `.jsonl` manifest,
    /// one `.pkl`/`.pickle` file, or one or more `.csv` files (a user each).
    pub fn read(paths: &[PathBuf], options: &ReadOptions) -> Result<Self, DataError> {
        let ext = |p: &Path| {
            p.extension()
                .map(|e| e.to_string_lossy().to_lowercase())
                .unwrap_or_default()
        };
        match paths {
            [] => Err(err(Path::new(""), None, "no dataset given")),
            [one] if one.is_dir() => Self::from_folder(one, options),
            [one] if ext(one) == "jsonl" => Self::from_jsonl(one, options),
            [one] if matches!(ext(one).as_str(), "pkl" | "pickle") => {
                Self::from_pickle(one, options)
            }
            many if many.iter().all(|p| ext(p) == "csv") => Self::from_csvs(many, options),
            many => {
                let odd = many
                    .iter()
                    .find(|p| ext(p) != "csv" || many.len() == 1)
                    .unwrap_or(&many[0]);
                Err(err(
                    odd,
                    None,
                    "not a dataset: give a folder, a .jsonl manifest, a .pkl file or per-user .csv files",
                ))
            }
        }
    }

    /// Per-user CSV files (`positive_image,caption`, header required), the user id being the
    /// file stem (`user_3685.csv` → `user_3685`).
    pub fn from_csvs(paths: &[PathBuf], options: &ReadOptions) -> Result<Self, DataError> {
        let mut b = Builder::new(options);
        for path in paths {
            let id = path
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_default();
            let Some(user) = b.user(&id, path, None)? else {
                continue;
            };
            let text = read_text(path)?;
            let mut reader = csv::Reader::from_reader(text.as_bytes());
            let headers = reader
                .headers()
                .map_err(|e| err(path, Some(1), e.to_string()))?
                .clone();
            let column = |name: &str| headers.iter().position(|h| h.trim() == name);
            let (Some(image_col), Some(caption_col)) =
                (column("positive_image"), column("caption"))
            else {
                return Err(err(
                    path,
                    Some(1),
                    format!(
                        "needs columns positive_image and caption, has {:?}",
                        headers
                    ),
                ));
            };
            for (i, record) in reader.records().enumerate() {
                let n = Some(i + 2);
                match record {
                    Ok(r) => {
                        let image = resolve(path, r.get(image_col).unwrap_or_default());
                        b.sample(user, image, r.get(caption_col).unwrap_or_default(), path, n)?;
                    }
                    Err(e) => b.problem(err(path, n, e.to_string()))?,
                }
            }
        }
        let first = paths.first().cloned().unwrap_or_default();
        b.finish(&first)
    }

    /// `<root>/<user>/<image>` with `<image stem>.txt` captions; users sorted by folder name.
    pub fn from_folder(root: &Path, options: &ReadOptions) -> Result<Self, DataError> {
        let list = |dir: &Path| -> Result<Vec<PathBuf>, DataError> {
            let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(|e| err(dir, None, e.to_string()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .collect();
            v.sort();
            Ok(v)
        };
        let mut b = Builder::new(options);
        for user_dir in list(root)?.into_iter().filter(|p| p.is_dir()) {
            let id = user_dir
                .file_name()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_default();
            let Some(user) = b.user(&id, &user_dir, None)? else {
                continue;
            };
            for image in list(&user_dir)? {
                let ext = image
                    .extension()
                    .map(|e| e.to_string_lossy().to_lowercase())
                    .unwrap_or_default();
                if !matches!(ext.as_str(), "png" | "jpg" | "jpeg" | "webp" | "bmp") {
                    continue;
                }
                let caption_path = image.with_extension("txt");
                match std::fs::read_to_string(&caption_path) {
                    Ok(caption) => b.sample(user, image, &caption, &caption_path, None)?,
                    Err(e) => b.problem(err(&caption_path, None, format!("no caption: {e}")))?,
                }
            }
        }
        b.finish(root)
    }

    /// The official pickle: a list (or dict of id → list) of users, in the file's order (a
    /// dict's as Python inserted its keys, so rows line up with the released table); each user
    /// a list of entries `[image_path, …]` whose caption is `entry[2]` as the released code
    /// reads it (or `entry[1]`, see [`ReadOptions::pickle_caption`]); the last entry a metadata
    /// dict, skipped.
    pub fn from_pickle(path: &Path, options: &ReadOptions) -> Result<Self, DataError> {
        use serde_pickle::Value;
        let bytes = std::fs::read(path).map_err(|e| err(path, None, e.to_string()))?;
        let PickleUsers(users) =
            serde_pickle::from_slice(&bytes, serde_pickle::DeOptions::new().decode_strings())
                .map_err(|e| err(path, None, format!("not a pickle of users: {e}")))?;
        let text = |v: &Value| match v {
            Value::String(s) => Some(s.clone()),
            Value::Bytes(b) => String::from_utf8(b.clone()).ok(),
            _ => None,
        };
        let mut b = Builder::new(options);
        for (n, (id, entries)) in users.into_iter().enumerate() {
            let Some(user) = b.user(&id, path, Some(n))? else {
                continue;
            };
            let entries = match entries {
                Value::List(v) | Value::Tuple(v) => v,
                other => {
                    b.problem(err(
                        path,
                        Some(n),
                        format!("user {id}: expected a list of entries, found {other:?}"),
                    ))?;
                    continue;
                }
            };
            for entry in entries {
                match entry {
                    Value::Dict(_) => {} // the trailing metadata
                    Value::List(v) | Value::Tuple(v) => {
                        let caption = match options.pickle_caption {
                            Some(i) => v.get(i).and_then(text),
                            None => v.get(2).and_then(text).or_else(|| v.get(1).and_then(text)),
                        };
                        match (v.first().and_then(text), caption) {
                            (Some(image), Some(caption)) => {
                                b.sample(user, resolve(path, &image), &caption, path, Some(n))?
                            }
                            _ => b.problem(err(
                                path,
                                Some(n),
                                format!(
                                    "user {id}: entry without an image path and a caption ({})",
                                    match options.pickle_caption {
                                        Some(i) => format!("text at [0] and [{i}]"),
                                        None => "text at [0], and at [2] or [1]".into(),
                                    }
                                ),
                            ))?,
                        }
                    }
                    other => b.problem(err(
                        path,
                        Some(n),
                        format!("user {id}: unexpected entry {other:?}"),
                    ))?,
                }
            }
        }
        b.finish(path)
    }

    /// Splits each user's images into training and held-out sets: `held_out` images per user
    /// (never all of them), chosen by a seeded shuffle. Returns (train, held_out).
    pub fn split(&self, held_out: usize, seed: u64) -> (Dataset, Dataset) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let (mut train, mut test) = (Dataset::default(), Dataset::default());
        for user in &self.users {
            let mut order: Vec<usize> = (0..user.samples.len()).collect();
            order.shuffle(&mut rng);
            let k = held_out.min(user.samples.len().saturating_sub(1));
            let (test_idx, train_idx) = order.split_at(k);
            let pick = |idx: &[usize]| {
                let mut idx = idx.to_vec();
                idx.sort();
                UserData {
                    id: user.id.clone(),
                    samples: idx.iter().map(|&i| user.samples[i].clone()).collect(),
                }
            };
            train.users.push(pick(train_idx));
            test.users.push(pick(test_idx));
        }
        (train, test)
    }
}
