//! Device memory of a training step (stage 1 or a cold start), estimated from the configurations
//! before anything is loaded: what `premier train` and `premier cold-start` print and
//! `--max-memory` checks. The backbone's activations follow `premier_mmdit::memory`; the trained
//! side is the parameters with their gradients and optimizer state. tests/memory.rs compares the
//! estimate with measured peaks.

use std::fmt;

use premier_adapter::AdapterConfig;
use premier_mmdit::memory::format_bytes as gib;
use premier_mmdit::{FluxConfig, PassShape};
use premier_users::UserShape;

/// Bytes per trained parameter: the f32 value, its gradient, Prodigy's four state tensors
/// (p0, s, exp_avg, exp_avg_sq) and two flat temporaries of the update.
const TRAINED_BYTES_PER_PARAM: u64 = 4 * (1 + 1 + 4 + 2);

/// Device memory of one training step, in bytes, by what holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrainingMemory {
    /// The frozen backbone's weights.
    pub backbone: u64,
    /// The trained parameters (f32) with their gradients and optimizer state, and any frozen
    /// f32 weights besides the backbone (a cold start's adapters and table).
    pub trained: u64,
    /// The backbone's activations kept for the backward pass and its working set.
    pub backbone_activations: u64,
    /// The adapters' activations: Δ of the batch's prompts (and, in stage 1, of the null
    /// prompt for the dispersion).
    pub adapter_activations: u64,
}

/// Activation bytes of one adapter pass over `tokens` prompt tokens: per token and perceiver
/// layer about 16 widths (attention, the 4× MLP, the AdaLayerNorms); the outputs and their norm,
/// 2 × hidden per output block.
fn adapter_pass_bytes(adapter: &AdapterConfig, tokens: usize) -> u64 {
    let outputs = adapter.shared as u64 + adapter.distinct as u64 * adapter.blocks as u64;
    let per_token =
        adapter.layers as u64 * 16 * adapter.width as u64 + 2 * adapter.hidden as u64 * outputs;
    (tokens as u64).saturating_mul(per_token).saturating_mul(4)
}

impl TrainingMemory {
    /// The estimate for `flux` stored with `backbone_bytes` per parameter (activations in the
    /// same type), the trained `adapter` and `users`, and one step's `shape`.
    pub fn estimate(
        flux: &FluxConfig,
        backbone_bytes: usize,
        adapter: &AdapterConfig,
        users: UserShape,
        shape: PassShape,
    ) -> Self {
        let trained_params =
            adapter.param_count() + (users.users * users.tokens * users.dim) as u64;
        let passes: u64 = 2; // the batch's prompts and the null prompt of the dispersion
        Self {
            backbone: flux.weight_bytes(backbone_bytes),
            trained: trained_params * TRAINED_BYTES_PER_PARAM,
            backbone_activations: flux.training_activation_bytes(&shape),
            adapter_activations: passes.saturating_mul(adapter_pass_bytes(
                adapter,
                shape.batch.saturating_mul(shape.txt_tokens),
            )),
        }
    }

    /// A cold start: only the new user's `user_params` train; the adapters and the table stay
    /// frozen in f32, and Δ's gradient flows back through the adapters to the user.
    pub fn cold_start(
        flux: &FluxConfig,
        backbone_bytes: usize,
        adapter: &AdapterConfig,
        table: UserShape,
        user_params: u64,
        shape: PassShape,
    ) -> Self {
        let frozen = adapter.param_count() + (table.users * table.tokens * table.dim) as u64;
        Self {
            backbone: flux.weight_bytes(backbone_bytes),
            trained: user_params * TRAINED_BYTES_PER_PARAM + frozen * 4,
            backbone_activations: flux.training_activation_bytes(&shape),
            adapter_activations: adapter_pass_bytes(
                adapter,
                shape.batch.saturating_mul(shape.txt_tokens),
            ),
        }
    }

    /// The sum of the parts, in bytes.
    pub fn total(&self) -> u64 {
        // Saturating: a batch from user input may be absurd; the estimate then refuses it.
        [
            self.trained,
            self.backbone_activations,
            self.adapter_activations,
        ]
        .into_iter()
        .fold(self.backbone, u64::saturating_add)
    }

    /// `Err` naming the estimate when it exceeds `limit`, with the alternatives (flags, their
    /// estimate) that would fit.
    pub fn check(
        &self,
        limit: MemoryLimit,
        alternatives: &[(String, TrainingMemory)],
    ) -> Result<(), MemoryError> {
        if self.total() <= limit.bytes {
            return Ok(());
        }
        let fits: Vec<String> = alternatives
            .iter()
            .filter(|(_, m)| m.total() <= limit.bytes)
            .map(|(flags, m)| format!("{flags} ({})", gib(m.total())))
            .collect();
        Err(MemoryError {
            estimate: self.to_string(),
            limit,
            fits: if fits.is_empty() {
                "none of the usual flags fits; make the adapters or the user table smaller \
                 (adapter_width, adapter_layers, user_tokens, user_dim)"
                    .into()
            } else {
                format!("these would fit: {}", fits.join("; "))
            },
        })
    }
}

/// The memory a run may use, and where that number came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryLimit {
    /// The limit in bytes.
    pub bytes: u64,
    /// `--max-memory`, or the memory the host has available (the device of the CPU backend).
    pub source: &'static str,
}

impl MemoryLimit {
    /// `--max-memory`'s limit of `gib` GiB.
    pub fn from_gib(gib: f64) -> Self {
        Self {
            bytes: (gib * (1u64 << 30) as f64) as u64,
            source: "--max-memory",
        }
    }

    /// The free memory of GPU `index` as `nvidia-smi` reports it (`None` without an NVIDIA
    /// driver or tool).
    pub fn nvidia_free(index: usize) -> Option<Self> {
        let out = std::process::Command::new("nvidia-smi")
            .args([
                "--query-gpu=memory.free",
                "--format=csv,noheader,nounits",
                &format!("--id={index}"),
            ])
            .output()
            .ok()
            .filter(|o| o.status.success())?;
        Some(Self {
            bytes: parse_mib(&String::from_utf8_lossy(&out.stdout))?,
            source: "the GPU's free memory (nvidia-smi)",
        })
    }

    /// `MemAvailable` of /proc/meminfo: what the CPU backend can still allocate.
    pub fn host_available() -> Option<Self> {
        let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
        let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(Self {
            bytes: kib * 1024,
            source: "the host's available memory",
        })
    }
}

impl fmt::Display for TrainingMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} = backbone weights {} + trained parameters with gradients and optimizer state {} + \
             backbone activations {} + adapter activations {}",
            gib(self.total()),
            gib(self.backbone),
            gib(self.trained),
            gib(self.backbone_activations),
            gib(self.adapter_activations)
        )
    }
}

/// An estimate over the memory a run was given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("estimated device memory {estimate} exceeds {} ({}); {fits} (the estimate is an upper bound, 1.3× the peak measured on the CPU; --max-memory GIB sets the limit)", gib(.limit.bytes), .limit.source)]
pub struct MemoryError {
    /// The estimate, total and parts, as text.
    pub estimate: String,
    /// The limit it exceeds.
    pub limit: MemoryLimit,
    /// The alternatives that fit, or what to change when none does.
    pub fits: String,
}

/// `nvidia-smi`'s number of MiB (its first line) in bytes.
fn parse_mib(text: &str) -> Option<u64> {
    let mib: u64 = text.lines().next()?.trim().parse().ok()?;
    Some(mib << 20)
}

/// Peak resident memory of this process in bytes (`VmHWM`), where /proc is there: what the
/// estimates are measured against on the CPU.
pub fn host_peak_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Resets [`host_peak_bytes`] to the current resident size (`5` into /proc/self/clear_refs);
/// `false` where that is refused.
pub fn reset_host_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev_shape(batch: usize, fused_attention: bool) -> PassShape {
        PassShape {
            batch,
            img_tokens: 1024,
            txt_tokens: 512,
            element_bytes: 2,
            fused_attention,
        }
    }

    #[test]
    fn released_stage1_at_512_is_dominated_by_weights_and_activations() {
        let m = TrainingMemory::estimate(
            &FluxConfig::dev(),
            2,
            &AdapterConfig::released(),
            UserShape::released(),
            dev_shape(1, false),
        );
        // 11.9 B bf16 weights: 22.2 GiB.
        assert_eq!(m.backbone, 2 * 11_901_408_320);
        // 907 M adapter + 30.7 M table parameters at 32 bytes each.
        assert_eq!(m.trained, (907_229_184 + 30_720_000) * 32);
        assert!(m.total() > 24 << 30, "{m}");
        let two = TrainingMemory::estimate(
            &FluxConfig::dev(),
            2,
            &AdapterConfig::released(),
            UserShape::released(),
            dev_shape(2, false),
        );
        // Linear in the batch but for the score tensors, which a chunk of query rows caps at
        // 2²⁶ elements: batch 1 at 512² (24 · 1536² each) is under the cap, batch 2 over it.
        assert!(two.backbone_activations < 2 * m.backbone_activations);
        let fused = |batch| {
            TrainingMemory::estimate(
                &FluxConfig::dev(),
                2,
                &AdapterConfig::released(),
                UserShape::released(),
                dev_shape(batch, true),
            )
            .backbone_activations
        };
        assert_eq!(fused(2), 2 * fused(1));
        let scores = |e: &TrainingMemory, batch| e.backbone_activations - fused(batch);
        // In f32: the composite computes bf16 scores in f32.
        assert_eq!(scores(&m, 1), 3 * 24 * 1536 * 1536 * 4);
        assert_eq!(scores(&two, 2), 3 * (2 * 24 * 1536) * 910 * 4);
        let limit = |bytes| MemoryLimit {
            bytes,
            source: "--max-memory",
        };
        assert!(m.check(limit(two.total()), &[]).is_ok());
        let err = two
            .check(limit(m.total()), &[("--batch-size 1".into(), m)])
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("exceeds 62.4 GiB (--max-memory)"), "{text}");
        assert!(text.contains("backbone weights 22.2 GiB"), "{text}");
        assert!(
            text.contains("these would fit: --batch-size 1 (62.4 GiB)"),
            "{text}"
        );
        let err = two
            .check(limit(1 << 30), &[("--batch-size 1".into(), m)])
            .unwrap_err();
        assert!(
            err.to_string().contains("none of the usual flags fits"),
            "{err}"
        );
    }

    #[test]
    fn a_cold_start_trains_one_user_through_frozen_adapters() {
        let linear = TrainingMemory::cold_start(
            &FluxConfig::dev(),
            2,
            &AdapterConfig::released(),
            UserShape::released(),
            1000,
            dev_shape(1, false),
        );
        assert_eq!(linear.trained, 1000 * 32 + (907_229_184 + 30_720_000) * 4);
        let stage1 = TrainingMemory::estimate(
            &FluxConfig::dev(),
            2,
            &AdapterConfig::released(),
            UserShape::released(),
            dev_shape(1, false),
        );
        assert_eq!(linear.backbone_activations, stage1.backbone_activations);
        assert_eq!(2 * linear.adapter_activations, stage1.adapter_activations);
        assert!(linear.total() < stage1.total());
    }

    #[test]
    fn nvidia_smi_numbers_read_as_bytes() {
        assert_eq!(parse_mib("81559\n"), Some(81_559 << 20));
        assert_eq!(parse_mib(" 512 \n1024\n"), Some(512 << 20));
        assert_eq!(parse_mib("[N/A]\n"), None);
        assert_eq!(parse_mib(""), None);
    }

    #[test]
    fn the_host_reports_its_available_memory() {
        if std::path::Path::new("/proc/meminfo").exists() {
            let limit = MemoryLimit::host_available().expect("MemAvailable is read");
            assert!(limit.bytes > 1 << 20, "{limit:?}");
        }
    }
}
