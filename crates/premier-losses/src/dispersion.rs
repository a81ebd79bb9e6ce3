//! Dispersion losses over a batch of flattened Δ, one row per user (SPEC §4.2–4.3, §5).
//!
//! Pairwise distances come from the Gram matrix (`‖a‖² + ‖b‖² − 2a·b`), so memory stays
//! `[batch, batch]` even for Δ_distinct at the released size (512 × 19 × 3072 features per user).
//! All reductions are f32 (or wider, if the backend's float is).

use burn::prelude::*;

/// Which dispersion loss to compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum DispersionVariant {
    /// The paper's loss and the official `stable_disp_loss`:
    /// `mean_i [ logsumexp_{j≠i}(−‖z_i − z_j‖/τ) − log(B−1) ]`, plain L2. **Runs away**: it is
    /// unbounded below (→ −min distance) and its gradient never shrinks, so Δ grows until the
    /// images break (docs/synth.md); kept for parity with the paper.
    Stable,
    /// The released run's per-GPU `disp_loss`:
    /// `log( Σ_{i≠j} exp(−‖z_i − z_j‖²/τ) / (B(B−1)) + 1e-10 )`, squared L2, no 1/d. It saturates
    /// at log(1e-10) once users are far apart; kept for parity with the released weights.
    Released,
    /// Wang & He's dispersive loss (InfoNCE-ℓ2 without positives):
    /// `log( mean_{i,j} exp(−‖z_i − z_j‖²/(d·τ)) )`, over all B² pairs including i = j.
    Dispersive,
    /// A hinge on the squared per-feature distance: `mean_{i≠j} relu(1 − ‖z_i − z_j‖²/(d·τ))`,
    /// i.e. pairs closer than √τ in RMS per feature are pushed apart, farther pairs cost nothing.
    /// Bounded in [0, 1] and without gradient once users are apart, so it cannot run away. The
    /// default: stage 1 sets √τ to a margin times the RMS of FLUX's modulation vector y.
    #[default]
    Hinge,
}

impl DispersionVariant {
    /// Every variant, by the name configs and flags use.
    pub const ALL: [(&'static str, DispersionVariant); 4] = [
        ("Hinge", DispersionVariant::Hinge),
        ("Stable", DispersionVariant::Stable),
        ("Released", DispersionVariant::Released),
        ("Dispersive", DispersionVariant::Dispersive),
    ];

    /// A stage-1 dispersion choice by name: a variant's name, or `None` for no dispersion loss.
    pub fn parse_choice(name: &str) -> Result<Option<Self>, UnknownDispersion> {
        if name == "None" {
            return Ok(None);
        }
        name.parse().map(Some)
    }
}

/// A dispersion name that is none of [`DispersionVariant::ALL`] (nor `None` where allowed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownDispersion(pub String);

impl std::fmt::Display for UnknownDispersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "unknown dispersion loss `{}`: expected Hinge, Stable, Released, Dispersive or None",
            self.0
        )
    }
}

impl std::error::Error for UnknownDispersion {}

impl std::str::FromStr for DispersionVariant {
    type Err = UnknownDispersion;

    /// The serde name of the variant (`Hinge`, `Stable`, `Released`, `Dispersive`).
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
            .ok_or_else(|| UnknownDispersion(name.to_string()))
    }
}

/// The dispersion loss with τ = 1. z: `[batch, features]` → `[1]`; 0 for a batch of one.
pub fn dispersion_loss<B: Backend>(z: Tensor<B, 2>, variant: DispersionVariant) -> Tensor<B, 1> {
    dispersion_loss_with_tau(z, variant, 1.0)
}

/// The dispersion loss with temperature `tau` (distances are divided by τ).
///
/// z: `[batch, features]` → `[1]`; 0 for a batch of one.
pub fn dispersion_loss_with_tau<B: Backend>(
    z: Tensor<B, 2>,
    variant: DispersionVariant,
    tau: f64,
) -> Tensor<B, 1> {
    let [batch, features] = z.dims();
    let device = z.device();
    if batch < 2 {
        return Tensor::zeros([1], &device);
    }
    let squared = squared_distances(z);
    let off_diagonal = Tensor::<B, 2, Int>::eye(batch, &device).bool().bool_not();
    match variant {
        DispersionVariant::Stable => {
            // sqrt has an infinite slope at 0: the (masked) diagonal is moved to 1, and identical
            // rows get distance 1e-6 with zero gradient (torch.cdist's subgradient), not NaN.
            let eye = Tensor::<B, 2, Int>::eye(batch, &device).float();
            let distance = (squared + eye).clamp_min(1e-12).sqrt();
            let logits = masked(distance.neg() / tau, off_diagonal);
            let per_row = logsumexp_rows(logits) - ((batch - 1) as f64).ln();
            per_row.mean()
        }
        DispersionVariant::Released => {
            let logits = masked(squared.neg() / tau, off_diagonal);
            let pairs = (batch * (batch - 1)) as f64;
            // log(mean exp + 1e-10) = log(exp(lse - log pairs) + 1e-10), computed stably.
            let lse = logsumexp_all(logits) - pairs.ln();
            log_add_exp_const(lse, 1e-10)
        }
        DispersionVariant::Dispersive => {
            let logits = squared.neg() / (features as f64 * tau);
            logsumexp_all(logits) - ((batch * batch) as f64).ln()
        }
        DispersionVariant::Hinge => {
            let shortfall = (squared.neg() / (features as f64 * tau) + 1.0).clamp_min(0.0);
            let pairs = (batch * (batch - 1)) as f64;
            // The diagonal (each user against itself) would add a constant 1 per row.
            (shortfall.mask_fill(off_diagonal.bool_not(), 0.0).sum() / pairs).reshape([1])
        }
    }
}

/// `D²_ij = ‖z_i‖² + ‖z_j‖² − 2 z_i·z_j`, clamped at 0: `[batch, batch]`.
fn squared_distances<B: Backend>(z: Tensor<B, 2>) -> Tensor<B, 2> {
    let norms = z.clone().powi_scalar(2).sum_dim(1); // [batch, 1]
    let gram = z.clone().matmul(z.transpose()); // [batch, batch]
    (norms.clone() + norms.transpose() - gram * 2.0).clamp_min(0.0)
}

/// Sets the entries where `keep` is false to −inf (they drop out of every logsumexp).
fn masked<B: Backend>(logits: Tensor<B, 2>, keep: Tensor<B, 2, Bool>) -> Tensor<B, 2> {
    logits.mask_fill(keep.bool_not(), f32::NEG_INFINITY)
}

/// Row-wise logsumexp: `[rows, cols]` → `[rows]`.
fn logsumexp_rows<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 1> {
    let max = x.clone().max_dim(1).detach();
    ((x - max.clone()).exp().sum_dim(1).log() + max).squeeze_dim(1)
}

/// logsumexp over every element: `[rows, cols]` → `[1]`.
fn logsumexp_all<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 1> {
    let max = x.clone().max().detach();
    (x - max.clone().reshape([1, 1])).exp().sum().log() + max
}

/// `log(exp(a) + c)` for a constant `c > 0`, stable for very negative or very positive `a`.
fn log_add_exp_const<B: Backend>(a: Tensor<B, 1>, c: f64) -> Tensor<B, 1> {
    let log_c = c.ln();
    let hi = a.clone().clamp_min(log_c);
    let lo = a.clamp_max(log_c);
    // max + log(1 + exp(min - max)); exactly one of hi, lo is log_c.
    let diff = lo.clone() + hi.clone().neg();
    hi + (diff.exp() + 1.0).log()
}
