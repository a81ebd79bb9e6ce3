//! The prepared GPU check (`tools/gpu-check`): every reference fixture of the test suite on one
//! backend, then FLUX.1-dev-size stage-1 steps (batch 1 and 2, gradient checkpointing off and on)
//! and a 30-step personalized generation, each timed with its peak memory, in one markdown
//! report. It keeps to a time limit: a phase starts only while there is time for it, and with
//! [`CheckOptions::hard_stop`] a watchdog writes the report and exits when the limit is reached
//! (a running kernel cannot be interrupted). [`WorkloadSize::tiny`] runs the same code at toy
//! sizes: the test suite's dry run on the CPU.

pub mod parity;
pub mod probe;
pub mod report;
pub mod workload;

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use burn::backend::autodiff::checkpoint::strategy::{BalancedCheckpointing, NoCheckpointing};
use burn::module::Module;
use burn::tensor::ElementConversion;
use premier_mmdit::FluxOps;

use probe::MemoryProbe;
use report::{PhaseResult, Report};
use workload::WorkloadSize;

/// Exit status of the check binary when the time limit stopped it.
pub const EXIT_TIME_LIMIT: i32 = 3;

/// What the check runs and where it writes.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// The reference fixtures (tests/fixtures).
    pub fixtures: PathBuf,
    /// Where the markdown report goes (rewritten after every phase).
    pub report: PathBuf,
    /// The sizes of the timed work (FLUX.1-dev's, or smaller for a dry run).
    pub size: WorkloadSize,
    /// The whole check, from the call on.
    pub time_limit: Duration,
    /// A phase starts only with at least this much time left.
    pub min_phase: Duration,
    /// Exit the process (status [`EXIT_TIME_LIMIT`]) at the time limit, after writing the report.
    pub hard_stop: bool,
    /// Read device memory through `nvidia-smi` (else the process's peak resident memory).
    pub device_memory: bool,
    /// Dense bf16 matrix rate the floors are computed at, TFLOP/s (H200: about 790 measured).
    pub peak_tflops: f64,
    /// Lines for the report's header (device, build, command).
    pub header: Vec<(String, String)>,
    /// Replace an existing report.
    pub overwrite: bool,
}

/// Why the check could not start or write its report.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("{0} exists; pass --overwrite to replace it")]
    /// The report is there from an earlier run.
    ReportExists(PathBuf),
    #[error("fixtures folder {0} not found")]
    /// The fixtures folder is missing.
    NoFixtures(PathBuf),
    #[error("the device did not answer: {0}")]
    /// The device failed its first small operation.
    Device(String),
    #[error("writing the report {path}: {source}")]
    /// The report could not be written.
    Write {
        /// The report file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// Panic messages of every thread since the last [`guarded`] call: a backend's panic on its own
/// thread (a missing driver library, say) reaches the caller only as a closed channel.
static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn record_panics() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(info.to_string());
            default(info);
        }));
    });
}

/// Runs `f`, turning a panic (on any thread meanwhile) into an error that quotes each message.
fn guarded<T>(f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    PANICS.lock().unwrap_or_else(|p| p.into_inner()).clear();
    let result = std::panic::catch_unwind(AssertUnwindSafe(f));
    let messages = std::mem::take(&mut *PANICS.lock().unwrap_or_else(|p| p.into_inner()));
    result.unwrap_or_else(|_| {
        let mut messages = messages;
        messages.dedup();
        Err(format!(
            "panicked: {}",
            messages.join(" / ").replace('\n', " ")
        ))
    })
}

/// Shared between the check and its watchdog.
struct State {
    report: Mutex<Report>,
    path: PathBuf,
}

impl State {
    fn update(&self, f: impl FnOnce(&mut Report)) -> Result<(), CheckError> {
        let mut report = self.report.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut report);
        report
            .write(&self.path)
            .map_err(|source| CheckError::Write {
                path: self.path.clone(),
                source,
            })
    }
}

/// Runs the whole check on `device` and returns the report (also written to
/// [`CheckOptions::report`]).
pub fn run_check<B: FluxOps>(
    options: &CheckOptions,
    device: &B::Device,
) -> Result<Report, CheckError> {
    let start = Instant::now();
    if options.report.exists() && !options.overwrite {
        return Err(CheckError::ReportExists(options.report.clone()));
    }
    if !options.fixtures.is_dir() {
        return Err(CheckError::NoFixtures(options.fixtures.clone()));
    }
    let probe = MemoryProbe::start(options.device_memory);
    let size = &options.size;
    let mut header = options.header.clone();
    header.push(("size".into(), size.name.into()));
    header.push((
        "time limit".into(),
        format!("{} s", options.time_limit.as_secs()),
    ));
    let state = Arc::new(State {
        report: Mutex::new(Report {
            title: "premier GPU check".into(),
            header,
            memory_label: probe.kind().label().into(),
            ..Report::default()
        }),
        path: options.report.clone(),
    });
    state.update(|_| ())?;
    if options.hard_stop {
        let (state, limit) = (Arc::clone(&state), options.time_limit);
        std::thread::spawn(move || {
            std::thread::sleep(limit.saturating_sub(start.elapsed()));
            let _ = state.update(|r| {
                r.stopped = Some(format!(
                    "the time limit of {} s was reached; phases not listed were not reached",
                    limit.as_secs()
                ))
            });
            eprintln!("gpu-check: time limit reached; report written");
            std::process::exit(EXIT_TIME_LIMIT);
        });
    }
    let left = || options.time_limit.saturating_sub(start.elapsed());
    record_panics();

    // 0. The device answers at all.
    let preflight = guarded(|| {
        let t = burn::tensor::Tensor::<B, 1>::ones([4], device);
        Ok(t.sum().into_scalar().elem::<f32>())
    });
    if let Err(e) = preflight {
        state.update(|r| r.notes.push(format!("the device did not answer: {e}")))?;
        return Err(CheckError::Device(e));
    }

    // 1. Parity.
    let tick = Instant::now();
    let parity = guarded(|| Ok(parity::run_all::<B>(&options.fixtures, device)));
    state.update(|r| {
        r.parity_time = Some(tick.elapsed());
        match parity {
            Ok((rows, failures)) => {
                for row in &rows {
                    println!(
                        "parity {} / {}: max |diff| {:.2e}, rel L2 {:.2e} ({})",
                        row.fixture,
                        row.quantity,
                        row.max_abs,
                        row.rel_l2,
                        if row.passes() {
                            "within"
                        } else {
                            "OUTSIDE tolerance"
                        }
                    );
                }
                for f in &failures {
                    println!("parity {}: could not run: {}", f.fixture, f.error);
                }
                r.parity = rows;
                r.parity_failures = failures;
            }
            Err(e) => r.parity_failures.push(parity::ParityFailure {
                fixture: "all",
                error: e,
            }),
        }
    })?;
    let _ = guarded(|| {
        B::memory_cleanup(device);
        Ok(())
    });

    // 2. The timed work, on one backbone.
    let phases: Vec<(String, Phase)> = vec![
        (
            format!("generation, {} steps, Δ cached", size.generation_steps),
            Phase::Generation,
        ),
        (
            "stage-1 step, batch 1".into(),
            Phase::Stage1 {
                batch: 1,
                checkpointing: false,
            },
        ),
        (
            "stage-1 step, batch 1, checkpointing".into(),
            Phase::Stage1 {
                batch: 1,
                checkpointing: true,
            },
        ),
        // The phase most likely to run out of device memory (74 GiB estimated on CUDA) comes
        // last, so that a failed allocation cannot cost the others.
        (
            "stage-1 step, batch 2, checkpointing".into(),
            Phase::Stage1 {
                batch: 2,
                checkpointing: true,
            },
        ),
        (
            "stage-1 step, batch 2".into(),
            Phase::Stage1 {
                batch: 2,
                checkpointing: false,
            },
        ),
    ];
    if left() < options.min_phase {
        return finish(&state, phases.into_iter().map(|(n, _)| n), "time limit");
    }
    // Δ first, its adapters released before FLUX exists (the plan of `generate --low-memory`).
    probe.reset();
    let inputs = guarded(|| workload::generation_inputs::<B>(size, device));
    let adapter_peak = probe.peak_mib();
    let _ = guarded(|| {
        B::memory_cleanup(device);
        Ok(())
    });
    if let Ok(inputs) = &inputs {
        state.update(|r| {
            r.notes.push(format!(
                "Δ for the generation: adapters built{} and Δ computed in {:.1} s (peak {} MiB), then released before FLUX was built",
                if size.bf16_backbone { " in bf16" } else { "" },
                inputs.delta_time.as_secs_f64(),
                adapter_peak.map(|m| m.to_string()).unwrap_or_else(|| "?".into())
            ))
        })?;
    }
    let tick = Instant::now();
    probe.reset();
    let flux = match guarded(|| workload::backbone::<B>(size, device)) {
        Ok(flux) => flux,
        Err(e) => {
            state.update(|r| r.notes.push(format!("building the backbone failed: {e}")))?;
            return finish(&state, phases.into_iter().map(|(n, _)| n), "no backbone");
        }
    };
    let params = flux.num_params();
    let built = tick.elapsed();
    let build_peak = probe.peak_mib();
    let _ = guarded(|| {
        B::memory_cleanup(device);
        Ok(())
    });
    state.update(|r| {
        r.notes.push(format!(
            "backbone: {params} parameters built with random weights in {:.1} s (peak {} MiB while built)",
            built.as_secs_f64(),
            build_peak.map(|m| m.to_string()).unwrap_or_else(|| "?".into())
        ));
    })?;
    let flop = size.forward_flop(params);
    let rate = options.peak_tflops * 1e12;
    let mut names = phases.into_iter();
    while let Some((name, phase)) = names.next() {
        if left() < options.min_phase {
            return finish(
                &state,
                std::iter::once(name).chain(names.map(|(n, _)| n)),
                "time limit",
            );
        }
        println!("{name} …");
        probe.reset();
        let enough = |last: Duration| left() > last * 2 + Duration::from_secs(1);
        let estimate = size.estimate_bytes(&phase, B::FUSED_ATTENTION) as f64 / (1u64 << 20) as f64;
        let (timed, floor, note) = match phase {
            Phase::Generation => {
                let floor = flop * size.generation_steps as f64 / rate;
                let timed = match &inputs {
                    Ok(inputs) => {
                        guarded(|| workload::generation::<B>(size, &flux, inputs, device, enough))
                    }
                    Err(e) => Err(format!("no Δ: {e}")),
                };
                let note = "FLUX and Δ only (adapters released); warm-up is one step";
                (timed, floor, note.to_string())
            }
            Phase::Stage1 {
                batch,
                checkpointing,
            } => {
                // Backward through a frozen backbone needs no weight gradients: about one
                // more forward.
                let floor = 2.0 * flop * batch as f64 / rate;
                let timed = guarded(|| {
                    if checkpointing {
                        workload::stage1_steps::<B, BalancedCheckpointing>(
                            size, &flux, batch, device, enough,
                        )
                    } else {
                        workload::stage1_steps::<B, NoCheckpointing>(
                            size, &flux, batch, device, enough,
                        )
                    }
                });
                (timed, floor, String::new())
            }
        };
        let peak = probe.peak_mib();
        let _ = guarded(|| {
            B::memory_cleanup(device);
            Ok(())
        });
        let result = match timed {
            Ok(timed) => PhaseResult {
                name,
                timed,
                floor_s: Some(floor),
                peak_mib: peak,
                estimate_mib: Some(estimate),
                note,
                ..PhaseResult::default()
            },
            Err(e) => PhaseResult {
                name,
                peak_mib: peak,
                estimate_mib: Some(estimate),
                error: Some(e),
                ..PhaseResult::default()
            },
        };
        println!("{result:?}");
        state.update(|r| r.phases.push(result))?;
    }
    let report = state
        .report
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Ok(report)
}

/// A timed phase.
pub enum Phase {
    /// A personalized generation (Δ computed, then the Euler steps).
    Generation,
    /// A stage-1 step.
    Stage1 {
        /// Samples per step.
        batch: usize,
        /// With gradient checkpointing.
        checkpointing: bool,
    },
}

fn finish(
    state: &State,
    skipped: impl Iterator<Item = String>,
    why: &str,
) -> Result<Report, CheckError> {
    state.update(|r| r.skipped.extend(skipped.map(|n| (n, why.to_string()))))?;
    Ok(state
        .report
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone())
}
