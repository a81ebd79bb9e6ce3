//! The GPU check's dry run (tools/gpu-check): the same code as on the GPU, at toy sizes on the
//! CPU: on Flex (the fused kernels) and on NdArray, which runs the composite ops CUDA and wgpu run
//! (`FluxOps`' defaults). Every fixture comparison must be within its tolerance, every timed phase
//! must run, and a time limit must stop the check cleanly with the phases it did not reach listed.

use std::path::PathBuf;
use std::time::Duration;

use premier::gpu_check::workload::WorkloadSize;
use premier::gpu_check::{run_check, CheckError, CheckOptions};

type B = burn::backend::Flex;

fn options(report: PathBuf, time_limit: Duration) -> CheckOptions {
    CheckOptions {
        fixtures: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"),
        report,
        size: WorkloadSize::tiny(),
        time_limit,
        min_phase: Duration::ZERO,
        hard_stop: false,
        device_memory: false,
        peak_tflops: 1.0,
        header: vec![("backend".into(), "Flex (test)".into())],
        overwrite: false,
    }
}

#[test]
fn dry_run_passes_every_fixture_and_runs_every_phase() {
    dry_run::<B>();
}

/// The GPU backends' code path: no fused kernel anywhere.
#[test]
fn dry_run_on_the_composite_ops_passes_every_fixture_and_runs_every_phase() {
    type Composite = burn::backend::NdArray<f32>;
    assert!(!<Composite as premier_mmdit::FluxOps>::FUSED_ATTENTION);
    assert!(!<Composite as premier_mmdit::FluxOps>::FUSED_NORMS);
    dry_run::<Composite>();
}

fn dry_run<Bk: premier_mmdit::FluxOps>() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("report.md");
    let report = run_check::<Bk>(
        &options(path.clone(), Duration::from_secs(600)),
        &Default::default(),
    )
    .unwrap();
    assert!(
        report.parity_failures.is_empty(),
        "{:?}",
        report.parity_failures
    );
    // 2 + 2 FLUX outputs, 2 Δ gradients, 2 adapter, 6 losses, 3 prodigy, 1 T5, 2 CLIP, 6 VAE, 1 sampling.
    assert_eq!(report.parity.len(), 27, "{:#?}", report.parity);
    for row in &report.parity {
        assert!(row.passes(), "{row:?}");
        assert!(row.scale > 0.0, "{row:?} compares against zeros");
    }
    assert_eq!(report.phases.len(), 5, "{:#?}", report.phases);
    for phase in &report.phases {
        assert!(phase.error.is_none(), "{phase:?}");
        assert!(
            phase.timed.warm_up.is_some() && !phase.timed.runs.is_empty(),
            "{phase:?}"
        );
        assert!(phase.floor_s.unwrap() > 0.0, "{phase:?}");
        assert!(phase.estimate_mib.unwrap() > 0.0, "{phase:?}");
    }
    assert!(report.skipped.is_empty() && report.stopped.is_none());
    let written = std::fs::read_to_string(&path).unwrap();
    assert_eq!(written, report.to_markdown());
    assert!(
        written.contains("| tiny_flux_mod | modulated output, diffusers file |"),
        "{written}"
    );
    assert!(
        written.contains("stage-1 step, batch 2, checkpointing"),
        "{written}"
    );

    // A second run refuses to replace the report.
    let again = run_check::<Bk>(
        &options(path.clone(), Duration::from_secs(600)),
        &Default::default(),
    );
    assert!(matches!(again, Err(CheckError::ReportExists(p)) if p == path));
}

#[test]
fn a_time_limit_stops_before_the_timed_work_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = options(dir.path().join("report.md"), Duration::ZERO);
    options.min_phase = Duration::from_secs(1);
    let report = run_check::<B>(&options, &Default::default()).unwrap();
    assert!(report.phases.is_empty());
    assert_eq!(report.skipped.len(), 5, "{:?}", report.skipped);
    assert!(report.skipped.iter().all(|(_, why)| why == "time limit"));
    let written = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    assert!(
        written.contains("not run: stage-1 step, batch 1 (time limit)"),
        "{written}"
    );
}

#[test]
fn a_missing_fixtures_folder_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = options(dir.path().join("report.md"), Duration::from_secs(60));
    options.fixtures = dir.path().join("nowhere");
    let err = run_check::<B>(&options, &Default::default()).unwrap_err();
    assert!(err.to_string().contains("nowhere"), "{err}");
}
