//! Which (user, image) pairs make up each batch: different users in every batch (the dispersion
//! loss contrasts the users of a batch), drawn from (seed, step) alone so a resumed run draws
//! exactly what the uninterrupted run would have.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// Draws batches of distinct users, one random image of each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserBatchSampler {
    /// Images of each user.
    counts: Vec<usize>,
    batch_size: usize,
    seed: u64,
}

impl UserBatchSampler {
    /// `counts[u]`: how many images user `u` has. Fails when a user has no image or the batch is
    /// empty. With more batch slots than users, users repeat only after every user is in.
    pub fn new(counts: Vec<usize>, batch_size: usize, seed: u64) -> Result<Self, String> {
        if batch_size == 0 {
            return Err("batch size must be at least 1".into());
        }
        if counts.is_empty() {
            return Err("no users to sample from".into());
        }
        if let Some(u) = counts.iter().position(|&c| c == 0) {
            return Err(format!("user {u} has no images"));
        }
        Ok(Self {
            counts,
            batch_size,
            seed,
        })
    }

    /// The (user, image) pairs of batch `step`.
    pub fn batch(&self, step: u64) -> Vec<(usize, usize)> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(
            self.seed ^ (step + 1).wrapping_mul(0xD1B5_4A32_D192_ED03),
        );
        let mut users = Vec::with_capacity(self.batch_size);
        while users.len() < self.batch_size {
            let mut all: Vec<usize> = (0..self.counts.len()).collect();
            all.shuffle(&mut rng);
            users.extend(all.into_iter().take(self.batch_size - users.len()));
        }
        users
            .into_iter()
            .map(|u| (u, rng.random_range(0..self.counts[u])))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_have_distinct_users_and_repeat_per_step() {
        let sampler = UserBatchSampler::new(vec![3, 5, 2, 7, 1], 4, 9).unwrap();
        for step in 0..50 {
            let batch = sampler.batch(step);
            assert_eq!(batch.len(), 4);
            let mut users: Vec<usize> = batch.iter().map(|p| p.0).collect();
            users.sort();
            users.dedup();
            assert_eq!(users.len(), 4, "step {step}: {batch:?}");
            assert!(batch.iter().all(|&(u, i)| i < [3, 5, 2, 7, 1][u]));
            assert_eq!(batch, sampler.batch(step));
        }
        assert_ne!(sampler.batch(0), sampler.batch(1));
    }

    #[test]
    fn more_slots_than_users_covers_everyone() {
        let sampler = UserBatchSampler::new(vec![2; 3], 5, 0).unwrap();
        let batch = sampler.batch(3);
        for u in 0..3 {
            assert!(batch.iter().any(|p| p.0 == u));
        }
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(UserBatchSampler::new(vec![2, 0], 2, 0).is_err());
        assert!(UserBatchSampler::new(vec![], 2, 0).is_err());
        assert!(UserBatchSampler::new(vec![1], 0, 0).is_err());
    }
}
