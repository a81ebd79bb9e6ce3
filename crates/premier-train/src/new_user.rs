//! The cold-start loop: new users fitted against frozen adapters and table on any
//! [`UserSamples`] — the dataset cache of `premier cold-start`, a user's images encoded in
//! memory (what an app's `Premier::new_user` fits), or the quickstart's synthetic world, which
//! fits all its new users at once.

use std::time::Instant;

use burn::prelude::*;
use premier_mmdit::FluxAutodiffBackend;
use premier_users::{LinearCombination, UserEmbedding, UserShape};

use crate::metrics::MetricRecord;
use crate::run::{id_seed, posterior_seed, ColdStartConfig, ColdStartKind, RunError};
use crate::samples::UserSamples;
use crate::seeded::seeded;
use crate::stage2::{NewUser, Stage2Batch, Stage2Trainer};

/// A new user before training, drawn from the seed of `config` and the user's `id` (so users
/// fitted one after another or alone start the same).
pub fn fresh_new_user<B: Backend>(
    kind: ColdStartKind,
    table: UserShape,
    seed: u64,
    id: &str,
    device: &B::Device,
) -> NewUser<B> {
    seeded::<B, _>(device, seed ^ id_seed(id), || match kind {
        ColdStartKind::Linear => NewUser::Linear(LinearCombination::init(table.users, device)),
        ColdStartKind::Direct => {
            NewUser::Direct(UserEmbedding::init_direct(table.tokens, table.dim, device))
        }
    })
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
    fit_new_users(trainer, data, &[user], config, after_step, device)
}

/// [`fit_new_user`] for several new users at once: the trainer's new user `k` is `data`'s user
/// `users[k]`; every step takes `batch_size` images of each (at most as many as it has),
/// cycling through them, in one batch.
pub fn fit_new_users<B: FluxAutodiffBackend, D: UserSamples>(
    trainer: &mut Stage2Trainer<B>,
    data: &mut D,
    users: &[usize],
    config: &ColdStartConfig,
    after_step: &mut AfterStep<'_, B>,
    device: &B::Device,
) -> Result<(), RunError> {
    let started = Instant::now();
    if users.is_empty() {
        return Err(RunError::Config("no new users to fit".into()));
    }
    let mut counts = Vec::with_capacity(users.len());
    for &user in users {
        counts.push(match data.sample_count(user) {
            Some(0) => return Err(RunError::Config(format!("new user {user} has no images"))),
            Some(count) => count,
            None => return Err(RunError::Config(format!("no new user {user}"))),
        });
    }
    let seed = config.stage2.seed;
    while trainer.step < config.steps {
        let tick = Instant::now();
        let step = trainer.step as usize;
        let mut picks = Vec::new();
        let mut owners = Vec::new();
        for (k, (&user, &count)) in users.iter().zip(&counts).enumerate() {
            // Cycle through the user's images, `batch` per step.
            let batch = config.batch_size.min(count);
            let first = (step * batch) % count;
            picks.extend((0..batch).map(|i| (user, (first + i) % count)));
            owners.extend(std::iter::repeat_n(k, batch));
        }
        let encoded = data.batch::<B>(&picks, posterior_seed(seed, trainer.step), device)?;
        let report = trainer.step(&Stage2Batch {
            x0: encoded.x0,
            latent_hw: encoded.latent_hw,
            text: encoded.text,
            pooled: encoded.pooled,
            owners,
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
