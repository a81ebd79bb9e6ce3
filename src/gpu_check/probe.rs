//! Peak memory of a phase: the device's, read from `nvidia-smi` every 50 ms, or the process's
//! resident memory (`VmHWM`, reset through `/proc/self/clear_refs`) on the CPU.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What a probe measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryKind {
    /// Memory used on GPU 0 as `nvidia-smi` reports it: the whole device, CUDA context and the
    /// allocator's reserved pool included.
    Device,
    /// Peak resident memory of this process.
    Host,
}

impl MemoryKind {
    /// How the report names this kind of memory.
    pub fn label(self) -> &'static str {
        match self {
            Self::Device => "peak device memory (nvidia-smi, whole GPU)",
            Self::Host => "peak host memory (VmHWM)",
        }
    }
}

/// Samples memory in the background; [`MemoryProbe::reset`] starts a phase,
/// [`MemoryProbe::peak_mib`] ends it.
pub struct MemoryProbe {
    kind: MemoryKind,
    peak_mib: Arc<AtomicU64>,
    sampler: Option<Child>,
}

impl MemoryProbe {
    /// A device probe if `nvidia-smi` runs, else a host probe.
    pub fn start(device: bool) -> Self {
        let peak_mib = Arc::new(AtomicU64::new(0));
        if device {
            let child = Command::new("nvidia-smi")
                .args([
                    "--query-gpu=memory.used",
                    "--format=csv,noheader,nounits",
                    "--id=0",
                    "-lms",
                    "50",
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn();
            if let Ok(mut child) = child {
                if let Some(out) = child.stdout.take() {
                    let peak = Arc::clone(&peak_mib);
                    std::thread::spawn(move || {
                        for line in BufReader::new(out).lines().map_while(Result::ok) {
                            if let Ok(mib) = line.trim().parse::<u64>() {
                                peak.fetch_max(mib, Ordering::Relaxed);
                            }
                        }
                    });
                    return Self {
                        kind: MemoryKind::Device,
                        peak_mib,
                        sampler: Some(child),
                    };
                }
            }
        }
        Self {
            kind: MemoryKind::Host,
            peak_mib,
            sampler: None,
        }
    }

    /// Which memory this probe reads.
    pub fn kind(&self) -> MemoryKind {
        self.kind
    }

    /// Forgets the peak so far.
    pub fn reset(&self) {
        match self.kind {
            MemoryKind::Device => self.peak_mib.store(0, Ordering::Relaxed),
            // "5" resets VmHWM to the current resident size (proc(5)); harmless where refused.
            // Harmless where refused: the peak then runs from the start.
            MemoryKind::Host => {
                let _ = premier_train::memory::reset_host_peak();
            }
        }
    }

    /// The peak since the last reset, in MiB (`None` if nothing could be read).
    pub fn peak_mib(&self) -> Option<u64> {
        match self.kind {
            MemoryKind::Device => {
                // Let the sampler take one more reading of the phase that just ended.
                std::thread::sleep(Duration::from_millis(120));
                Some(self.peak_mib.load(Ordering::Relaxed)).filter(|&m| m > 0)
            }
            MemoryKind::Host => premier_train::memory::host_peak_bytes().map(|b| b >> 20),
        }
    }
}

impl Drop for MemoryProbe {
    fn drop(&mut self) {
        if let Some(child) = &mut self.sampler {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
