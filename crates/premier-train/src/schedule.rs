//! A multiplier of the optimizer's learning rate by step.
//!
//! Premier's stage 1 runs Prodigy at a constant lr of 1 (released). Prodigy's authors pair lr 1
//! with a cosine annealing, and on the synthetic world a constant step lets Prodigy's d jump
//! late in a run (docs/synth.md, fourth amendment), so a decay at the end is selectable.

use serde::{Deserialize, Serialize};

/// The multiplier of the optimizer's lr at each step; `Constant` as released.
///
/// `Constant` is an empty struct variant, not a unit one: serde lets a unit variant of an
/// internally tagged enum ignore unknown keys, which `deny_unknown_fields` must catch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum LrSchedule {
    /// 1 at every step.
    Constant {},
    /// 1 until `total_steps − decay_steps`, then a cosine from 1 to 0 over the last
    /// `decay_steps` steps (`decay_steps = total_steps`: a cosine over the whole run); 0 from
    /// `total_steps` on.
    CosineTail {
        /// The step from which the multiplier is 0.
        total_steps: u64,
        /// Steps the cosine lasts.
        decay_steps: u64,
    },
}

impl Default for LrSchedule {
    fn default() -> Self {
        Self::Constant {}
    }
}

impl LrSchedule {
    /// The multiplier for the step taken after `steps_done` steps.
    pub fn factor(&self, steps_done: u64) -> f64 {
        match *self {
            Self::Constant {} => 1.0,
            Self::CosineTail {
                total_steps,
                decay_steps,
            } => {
                let start = total_steps.saturating_sub(decay_steps);
                if steps_done >= total_steps {
                    0.0
                } else if steps_done < start || decay_steps == 0 {
                    1.0
                } else {
                    let progress = (steps_done - start) as f64 / decay_steps as f64;
                    0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
                }
            }
        }
    }
}

/// How a run of a given length ends, before its length is known: what flags and experiment
/// configs hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum StepDecay {
    /// A constant step to the end, as released.
    #[default]
    None,
    /// A cosine from 1 to 0 over the whole run.
    Cosine,
    /// Constant, then a cosine to 0 over the last this many steps (all of them if the run is
    /// shorter).
    CosineTail(u64),
}

impl StepDecay {
    /// The schedule of a run of `total_steps` steps.
    pub fn schedule(self, total_steps: u64) -> LrSchedule {
        let decay_steps = match self {
            Self::None => return LrSchedule::Constant {},
            Self::Cosine => total_steps,
            Self::CosineTail(n) => n.min(total_steps),
        };
        LrSchedule::CosineTail {
            total_steps,
            decay_steps,
        }
    }
}

/// A step-decay spelling that is none of `constant`, `cosine`, `cosine-tail:N` (N ≥ 1).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown step decay `{0}`: expected constant, cosine or cosine-tail:N with N >= 1 steps")]
pub struct UnknownStepDecay(pub String);

impl std::str::FromStr for StepDecay {
    type Err = UnknownStepDecay;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let unknown = || UnknownStepDecay(spec.to_string());
        match spec {
            "constant" => Ok(Self::None),
            "cosine" => Ok(Self::Cosine),
            _ => {
                let steps = spec.strip_prefix("cosine-tail:").ok_or_else(unknown)?;
                match steps.parse::<u64>() {
                    Ok(n) if n >= 1 => Ok(Self::CosineTail(n)),
                    _ => Err(unknown()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_is_one_everywhere() {
        for k in [0, 1, 1000, u64::MAX] {
            assert_eq!(LrSchedule::Constant {}.factor(k), 1.0);
        }
    }

    #[test]
    fn cosine_tail_holds_then_decays_to_zero() {
        let s = StepDecay::CosineTail(4).schedule(10);
        let f: Vec<f64> = (0..12).map(|k| s.factor(k)).collect();
        assert_eq!(&f[..7], &[1.0; 7]);
        // cos(π·j/4) for j = 1, 2, 3 after the start at step 6.
        assert!((f[7] - 0.5 * (1.0 + (std::f64::consts::PI / 4.0).cos())).abs() < 1e-12);
        assert!((f[8] - 0.5).abs() < 1e-12, "{f:?}");
        assert!(f[9] > 0.0 && f[9] < 0.2, "{f:?}");
        assert_eq!(&f[10..], &[0.0, 0.0]);
        assert!(f.windows(2).all(|w| w[1] <= w[0]), "not monotone: {f:?}");
    }

    #[test]
    fn full_cosine_starts_at_one_and_tails_are_clamped_to_the_run() {
        let full = StepDecay::Cosine.schedule(8);
        assert_eq!(full.factor(0), 1.0);
        assert!((full.factor(4) - 0.5).abs() < 1e-12);
        assert_eq!(StepDecay::CosineTail(100).schedule(8), full);
        assert_eq!(StepDecay::None.schedule(8), LrSchedule::Constant {});
    }

    #[test]
    fn spellings_parse_and_bad_ones_are_named() {
        assert_eq!("constant".parse(), Ok(StepDecay::None));
        assert_eq!("cosine".parse(), Ok(StepDecay::Cosine));
        assert_eq!("cosine-tail:1000".parse(), Ok(StepDecay::CosineTail(1000)));
        for bad in [
            "",
            "cosine-tail:",
            "cosine-tail:0",
            "cosine-tail:-3",
            "linear",
            "Cosine",
        ] {
            let err = bad.parse::<StepDecay>().unwrap_err();
            assert_eq!(err, UnknownStepDecay(bad.to_string()));
            assert!(err.to_string().contains("cosine-tail:N"), "{err}");
        }
    }

    #[test]
    fn schedules_round_trip_through_toml() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Wrap {
            lr_schedule: LrSchedule,
        }
        let w = Wrap {
            lr_schedule: StepDecay::CosineTail(5).schedule(20),
        };
        let text = toml::to_string(&w).unwrap();
        assert_eq!(toml::from_str::<Wrap>(&text).unwrap(), w);
        let typo = "[lr_schedule]\nkind = \"cosine-tail\"\ntotal_steps = 3\ndecay = 1\n";
        assert!(toml::from_str::<Wrap>(typo).is_err());
    }
}
