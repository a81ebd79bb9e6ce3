//! A shortened quickstart: every phase runs on the shipped base and the report's numbers are
//! finite and in range.

use burn::backend::{Autodiff, Flex};
use premier_synth::base::shipped_base_dir;
use premier_synth::experiment::{run, ExperimentConfig};

#[test]
fn shortened_quickstart_writes_a_finite_report() {
    let dir = tempfile::tempdir().unwrap();
    let config = ExperimentConfig::smoke();
    let report = run::<Autodiff<Flex>>(
        &config,
        &shipped_base_dir(),
        dir.path(),
        &Default::default(),
        &mut (),
    )
    .unwrap();
    assert_eq!(report.main.len(), 3, "base, taste in prompt, Premier");
    assert_eq!(report.cold_start.len(), 1 + 2 * config.shots.len());
    for row in report.main.iter().chain(&report.cold_start) {
        let s = row.scores;
        for (name, v) in [
            ("preference", s.preference),
            ("win rate", s.win_rate),
            ("fidelity", s.fidelity),
            ("distance", s.distance),
        ] {
            assert!((0.0..=1.0).contains(&v), "{}: {name} = {v}", row.name);
        }
        assert!(
            s.preference_se.is_finite() && s.preference_se >= 0.0,
            "{}: s.e. {}",
            row.name,
            s.preference_se
        );
    }
    // Against itself the base ties every time.
    assert_eq!(report.main[0].scores.win_rate, 0.5);
    for (name, loss) in &report.stage1_final_loss {
        assert!(loss.is_finite(), "{name}: {loss}");
    }
    for file in &report.files {
        assert!(file.is_file(), "{} missing", file.display());
    }
    let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    assert!(md.contains("| Premier |") && md.contains("## Claims"));
}
