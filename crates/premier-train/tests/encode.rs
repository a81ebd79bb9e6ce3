//! `premier encode`'s loop with stand-in encoders: each image and caption once, an interrupted
//! encode resumes to the same cache, bad images name their file (or are skipped and counted), and
//! training batches read back the posteriors it wrote.

use std::cell::Cell;
use std::path::{Path, PathBuf};

use burn::backend::Flex;
use burn::prelude::*;
use image::RgbImage;
use premier_io::HostTensor;
use premier_train::batches::CachedUsers;
use premier_train::cache::{CachedLatent, CachedText, EncodedCache, EncoderIdentity};
use premier_train::data::{Dataset, ReadOptions};
use premier_train::encode::{encode_dataset, EncodeOptions, Encoders};
use premier_train::samples::UserSamples;

/// Latent `[2, 2, 2]`: the image's mean red and green; log-variance `logvar`. Text: the caption's
/// length. Fails once `calls_left` runs out.
struct Stand {
    logvar: f32,
    calls_left: Cell<usize>,
    image_batches: Vec<usize>,
}

impl Stand {
    fn new(logvar: f32) -> Self {
        Self {
            logvar,
            calls_left: Cell::new(usize::MAX),
            image_batches: Vec::new(),
        }
    }
}

impl Encoders for Stand {
    fn identity(&self) -> EncoderIdentity {
        EncoderIdentity {
            images: format!("stand, logvar {}", self.logvar),
            text: "stand".into(),
        }
    }

    fn encode_images(&mut self, images: &[RgbImage]) -> Result<Vec<CachedLatent>, String> {
        if self.calls_left.get() == 0 {
            return Err("out of calls".into());
        }
        self.calls_left.set(self.calls_left.get() - 1);
        self.image_batches.push(images.len());
        Ok(images
            .iter()
            .map(|img| {
                let n = img.pixels().len() as f32;
                let r = img.pixels().map(|p| p[0] as f32).sum::<f32>() / n / 255.0;
                let g = img.pixels().map(|p| p[1] as f32).sum::<f32>() / n / 255.0;
                CachedLatent {
                    mean: HostTensor {
                        shape: vec![2, 2, 2],
                        data: vec![r, g, r, g, g, r, g, r],
                    },
                    logvar: HostTensor {
                        shape: vec![2, 2, 2],
                        data: vec![self.logvar; 8],
                    },
                }
            })
            .collect())
    }

    fn encode_captions(&mut self, captions: &[String]) -> Result<Vec<CachedText>, String> {
        Ok(captions
            .iter()
            .map(|c| CachedText {
                tokens: HostTensor {
                    shape: vec![3, 2],
                    data: vec![c.len() as f32; 6],
                },
                pooled: HostTensor {
                    shape: vec![4],
                    data: vec![-(c.len() as f32); 4],
                },
            })
            .collect())
    }
}

/// A folder dataset: two users with three images each; `bob/0.png` is a copy of `alice/0.png`.
fn folder(dir: &Path) -> PathBuf {
    let root = dir.join("data");
    for (u, user) in ["alice", "bob"].iter().enumerate() {
        std::fs::create_dir_all(root.join(user)).unwrap();
        for i in 0..3u8 {
            let colour = if i == 0 {
                [9, 9, 9]
            } else {
                [40 * i, 100 * u as u8, 7]
            };
            RgbImage::from_pixel(4, 4, image::Rgb(colour))
                .save(root.join(user).join(format!("{i}.png")))
                .unwrap();
            std::fs::write(
                root.join(user).join(format!("{i}.txt")),
                format!("caption {i}"),
            )
            .unwrap();
        }
    }
    root
}

fn options(skip_bad: bool) -> EncodeOptions {
    EncodeOptions {
        batch_size: 2,
        batches_per_shard: 1,
        skip_bad,
    }
}

#[test]
fn every_image_and_caption_once_and_resume_after_interruption() {
    let dir = tempfile::tempdir().unwrap();
    let data = Dataset::from_folder(&folder(dir.path()), &ReadOptions::default()).unwrap();
    let extra = vec![String::new()];

    let whole = dir.path().join("whole");
    let mut cache = EncodedCache::open(&whole, true).unwrap();
    let mut stand = Stand::new(-2.0);
    let mut ticks = Vec::new();
    let report = encode_dataset(
        &data,
        &extra,
        &mut cache,
        &mut stand,
        &options(false),
        &mut |d, t| ticks.push((d, t)),
    )
    .unwrap();
    assert_eq!(
        (report.images_encoded, report.images_cached),
        (5, 1),
        "the shared image once"
    );
    assert_eq!((report.captions_encoded, report.captions_cached), (4, 3));
    assert_eq!(stand.image_batches, vec![2, 2, 1]);
    assert_eq!(ticks.last(), Some(&(9, 9)));

    // Interrupted after the first image shard: that shard is in the index, the rest is encoded
    // by the next run, and the cache ends up the same as the uninterrupted one.
    let resumed = dir.path().join("resumed");
    let mut cache2 = EncodedCache::open(&resumed, true).unwrap();
    let failing = Stand::new(-2.0);
    failing.calls_left.set(1);
    let mut failing = failing;
    let err = encode_dataset(
        &data,
        &extra,
        &mut cache2,
        &mut failing,
        &options(false),
        &mut |_, _| {},
    )
    .unwrap_err();
    assert!(err.to_string().contains("out of calls"), "{err}");
    let mut cache2 = EncodedCache::open(&resumed, false).unwrap();
    assert_eq!(cache2.index.images.len(), 2);
    let mut again = Stand::new(-2.0);
    let report = encode_dataset(
        &data,
        &extra,
        &mut cache2,
        &mut again,
        &options(false),
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!((report.images_encoded, report.images_cached), (3, 3));
    assert_eq!(again.image_batches, vec![2, 1]);
    let mut whole = EncodedCache::open(&whole, false).unwrap();
    let keys: Vec<String> = whole.index.images.keys().cloned().collect();
    assert_eq!(
        keys,
        cache2.index.images.keys().cloned().collect::<Vec<_>>()
    );
    for k in &keys {
        assert_eq!(whole.latent(k).unwrap(), cache2.latent(k).unwrap());
    }
}

#[test]
fn non_finite_latents_name_the_image_and_nothing_is_cached() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = Dataset::from_folder(&folder(dir.path()), &ReadOptions::default()).unwrap();
    let cache_dir = dir.path().join("cache");
    let mut cache = EncodedCache::open(&cache_dir, true).unwrap();
    let mut stand = Stand::new(f32::NAN);
    let err = encode_dataset(
        &dataset,
        &[],
        &mut cache,
        &mut stand,
        &options(false),
        &mut |_, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains(".png: its latent holds NaN or infinite values"),
        "{err}"
    );
    assert!(
        cache.index.images.is_empty(),
        "a non-finite latent was cached"
    );
}

#[test]
fn unreadable_images_name_the_file_or_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let root = folder(dir.path());
    let data = Dataset::from_folder(&root, &ReadOptions::default()).unwrap();
    // Damaged after the dataset was read (as a file can be between `read` and `encode`).
    std::fs::write(root.join("bob/2.png"), b"not a png").unwrap();
    let mut cache = EncodedCache::open(&dir.path().join("c"), true).unwrap();
    let err = encode_dataset(
        &data,
        &[],
        &mut cache,
        &mut Stand::new(0.0),
        &options(false),
        &mut |_, _| {},
    )
    .unwrap_err();
    assert!(err.to_string().contains("bob/2.png"), "{err}");
    // The shards before the bad image were kept; a fresh cache with --skip-bad gets the rest.
    assert_eq!(cache.index.images.len(), 4);
    let mut fresh = EncodedCache::open(&dir.path().join("c2"), true).unwrap();
    let report = encode_dataset(
        &data,
        &[],
        &mut fresh,
        &mut Stand::new(0.0),
        &options(true),
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(report.skipped.len(), 1);
    assert!(report.skipped[0].contains("bob/2.png"));
    assert_eq!(report.images_encoded, 4);
}

#[test]
fn batches_sample_the_cached_posteriors() {
    let dir = tempfile::tempdir().unwrap();
    let data = Dataset::from_folder(&folder(dir.path()), &ReadOptions::default()).unwrap();
    let device = Default::default();
    for (name, logvar) in [("sharp", -1e4f32), ("wide", 0.0)] {
        let path = dir.path().join(name);
        let mut cache = EncodedCache::open(&path, true).unwrap();
        encode_dataset(
            &data,
            &[String::new()],
            &mut cache,
            &mut Stand::new(logvar),
            &options(false),
            &mut |_, _| {},
        )
        .unwrap();
        let mut users = CachedUsers::new(&data, EncodedCache::open(&path, false).unwrap()).unwrap();
        assert_eq!(users.ids, vec!["alice", "bob"]);
        assert_eq!(users.counts(), vec![3, 3]);
        let picks = [(0, 1), (1, 2)];
        let a = users.batch::<Flex>(&picks, 3, &device).unwrap();
        let b = users.batch::<Flex>(&picks, 3, &device).unwrap();
        let c = users.batch::<Flex>(&picks, 4, &device).unwrap();
        assert_eq!(
            a.x0.dims(),
            [2, 1, 8],
            "[2, 2, 2] latents pack to one token of 8"
        );
        assert_eq!(a.latent_hw, (2, 2));
        assert_eq!(a.text.dims(), [2, 3, 2]);
        assert_eq!(a.pooled.dims(), [2, 4]);
        let same = |x: &Tensor<Flex, 3>, y: &Tensor<Flex, 3>| {
            x.clone().equal(y.clone()).all().into_scalar()
        };
        assert!(same(&a.x0, &b.x0), "a seed draws the same sample");
        // With variance 0 every seed gives the mean; with variance 1 seeds differ.
        assert_eq!(same(&a.x0, &c.x0), name == "sharp", "{name}");
        if name == "sharp" {
            let mut cache = EncodedCache::open(&path, false).unwrap();
            let key = premier_train::cache::image_hash(&data.users[0].samples[1].image).unwrap();
            let mean = cache.latent(&key).unwrap().mean;
            let packed = premier_mmdit::pack(Tensor::<Flex, 4>::from_data(
                TensorData::new(mean.data, [1, 2, 2, 2]),
                &device,
            ));
            assert!(same(&a.x0.clone().narrow(0, 0, 1), &packed));
        }
    }
    // A dataset with an image that was never encoded names it.
    let other = tempfile::tempdir().unwrap();
    let more = Dataset::from_folder(&folder(other.path()), &ReadOptions::default()).unwrap();
    RgbImage::from_pixel(4, 4, image::Rgb([1, 2, 3]))
        .save(&more.users[1].samples[1].image)
        .unwrap();
    let err = CachedUsers::new(
        &more,
        EncodedCache::open(&dir.path().join("sharp"), false).unwrap(),
    )
    .err()
    .unwrap();
    assert!(
        err.to_string().contains("bob/1.png") && err.to_string().contains("premier encode"),
        "{err}"
    );
}

#[test]
fn a_cache_refuses_entries_of_other_encoders_and_says_which() {
    let dir = tempfile::tempdir().unwrap();
    let data = Dataset::from_folder(&folder(dir.path()), &ReadOptions::default()).unwrap();
    let path = dir.path().join("cache");
    // Encodes `data` into the cache at `path` (created on the first call) with `stand`.
    let encode = |stand: &mut Stand| {
        let mut cache = EncodedCache::open(&path, true).unwrap();
        encode_dataset(
            &data,
            &[],
            &mut cache,
            stand,
            &options(false),
            &mut |_, _| {},
        )
    };
    encode(&mut Stand::new(-2.0)).unwrap();
    let index = std::fs::read_to_string(path.join("index.json")).unwrap();
    assert!(index.contains("stand, logvar -2"), "{index}");

    // The same encoders again: everything is cached.
    assert_eq!(encode(&mut Stand::new(-2.0)).unwrap().images_encoded, 0);

    // Another image encoder (here: another posterior variance) is refused, and nothing changes.
    let mut other = Stand::new(0.0);
    let err = encode(&mut other).unwrap_err().to_string();
    assert!(
        err.contains("its images were encoded by stand, logvar -2")
            && err.contains("not by stand, logvar 0"),
        "{err}"
    );
    assert!(other.image_batches.is_empty(), "nothing was encoded");
    assert_eq!(
        std::fs::read_to_string(path.join("index.json")).unwrap(),
        index
    );

    // A cache with entries but no record of its encoders (an older premier's) is refused.
    let mut stripped: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&index).unwrap();
    stripped.remove("encoders");
    std::fs::write(
        path.join("index.json"),
        serde_json::to_string(&stripped).unwrap(),
    )
    .unwrap();
    let err = encode(&mut Stand::new(-2.0)).unwrap_err().to_string();
    assert!(err.contains("does not record which encoders"), "{err}");
}
