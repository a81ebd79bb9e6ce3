//! The check's markdown report, rewritten (temp file, then rename) after every phase so that what
//! was reached survives a time limit or a crash.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use super::parity::{ParityFailure, ParityRow, Tolerance};
use super::workload::Timed;

/// One timed phase (a stage-1 configuration or the generation).
#[derive(Debug, Clone, Default)]
pub struct PhaseResult {
    /// The phase, as the report names it.
    pub name: String,
    /// Its runs.
    pub timed: Timed,
    /// Seconds the phase needs at the device's dense bf16 rate (see `Report::peak_tflops`).
    pub floor_s: Option<f64>,
    /// Peak memory measured during the phase, MiB.
    pub peak_mib: Option<u64>,
    /// The phase's own memory estimate, MiB.
    pub estimate_mib: Option<f64>,
    /// What the phase ran (sizes, settings).
    pub note: String,
    /// Why the phase did not finish (an error, a panic, the time limit).
    pub error: Option<String>,
}

/// The check's report, rewritten as markdown after every phase.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The heading.
    pub title: String,
    /// Key-value lines about the machine and the build.
    pub header: Vec<(String, String)>,
    /// Every fixture comparison.
    pub parity: Vec<ParityRow>,
    /// Fixtures that could not be run.
    pub parity_failures: Vec<ParityFailure>,
    /// How long the parity phase took.
    pub parity_time: Option<Duration>,
    /// Which memory the peaks measure.
    pub memory_label: String,
    /// The timed phases.
    pub phases: Vec<PhaseResult>,
    /// Phases never started, with the reason.
    pub skipped: Vec<(String, String)>,
    /// Free lines at the end.
    pub notes: Vec<String>,
    /// Set when the time limit stopped the check.
    pub stopped: Option<String>,
}

fn secs(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64())
}

fn tol(t: Tolerance) -> String {
    match t {
        Tolerance::Abs(a) => format!("atol {a:.0e}"),
        Tolerance::Rel(r) => format!("rtol {r:.0e}"),
    }
}

impl Report {
    /// How many comparisons met their tolerance.
    pub fn parity_passed(&self) -> usize {
        self.parity.iter().filter(|r| r.passes()).count()
    }

    /// The report as markdown.
    pub fn to_markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# {}\n", self.title);
        for (k, v) in &self.header {
            let _ = writeln!(s, "- {k}: {v}");
        }
        if let Some(why) = &self.stopped {
            let _ = writeln!(s, "\n**Stopped early:** {why}");
        }
        let _ = writeln!(s, "\n## 1. Parity with the reference fixtures (f32)\n");
        if self.parity.is_empty() && self.parity_failures.is_empty() {
            let _ = writeln!(s, "Not reached.");
        } else {
            let _ = writeln!(
                s,
                "{} of {} comparisons within the crate tests' tolerance{}.\n",
                self.parity_passed(),
                self.parity.len(),
                self.parity_time
                    .map(|t| format!(" ({} s, kernel compilation included)", secs(t)))
                    .unwrap_or_default()
            );
            let _ = writeln!(
                s,
                "| fixture | quantity | max abs diff | rel L2 | max abs ref | tolerance | within |"
            );
            let _ = writeln!(s, "|---|---|---|---|---|---|---|");
            for r in &self.parity {
                let _ = writeln!(
                    s,
                    "| {} | {} | {:.2e} | {:.2e} | {:.2e} | {} | {} |",
                    r.fixture,
                    r.quantity,
                    r.max_abs,
                    r.rel_l2,
                    r.scale,
                    tol(r.tolerance),
                    if r.passes() { "yes" } else { "**no**" }
                );
            }
            for f in &self.parity_failures {
                let _ = writeln!(s, "\n- `{}` could not run: {}", f.fixture, f.error);
            }
        }
        let _ = writeln!(s, "\n## 2. Timed work ({})\n", self.memory_label);
        if self.phases.is_empty() {
            let _ = writeln!(s, "Not reached.");
        } else {
            let _ = writeln!(s, "| phase | warm-up s | median s | runs | floor s | × floor | peak MiB | estimate MiB | note |");
            let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
            for p in &self.phases {
                let median = p.timed.median();
                let ratio = match (median, p.floor_s) {
                    (Some(m), Some(f)) if f > 0.0 => format!("{:.1}", m.as_secs_f64() / f),
                    _ => "–".into(),
                };
                let note = match &p.error {
                    Some(e) => format!("**{e}**"),
                    None => p.note.clone(),
                };
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    p.name,
                    p.timed.warm_up.map(secs).unwrap_or_else(|| "–".into()),
                    median.map(secs).unwrap_or_else(|| "–".into()),
                    p.timed.runs.len(),
                    p.floor_s
                        .map(|f| format!("{f:.3}"))
                        .unwrap_or_else(|| "–".into()),
                    ratio,
                    p.peak_mib
                        .map(|m| m.to_string())
                        .unwrap_or_else(|| "–".into()),
                    p.estimate_mib
                        .map(|m| format!("{m:.1}"))
                        .unwrap_or_else(|| "–".into()),
                    note.replace('|', "/")
                );
            }
        }
        for (name, why) in &self.skipped {
            let _ = writeln!(s, "\n- not run: {name} ({why})");
        }
        if !self.notes.is_empty() {
            let _ = writeln!(s, "\n## Notes\n");
            for n in &self.notes {
                let _ = writeln!(s, "- {n}");
            }
        }
        s
    }

    /// Writes the report to `path` through a temporary file beside it.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("md.partial");
        std::fs::write(&tmp, self.to_markdown())?;
        std::fs::rename(&tmp, path)
    }
}
