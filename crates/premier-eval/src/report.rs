//! A whole evaluation: every user's images for the same prompts, personalized and (optionally)
//! from the base model, scored against the user's held-out images, in the layout of Premier's
//! table (rows: methods, and each user; columns: the metrics; means ± standard errors).

use burn::prelude::*;
use image::RgbImage;
use serde::Serialize;

use crate::clip_scorer::{clip_score, cosines, ClipScorer};
use crate::error::EvalError;
use crate::lpips::Lpips;
use crate::preference::{mean_cosine, wins};
use crate::stats::MeanSe;

/// One user's images: entry `k` of each list is for prompt `k`.
#[derive(Debug, Clone)]
pub struct UserImages {
    /// The user's id.
    pub id: String,
    /// Personalized images, one per prompt.
    pub generated: Vec<RgbImage>,
    /// The base model's images of the same prompts and seeds (for the win rate), if any.
    pub base: Option<Vec<RgbImage>>,
    /// The user's held-out images, one per prompt: the preference proxy's liked set, and
    /// LPIPS's reference for the same prompt.
    pub reference: Vec<RgbImage>,
}

/// The metrics of one row, over its images.
#[derive(Debug, Clone, Serialize)]
pub struct Scores {
    /// CLIP-T2I: the cosine of image and prompt.
    pub clip_t2i: Stat,
    /// torchmetrics' `CLIPScore`: 100 · max(cos, 0).
    pub clip_score: Stat,
    /// The preference proxy: the mean CLIP cosine to the user's held-out images (not ViPer).
    pub preference: Stat,
    /// The win rate over the base image of the same prompt (personalized rows with a base).
    pub win_rate: Option<Stat>,
    /// LPIPS to the held-out image of the same prompt (when an LPIPS is given).
    pub lpips: Option<Stat>,
}

/// A mean, its standard error and the count (serializable [`MeanSe`]).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Stat {
    /// The mean.
    pub mean: f64,
    /// Its standard error.
    pub se: f64,
    /// Values.
    pub n: usize,
}

impl From<MeanSe> for Stat {
    fn from(m: MeanSe) -> Self {
        Self {
            mean: m.mean,
            se: m.se,
            n: m.n,
        }
    }
}

/// A row of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// "Premier", "Base", or "Premier: <user>".
    pub name: String,
    /// Its metrics.
    pub scores: Scores,
}

/// The report: the methods over all users, then Premier per user.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// The prompts, in order.
    pub prompts: Vec<String>,
    /// The rows.
    pub rows: Vec<Row>,
}

/// Per-image values of one method.
#[derive(Default)]
struct Values {
    cos: Vec<f64>,
    preference: Vec<f64>,
    wins: Vec<f64>,
    lpips: Vec<f64>,
}

impl Values {
    fn extend(&mut self, other: &Values) {
        self.cos.extend(&other.cos);
        self.preference.extend(&other.preference);
        self.wins.extend(&other.wins);
        self.lpips.extend(&other.lpips);
    }

    fn scores(&self) -> Scores {
        let stat = |v: &[f64]| Stat::from(MeanSe::of(v));
        let scores: Vec<f64> = self.cos.iter().map(|&c| clip_score(c)).collect();
        Scores {
            clip_t2i: stat(&self.cos),
            clip_score: stat(&scores),
            preference: stat(&self.preference),
            win_rate: (!self.wins.is_empty()).then(|| stat(&self.wins)),
            lpips: (!self.lpips.is_empty()).then(|| stat(&self.lpips)),
        }
    }
}

/// Images `[n, 3, h, w]` in [-1, 1] for LPIPS.
fn signed_pixels<B: Backend>(images: &[&RgbImage], device: &B::Device) -> Tensor<B, 4> {
    let (w, h) = images[0].dimensions();
    let mut values = Vec::with_capacity(images.len() * 3 * (w * h) as usize);
    for image in images {
        for c in 0..3 {
            values.extend(image.pixels().map(|p| p.0[c] as f32 / 127.5 - 1.0));
        }
    }
    Tensor::from_data(
        TensorData::new(values, [images.len(), 3, h as usize, w as usize]),
        device,
    )
}

/// Scores every user's images (see [`UserImages`]) for `prompts`.
pub fn evaluate<B: Backend>(
    clip: ClipScorer<B>,
    lpips: Option<&Lpips<B>>,
    prompts: &[String],
    users: &[UserImages],
) -> Result<EvalReport, EvalError> {
    let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let device = clip.device.clone();
    // Every image and prompt goes through CLIP once; the metrics are products of embeddings.
    let texts = clip.text_embeddings(&refs)?;
    let mut premier = Values::default();
    let mut base_all = Values::default();
    let mut per_user = Vec::new();
    for user in users {
        let k = prompts.len();
        let bad = |what: &str, n: usize| {
            EvalError::Mismatch(format!(
                "user {:?}: {n} {what} images for {k} prompts (one per prompt)",
                user.id
            ))
        };
        if user.generated.len() != k {
            return Err(bad("generated", user.generated.len()));
        }
        if user.reference.len() != k {
            return Err(bad("held-out", user.reference.len()));
        }
        let liked = clip.image_embeddings(&user.reference)?;
        // CLIP-T2I with each image's prompt and the preference proxy of each image.
        let scored = |images: &[RgbImage]| -> Result<Values, EvalError> {
            let embeddings = clip.image_embeddings(images)?;
            Ok(Values {
                cos: cosines(&embeddings, &texts),
                preference: embeddings.iter().map(|e| mean_cosine(e, &liked)).collect(),
                ..Values::default()
            })
        };
        let mut mine = scored(&user.generated)?;
        if let Some(base) = &user.base {
            if base.len() != k {
                return Err(bad("base", base.len()));
            }
            let theirs = scored(base)?;
            mine.wins = wins(&mine.preference, &theirs.preference);
            base_all.extend(&theirs);
        }
        if let Some(lpips) = lpips {
            for (generated, reference) in user.generated.iter().zip(&user.reference) {
                let reference = if reference.dimensions() == generated.dimensions() {
                    reference.clone()
                } else {
                    let (w, h) = generated.dimensions();
                    image::imageops::resize(
                        reference,
                        w,
                        h,
                        image::imageops::FilterType::CatmullRom,
                    )
                };
                let d = lpips.distance(
                    signed_pixels::<B>(&[generated], &device),
                    signed_pixels::<B>(&[&reference], &device),
                )?;
                mine.lpips.push(d.into_scalar().elem::<f64>());
            }
        }
        premier.extend(&mine);
        per_user.push(Row {
            name: format!("Premier: {}", user.id),
            scores: mine.scores(),
        });
    }
    let mut rows = vec![Row {
        name: "Premier".into(),
        scores: premier.scores(),
    }];
    if !base_all.cos.is_empty() {
        rows.push(Row {
            name: "Base".into(),
            scores: base_all.scores(),
        });
    }
    rows.extend(per_user);
    Ok(EvalReport {
        prompts: prompts.to_vec(),
        rows,
    })
}

impl EvalReport {
    /// The report as a markdown table (means ± standard errors over images).
    pub fn markdown(&self) -> String {
        let cell = |s: &Option<Stat>| match s {
            Some(s) => format!("{:.4} ± {:.4}", s.mean, s.se),
            None => "—".into(),
        };
        let mut md = String::from(
            "# Evaluation\n\nMeans ± standard errors over images. Preference is a CLIP proxy \
             (mean CLIP cosine to the user's held-out images), **not** the paper's ViPer score; \
             the win rate is over the base image of the same prompt and seed under that proxy.\n\n\
             | Method | CLIP-T2I (cos) ↑ | CLIPScore ↑ | Preference (proxy) ↑ | Win rate ↑ | LPIPS ↓ |\n\
             |---|---|---|---|---|---|\n",
        );
        for row in &self.rows {
            let s = &row.scores;
            md.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} |\n",
                row.name,
                cell(&Some(s.clip_t2i)),
                cell(&Some(s.clip_score)),
                cell(&Some(s.preference)),
                cell(&s.win_rate),
                cell(&s.lpips)
            ));
        }
        md
    }
}
