//! What the base model can draw: given the style in words, how well each factor comes out, and
//! how well the prompts' contents are drawn with and without style words.

use premier_mmdit::FluxOps;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::base::{BaseError, SynthBase};
use crate::sample::{sample, SAMPLING_STEPS};
use crate::score::{factor_scores, prompt_fidelity};
use crate::world::{rng_for, Content, Style, Taste, FACTORS, WORDED};
use premier_text::{PromptTokenizer, TextConditioning};

/// Scores of the base model over every content × `seeds` random styles.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaseQuality {
    /// Images scored.
    pub images: usize,
    /// Per factor (palette, background, texture, pattern): preference for the style named in the
    /// prompt (the pattern has no words: chance is what the base can do there).
    pub told_factors: [f64; FACTORS],
    /// Mean of `told_factors` over the worded factors.
    pub told_worded: f64,
    /// Prompt fidelity with the style words in the prompt.
    pub told_fidelity: f64,
    /// `told_worded` when only the text tokens carry the style words (the pooled vector is the
    /// plain prompt's): what Premier, which modulates only the text tokens, can hope to reach.
    pub tokens_only_worded: f64,
    /// `told_worded` when only the pooled vector carries them (the tokens are the plain prompt's).
    pub pooled_only_worded: f64,
    /// Prompt fidelity of the plain prompts (no style words).
    pub fidelity: f64,
}

/// Samples every content with `seeds` random styles named in words, and the plain prompts with
/// the same noise; `seed` draws the styles and the noise.
pub fn base_quality<B: FluxOps>(
    base: &SynthBase<B>,
    tokenizer: &PromptTokenizer,
    seeds: usize,
    seed: u64,
) -> Result<BaseQuality, BaseError> {
    let mut told_prompts = Vec::new();
    let mut plain_prompts = Vec::new();
    let mut styles = Vec::new();
    let mut contents = Vec::new();
    let mut noise = Vec::new();
    for (ci, content) in Content::all().into_iter().enumerate() {
        for k in 0..seeds {
            let mut rng = rng_for(seed, 6, (ci * 1000 + k) as u64);
            let style = Style::random(&mut rng);
            told_prompts.push(content.prompt_with_style(&style));
            plain_prompts.push(content.prompt());
            styles.push(style);
            contents.push(content);
            noise.push(rng.random::<u64>());
        }
    }
    let encode = |prompts: &[String]| {
        let refs: Vec<&str> = prompts.iter().map(|s| s.as_str()).collect();
        base.text.encode(tokenizer, &refs)
    };
    // Each prompt set is encoded once; the four draws combine their tokens and pooled vectors.
    let (told_text, plain_text) = (encode(&told_prompts)?, encode(&plain_prompts)?);
    let draw = |tokens: &TextConditioning<B>,
                pooled: &TextConditioning<B>|
     -> Result<Vec<image::RgbImage>, BaseError> {
        let mut out = Vec::new();
        for (i, seeds) in noise.chunks(96).enumerate() {
            let rows = i * 96..i * 96 + seeds.len();
            let text = TextConditioning {
                tokens: tokens.tokens.clone().slice(rows.clone()),
                pooled: pooled.pooled.clone().slice(rows),
            };
            out.extend(sample(&base.flux, &text, None, seeds, SAMPLING_STEPS)?);
        }
        Ok(out)
    };
    let told = draw(&told_text, &told_text)?;
    let plain = draw(&plain_text, &plain_text)?;
    let tokens_only = draw(&told_text, &plain_text)?;
    let pooled_only = draw(&plain_text, &told_text)?;
    let worded_mean = |images: &[image::RgbImage]| {
        let worded = (0..FACTORS).filter(|&f| WORDED[f]).count() as f64;
        images
            .iter()
            .zip(&styles)
            .map(|(image, style)| {
                let scores = factor_scores(image, &Taste::of(style));
                (0..FACTORS)
                    .filter(|&f| WORDED[f])
                    .map(|f| scores[f] as f64)
                    .sum::<f64>()
                    / worded
            })
            .sum::<f64>()
            / images.len().max(1) as f64
    };
    let n = told.len();
    let mut told_factors = [0.0f64; FACTORS];
    let (mut told_fidelity, mut fidelity) = (0.0, 0.0);
    for i in 0..n {
        let scores = factor_scores(&told[i], &Taste::of(&styles[i]));
        for f in 0..FACTORS {
            told_factors[f] += scores[f] as f64 / n as f64;
        }
        told_fidelity += prompt_fidelity(&told[i], &contents[i]) as f64 / n as f64;
        fidelity += prompt_fidelity(&plain[i], &contents[i]) as f64 / n as f64;
    }
    Ok(BaseQuality {
        images: n,
        told_factors,
        told_worded: worded_mean(&told),
        told_fidelity,
        tokens_only_worded: worded_mean(&tokens_only),
        pooled_only_worded: worded_mean(&pooled_only),
        fidelity,
    })
}
