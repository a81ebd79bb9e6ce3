//! The cold-start loop of one new user, on any source of encoded samples: the dataset cache of
//! `premier cold-start` ([`CachedUsers`]) or a user's images encoded in memory
//! ([`EncodedSamples`], what an app's `Premier::new_user` fits).

use std::path::Path;
use std::time::Instant;

use burn::prelude::*;
use premier_mmdit::FluxAutodiffBackend;
use premier_users::{LinearCombination, UserEmbedding, UserShape};

use crate::batches::{posterior_batch, CachedUsers, EncodedBatch};
use crate::cache::{CacheError, CachedLatent, CachedText};
use crate::metrics::MetricRecord;
use crate::run::{id_seed, posterior_seed, ColdStartConfig, ColdStartKind, RunError};
use crate::stage2::{NewUser, Stage2Batch, Stage2Trainer};

/// Encoded training samples grouped by user.
pub trait UserSamples {
    /// How many samples `user` has (`None`: no such user).
    fn sample_count(&self, user: usize) -> Option<usize>;

    /// The batch of `(user, sample)` picks, each latent drawn from its posterior with the
    /// noise of `seed`.
    fn batch<B: Backend>(
        &mut self,
        picks: &[(usize, usize)],
        seed: u64,
        device: &B::Device,
    ) -> Result<EncodedBatch<B>, CacheError>;
}

impl UserSamples for CachedUsers {
    fn sample_count(&self, user: usize) -> Option<usize> {
        self.samples.get(user).map(Vec::len)
    }

    fn batch<B: Backend>(
        &mut self,
        picks: &[(usize, usize)],
        seed: u64,
        device: &B::Device,
    ) -> Result<EncodedBatch<B>, CacheError> {
        CachedUsers::batch(self, picks, seed, device)
    }
}

/// One user's images and captions, encoded in memory (user index 0).
#[derive(Debug, Clone)]
pub struct EncodedSamples {
    /// One posterior per image, `[channels, h, w]`, in the backbone's latent space.
    pub latents: Vec<CachedLatent>,
    /// One caption per image.
    pub texts: Vec<CachedText>,
}

impl UserSamples for EncodedSamples {
    fn sample_count(&self, user: usize) -> Option<usize> {
        (user == 0).then_some(self.latents.len().min(self.texts.len()))
    }

    fn batch<B: Backend>(
        &mut self,
        picks: &[(usize, usize)],
        seed: u64,
        device: &B::Device,
    ) -> Result<EncodedBatch<B>, CacheError> {
        let latents: Vec<&CachedLatent> = picks.iter().map(|&(_, i)| &self.latents[i]).collect();
        let texts: Vec<&CachedText> = picks.iter().map(|&(_, i)| &self.texts[i]).collect();
        posterior_batch(
            &latents,
            &texts,
            seed,
            Path::new("the new user's images"),
            device,
        )
    }
}

/// A new user before training, drawn from the seed of `config` and the user's `id` (so users
/// fitted one after another or alone start the same).
pub fn fresh_new_user<B: Backend>(
    kind: ColdStartKind,
    table: UserShape,
    seed: u64,
    id: &str,
    device: &B::Device,
) -> NewUser<B> {
    B::seed(device, seed ^ id_seed(id));
    match kind {
        ColdStartKind::Linear => NewUser::Linear(LinearCombination::init(table.users, device)),
        ColdStartKind::Direct => {
            NewUser::Direct(UserEmbedding::init_direct(table.tokens, table.dim, device))
        }
    }
}

/// What [`fit_new_user`] calls after each step: the trainer and the step's record; an error
/// stops the run.
pub type AfterStep<'a, B> =
    dyn FnMut(&Stage2Trainer<B>, &MetricRecord) -> Result<(), RunError> + 'a;

/// Trains `trainer` on `user`'s samples from its step up to `config.steps`, `batch_size` images
/// a step cycling through them; `after_step` sees each step's trainer and record (to log,
/// checkpoint or report progress) and may stop the run with an error.
pub fn fit_new_user<B: FluxAutodiffBackend, D: UserSamples>(
    trainer: &mut Stage2Trainer<B>,
    data: &mut D,
    user: usize,
    config: &ColdStartConfig,
    after_step: &mut AfterStep<'_, B>,
    device: &B::Device,
) -> Result<(), RunError> {
    let started = Instant::now();
    let count = match data.sample_count(user) {
        Some(0) => return Err(RunError::Config(format!("new user {user} has no images"))),
        Some(count) => count,
        None => return Err(RunError::Config(format!("no new user {user}"))),
    };
    let batch = config.batch_size.min(count);
    let seed = config.stage2.seed;
    while trainer.step < config.steps {
        let tick = Instant::now();
        // Cycle through the user's images, `batch` per step.
        let first = (trainer.step as usize * batch) % count;
        let picks: Vec<(usize, usize)> = (0..batch).map(|i| (user, (first + i) % count)).collect();
        let encoded = data.batch::<B>(&picks, posterior_seed(seed, trainer.step), device)?;
        let report = trainer.step(&Stage2Batch {
            x0: encoded.x0,
            latent_hw: encoded.latent_hw,
            text: encoded.text,
            pooled: encoded.pooled,
            owners: Vec::new(),
        })?;
        let record = MetricRecord {
            report,
            it_per_s: 1.0 / tick.elapsed().as_secs_f64().max(1e-9),
            elapsed_s: started.elapsed().as_secs_f64(),
        };
        after_step(trainer, &record)?;
    }
    Ok(())
}
