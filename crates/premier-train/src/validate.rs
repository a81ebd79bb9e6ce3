//! Every number a run is configured by, checked before anything is allocated: finite and in its
//! range, or an error naming the key as written in the TOML file (`stage1.optimizer.d0`).
//! A NaN learning rate or a zero d0 would otherwise train for hours and write NaN weights.

use premier_losses::TimestepSampler;

use crate::adamw::AdamWConfig;
use crate::prodigy::ProdigyConfig;
use crate::run::{ColdStartConfig, TrainConfig};
use crate::schedule::LrSchedule;
use crate::stage1::Stage1Config;
use crate::stage2::{ColdStartOptimizer, Stage2Config};

/// A config value outside its range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("`{key}` = {value}: must be {expected}")]
pub struct InvalidValue {
    /// The key's path in the config file, e.g. `stage1.optimizer.lr`.
    pub key: String,
    /// The value given, as text.
    pub value: String,
    /// The range it must be in, in words.
    pub expected: &'static str,
}

/// Collects the checks of one config; the first failure is the error.
struct Checker<'a> {
    prefix: &'a str,
}

impl Checker<'_> {
    fn fail(&self, key: &str, value: impl ToString, expected: &'static str) -> InvalidValue {
        InvalidValue {
            key: format!("{}{key}", self.prefix),
            value: value.to_string(),
            expected,
        }
    }

    fn check(
        &self,
        ok: bool,
        key: &str,
        value: impl ToString,
        expected: &'static str,
    ) -> Result<(), InvalidValue> {
        if ok {
            Ok(())
        } else {
            Err(self.fail(key, value, expected))
        }
    }

    fn positive(&self, key: &str, v: f64) -> Result<(), InvalidValue> {
        self.check(v.is_finite() && v > 0.0, key, v, "a finite number > 0")
    }

    fn non_negative(&self, key: &str, v: f64) -> Result<(), InvalidValue> {
        self.check(v.is_finite() && v >= 0.0, key, v, "a finite number ≥ 0")
    }

    fn finite(&self, key: &str, v: f64) -> Result<(), InvalidValue> {
        self.check(v.is_finite(), key, v, "a finite number")
    }

    fn beta(&self, key: &str, v: f64) -> Result<(), InvalidValue> {
        self.check((0.0..1.0).contains(&v), key, v, "in [0, 1)")
    }

    fn at_least_one(&self, key: &str, v: u64) -> Result<(), InvalidValue> {
        self.check(v >= 1, key, v, "at least 1")
    }

    fn clip_norm(&self, v: Option<f64>) -> Result<(), InvalidValue> {
        match v {
            Some(v) => self.positive("clip_norm", v),
            None => Ok(()),
        }
    }

    fn timesteps(&self, t: &TimestepSampler) -> Result<(), InvalidValue> {
        match *t {
            TimestepSampler::LogitNormal { mean, std } => {
                self.finite("timesteps.LogitNormal.mean", mean)?;
                self.positive("timesteps.LogitNormal.std", std)
            }
            TimestepSampler::Uniform => Ok(()),
            TimestepSampler::FluxShifted { mu } => self.finite("timesteps.FluxShifted.mu", mu),
        }
    }

    fn lr_schedule(&self, s: &LrSchedule) -> Result<(), InvalidValue> {
        match *s {
            LrSchedule::Constant {} => Ok(()),
            LrSchedule::CosineTail {
                total_steps,
                decay_steps,
            } => self.check(
                decay_steps <= total_steps,
                "lr_schedule.decay_steps",
                decay_steps,
                "at most lr_schedule.total_steps",
            ),
        }
    }

    /// The fields Adam-style optimizers share: lr, betas, ε, weight decay.
    fn adam(&self, lr: f64, betas: (f64, f64), eps: f64, decay: f64) -> Result<(), InvalidValue> {
        self.positive("lr", lr)?;
        self.beta("betas[0]", betas.0)?;
        self.beta("betas[1]", betas.1)?;
        self.positive("eps", eps)?;
        self.non_negative("weight_decay", decay)
    }
}

impl ProdigyConfig {
    /// Checks every field; `prefix` is the table's path with a trailing dot.
    pub fn validate(&self, prefix: &str) -> Result<(), InvalidValue> {
        let c = Checker { prefix };
        c.adam(self.lr, self.betas, self.eps, self.weight_decay)?;
        if let Some(beta3) = self.beta3 {
            c.beta("beta3", beta3)?;
        }
        c.positive("d0", self.d0)?;
        c.positive("d_coef", self.d_coef)?;
        // ∞ (the default) means no limit; below 1 d could only shrink.
        c.check(
            self.growth_rate >= 1.0,
            "growth_rate",
            self.growth_rate,
            "≥ 1 (or omitted: no limit)",
        )
    }
}

impl AdamWConfig {
    /// Checks every field; `prefix` is the table's path with a trailing dot.
    pub fn validate(&self, prefix: &str) -> Result<(), InvalidValue> {
        Checker { prefix }.adam(self.lr, self.betas, self.eps, self.weight_decay)
    }
}

impl Stage1Config {
    /// Checks every field; `prefix` is the table's path with a trailing dot (`stage1.`).
    pub fn validate(&self, prefix: &str) -> Result<(), InvalidValue> {
        let c = Checker { prefix };
        c.positive("dispersion_margin", self.dispersion_margin)?;
        c.non_negative("lambda_shared", self.lambda_shared)?;
        c.non_negative("lambda_distinct", self.lambda_distinct)?;
        c.timesteps(&self.timesteps)?;
        c.finite("guidance", self.guidance as f64)?;
        c.clip_norm(self.clip_norm)?;
        c.lr_schedule(&self.lr_schedule)?;
        self.optimizer.validate(&format!("{prefix}optimizer."))
    }
}

impl Stage2Config {
    /// Checks every field; `prefix` is the table's path with a trailing dot (`stage2.`).
    pub fn validate(&self, prefix: &str) -> Result<(), InvalidValue> {
        let c = Checker { prefix };
        c.timesteps(&self.timesteps)?;
        c.finite("guidance", self.guidance as f64)?;
        c.clip_norm(self.clip_norm)?;
        match &self.optimizer {
            ColdStartOptimizer::AdamW(o) => o.validate(&format!("{prefix}optimizer.AdamW.")),
            ColdStartOptimizer::Prodigy(o) => o.validate(&format!("{prefix}optimizer.Prodigy.")),
        }
    }
}

impl TrainConfig {
    /// Checks every size and number of a stage-1 run (`premier train`'s TOML keys).
    pub fn validate(&self) -> Result<(), InvalidValue> {
        let c = Checker { prefix: "" };
        c.at_least_one("steps", self.steps)?;
        c.at_least_one("batch_size", self.batch_size as u64)?;
        c.at_least_one("grad_accum", self.grad_accum as u64)?;
        c.check(
            self.steps.checked_mul(self.grad_accum as u64).is_some(),
            "grad_accum",
            self.grad_accum,
            "small enough that steps × grad_accum micro-batches can be counted (64 bits)",
        )?;
        c.at_least_one("user_tokens", self.user_tokens as u64)?;
        c.at_least_one("user_dim", self.user_dim as u64)?;
        c.at_least_one("adapter_heads", self.adapter_heads as u64)?;
        c.at_least_one("adapter_layers", self.adapter_layers as u64)?;
        c.at_least_one("workers", self.workers as u64)?;
        c.finite("validation_guidance", self.validation_guidance as f64)?;
        c.check(
            self.shared || self.distinct,
            "shared",
            self.shared,
            "true when `distinct` is false (the adapters would have nothing to train)",
        )?;
        self.stage1.validate("stage1.")
    }
}

impl TrainConfig {
    /// A warning when a batch holds more rows than the dataset has users: the sampler then
    /// repeats users within a batch, and the dispersion loss contrasts a user with itself.
    pub fn batch_warning(&self, users: usize) -> Option<String> {
        (self.batch_size > users).then(|| {
            format!(
                "batch_size = {} (`--batch-size`, or `batch_size` in the config) is more than the \
                 dataset's {users} users: users repeat within a batch and the dispersion loss \
                 contrasts a user with itself; use --batch-size {users} or less (and --grad-accum \
                 to keep the samples per step)",
                self.batch_size
            )
        })
    }
}

impl ColdStartConfig {
    /// A warning when a batch holds more rows than the new user has images: the cold start
    /// then uses `images` per step.
    pub fn batch_warning(&self, user: &str, images: usize) -> Option<String> {
        (self.batch_size > images).then(|| {
            format!(
                "batch_size = {} (`--batch-size`, or `batch_size` in the config) is more than \
                 user {user:?}'s {images} images: each step uses {images}",
                self.batch_size
            )
        })
    }

    /// Checks every size and number of a cold start (`premier cold-start`'s TOML keys).
    pub fn validate(&self) -> Result<(), InvalidValue> {
        let c = Checker { prefix: "" };
        c.at_least_one("steps", self.steps)?;
        c.at_least_one("batch_size", self.batch_size as u64)?;
        self.stage2.validate("stage2.")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_and_presets_are_valid() {
        TrainConfig::default().validate().unwrap();
        TrainConfig::synth().validate().unwrap();
        ColdStartConfig::default().validate().unwrap();
        let mut direct = ColdStartConfig::default();
        direct.stage2.optimizer = ColdStartOptimizer::Prodigy(ProdigyConfig::default());
        direct.validate().unwrap();
    }

    #[test]
    fn a_batch_larger_than_the_users_or_images_is_warned_about() {
        let mut c = TrainConfig::default();
        c.batch_size = 8;
        let w = c.batch_warning(4).expect("a warning");
        for part in [
            "batch_size = 8",
            "--batch-size",
            "4 users",
            "--batch-size 4",
        ] {
            assert!(w.contains(part), "{part:?} not in {w}");
        }
        assert_eq!(c.batch_warning(8), None);
        let mut cold = ColdStartConfig::default();
        cold.batch_size = 6;
        let w = cold.batch_warning("ann", 2).expect("a warning");
        for part in ["batch_size = 6", "--batch-size", "\"ann\"", "2 images"] {
            assert!(w.contains(part), "{part:?} not in {w}");
        }
        assert_eq!(cold.batch_warning("ann", 6), None);
    }

    #[test]
    fn each_bad_number_is_named_by_its_key() {
        let cases: Vec<(&str, Box<dyn Fn(&mut TrainConfig)>)> = vec![
            ("steps", Box::new(|c| c.steps = 0)),
            ("user_tokens", Box::new(|c| c.user_tokens = 0)),
            (
                "validation_guidance",
                Box::new(|c| c.validation_guidance = f32::INFINITY),
            ),
            ("grad_accum", Box::new(|c| c.grad_accum = 0)),
            (
                "grad_accum",
                Box::new(|c| (c.steps, c.grad_accum) = (u64::MAX / 2, 3)),
            ),
            (
                "stage1.optimizer.d0",
                Box::new(|c| c.stage1.optimizer.d0 = 0.0),
            ),
            (
                "stage1.optimizer.lr",
                Box::new(|c| c.stage1.optimizer.lr = -1.0),
            ),
            (
                "stage1.optimizer.lr",
                Box::new(|c| c.stage1.optimizer.lr = f64::NAN),
            ),
            (
                "stage1.optimizer.betas[1]",
                Box::new(|c| c.stage1.optimizer.betas.1 = 1.0),
            ),
            (
                "stage1.optimizer.growth_rate",
                Box::new(|c| c.stage1.optimizer.growth_rate = f64::NAN),
            ),
            (
                "stage1.lambda_shared",
                Box::new(|c| c.stage1.lambda_shared = f64::NAN),
            ),
            (
                "stage1.clip_norm",
                Box::new(|c| c.stage1.clip_norm = Some(0.0)),
            ),
            (
                "stage1.timesteps.LogitNormal.std",
                Box::new(|c| {
                    c.stage1.timesteps = TimestepSampler::LogitNormal {
                        mean: 0.0,
                        std: f64::INFINITY,
                    }
                }),
            ),
        ];
        for (key, spoil) in cases {
            let mut config = TrainConfig::default();
            spoil(&mut config);
            let err = config.validate().unwrap_err();
            assert_eq!(err.key, key, "{err}");
            assert!(err.to_string().starts_with(&format!("`{key}` = ")), "{err}");
        }
        let mut cold = ColdStartConfig::default();
        cold.stage2.optimizer = ColdStartOptimizer::AdamW(AdamWConfig {
            lr: 0.0,
            ..AdamWConfig::default()
        });
        assert_eq!(
            cold.validate().unwrap_err().key,
            "stage2.optimizer.AdamW.lr"
        );
    }
}
