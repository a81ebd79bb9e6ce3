//! The quickstart's report: tables of every method, the paper's claims each decided against a
//! threshold fixed in advance (three user-clustered standard errors), and a summary over seeds.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::evaluate::{clustered, paired, ImageScore, Scores};
use crate::experiment::ExperimentConfig;
use crate::sample::SAMPLING_STEPS;
use crate::world::{FACTORS, FACTOR_NAMES, WORDED};

/// A claim counts as reproduced (or reversed) only beyond this many standard errors.
pub const CLAIM_SE: f64 = 3.0;
/// "Keeps prompt fidelity": at most this much below the base.
pub const FIDELITY_MARGIN: f64 = 0.05;

/// One method's row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// The method (e.g. `Premier`, `base`).
    pub name: String,
    /// Its mean scores over the users.
    pub scores: Scores,
    /// Every image's scores, for paired comparisons (not written to report.json).
    #[serde(skip)]
    pub images: Vec<ImageScore>,
}

impl Row {
    /// Scores `images` against the base's images from the same noise.
    pub fn new(name: impl Into<String>, images: Vec<ImageScore>, base: &[ImageScore]) -> Self {
        Self {
            name: name.into(),
            scores: Scores::of(&images, base),
            images,
        }
    }
}

/// How a claim came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    /// The claim holds, beyond the threshold.
    Reproduced,
    /// The opposite holds, beyond the threshold.
    Reversed,
    /// Neither, within the threshold.
    Inconclusive,
}

impl Verdict {
    fn text(self) -> &'static str {
        match self {
            Verdict::Reproduced => "reproduced",
            Verdict::Reversed => "REVERSED",
            Verdict::Inconclusive => "inconclusive",
        }
    }
}

/// One of the paper's claims on one seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claim {
    /// Stable across seeds, to merge them.
    pub id: String,
    /// The claim in words.
    pub statement: String,
    /// The two rows' values (preference, or fidelity for the fidelity claim).
    pub a: f64,
    /// See `a`.
    pub b: f64,
    /// Paired difference a − b over the same images, and its user-clustered standard error.
    pub difference: f64,
    /// See `difference`.
    pub se: f64,
    /// Whether the difference clears the threshold of standard errors, and which way.
    pub verdict: Verdict,
}

impl Claim {
    /// "Row `a` has higher preference than row `b`", paired image by image.
    pub fn higher(id: &str, statement: String, a: &Row, b: &Row) -> Self {
        let (difference, se) = paired(&a.images, &b.images, |s| s.preference);
        let verdict = if difference > CLAIM_SE * se {
            Verdict::Reproduced
        } else if difference < -CLAIM_SE * se {
            Verdict::Reversed
        } else {
            Verdict::Inconclusive
        };
        let values = (a.scores.preference, b.scores.preference);
        Self::decided(id, statement, values, (difference, se), verdict)
    }

    fn decided(
        id: &str,
        statement: String,
        (a, b): (f64, f64),
        (difference, se): (f64, f64),
        verdict: Verdict,
    ) -> Self {
        Self {
            id: id.into(),
            statement,
            a,
            b,
            difference,
            se,
            verdict,
        }
    }

    /// "Row `a` keeps prompt fidelity within [`FIDELITY_MARGIN`] of row `b`".
    pub fn keeps_fidelity(id: &str, statement: String, a: &Row, b: &Row) -> Self {
        let (difference, se) = paired(&a.images, &b.images, |s| s.fidelity);
        let verdict = if difference >= -FIDELITY_MARGIN {
            Verdict::Reproduced
        } else if difference + CLAIM_SE * se < -FIDELITY_MARGIN {
            Verdict::Reversed
        } else {
            Verdict::Inconclusive
        };
        let values = (a.scores.fidelity, b.scores.fidelity);
        Self::decided(id, statement, values, (difference, se), verdict)
    }

    fn line(&self) -> String {
        format!(
            "{} ({:.3} vs {:.3}; difference {:+.3} ± {:.3}): **{}**",
            self.statement,
            self.a,
            self.b,
            self.difference,
            self.se,
            self.verdict.text()
        )
    }
}

/// The end of one stage-1 run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunEnd {
    /// The run (the method trained).
    pub name: String,
    /// Mean flow loss of the last 20 steps.
    pub flow: f64,
    /// RMS(Δ)/RMS(y), mean of the last 20 steps.
    pub delta_to_y: f64,
    /// Prodigy's d at the end.
    pub d: f64,
}

/// Everything one seed's experiment measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// What was run.
    pub config: ExperimentConfig,
    /// Trained users: base, taste in the prompt, Premier, then the reference rows.
    pub main: Vec<Row>,
    /// Stage-1 ablations (trained users), when run.
    pub ablations: Vec<Row>,
    /// New users: base, taste in the prompt, each cold start, the reference rows.
    pub cold_start: Vec<Row>,
    /// The end of each stage-1 run.
    pub stage1: Vec<RunEnd>,
    /// The paper's claims, decided on this seed.
    pub claims: Vec<Claim>,
    /// Share of the gap from the base to the taste in the prompt that Premier closes.
    pub gap_closed: f64,
    /// What each row of grid.png shows.
    pub grid_rows: Vec<String>,
    /// Wall time of the whole experiment.
    pub seconds: f64,
    /// Every file written.
    pub files: Vec<PathBuf>,
}

fn table(rows: &[Row]) -> String {
    let factors: Vec<String> = (0..FACTORS)
        .map(|f| {
            if WORDED[f] {
                FACTOR_NAMES[f].to_string()
            } else {
                format!("{} (tacit)", FACTOR_NAMES[f])
            }
        })
        .collect();
    let mut s = format!(
        "| Method | Preference ± s.e. ↑ | vs base ± s.e. ↑ | {} | Win rate ↑ | Prompt fidelity ↑ | Distance ↓ |\n|---|---|---|{}---|---|---|\n",
        factors.join(" | "),
        "---|".repeat(FACTORS)
    );
    for r in rows {
        let c = &r.scores;
        let per_factor: Vec<String> = c.factors.iter().map(|v| format!("{v:.3}")).collect();
        s.push_str(&format!(
            "| {} | {:.3} ± {:.3} | {:+.3} ± {:.3} | {} | {:.3} | {:.3} | {:.3} |\n",
            r.name,
            c.preference,
            c.preference_se,
            c.vs_base,
            c.vs_base_se,
            per_factor.join(" | "),
            c.win_rate,
            c.fidelity,
            c.distance
        ));
    }
    s
}

impl Report {
    /// The report as markdown.
    pub fn markdown(&self) -> String {
        let c = &self.config;
        let mut md = format!(
            "# Premier in miniature (seed {})\n\n\
             World: {} trained users, {} new users, {} liked images each; {} prompts × {} noise \
             seeds per user, {} Euler steps. Stage 1: {} steps of batch {} (Prodigy d0 {:e}), \
             adapter init {:?}, dispersion {}; cold start: {} steps, all new users in one batch.\n\n\
             Scores read pixels only: preference (ViPer-score analog) overall and per factor \
             (palette, background and texture have words the base knows; the pattern is tacit), \
             each image's preference minus that of the base's image from the same noise \
             (\"vs base\"), win rate against that image (ViPer-rate analog), prompt fidelity \
             (CLIP-T2I analog), distance to the user's held-out image of the prompt (LPIPS \
             analog). Standard errors are clustered by user. A claim is decided only beyond \
             {CLAIM_SE} standard errors.\n\n",
            c.seed,
            c.world.train_users,
            c.world.new_users,
            c.world.images_per_user,
            c.eval_prompts,
            c.eval_seeds,
            SAMPLING_STEPS,
            c.stage1_steps,
            c.batch_size,
            c.stage1_d0,
            c.adapter_init,
            c.dispersion.map_or("none".to_string(), |d| format!("{d:?}")),
            c.cold_start_steps,
        );
        md.push_str("## Trained users\n\n");
        md.push_str(&table(&self.main));
        md.push_str(&format!(
            "\nPremier closes {:.0} % of the gap from the base to the taste in the prompt.\n",
            100.0 * self.gap_closed
        ));
        if !self.ablations.is_empty() {
            md.push_str("\n## Ablations (trained users)\n\n");
            let premier = self.main.iter().filter(|r| r.name == "Premier");
            let rows: Vec<Row> = premier.chain(&self.ablations).cloned().collect();
            md.push_str(&table(&rows));
        }
        md.push_str("\n## Cold start (new users)\n\n");
        md.push_str(&table(&self.cold_start));
        md.push_str("\n## Claims\n\n");
        for claim in &self.claims {
            md.push_str(&format!("- {}\n", claim.line()));
        }
        md.push_str("\n## Stage-1 runs (mean of the last 20 steps)\n\n");
        md.push_str("| Run | flow loss | RMS(Δ)/RMS(y) | Prodigy d |\n|---|---|---|---|\n");
        for run in &self.stage1 {
            md.push_str(&format!(
                "| {} | {:.4} | {:.3} | {:.2e} |\n",
                run.name, run.flow, run.delta_to_y, run.d
            ));
        }
        md.push_str(
            "\n## grid.png\n\nA column per prompt (first noise seed); the first tile of \
                     each row shows the row's taste drawn by the world's renderer.\n\n",
        );
        for (i, row) in self.grid_rows.iter().enumerate() {
            md.push_str(&format!("{}. {row}\n", i + 1));
        }
        md.push_str(&format!("\nRan in {:.0} s.\n", self.seconds));
        md
    }
}

/// The claims over several seeds: each claim's per-seed results, mean and spread.
pub fn summary(reports: &[Report]) -> String {
    let seeds: Vec<String> = reports.iter().map(|r| r.config.seed.to_string()).collect();
    let mut md = format!(
        "# Premier in miniature: {} seeds ({})\n\nEach cell: paired difference ± \
         user-clustered s.e. and the verdict at {CLAIM_SE} s.e. Across seeds: the mean of the \
         differences and their standard deviation.\n\n| Claim | {} | mean ± sd over seeds | \
         reproduced on |\n|---|{}---|---|\n",
        reports.len(),
        seeds.join(", "),
        seeds
            .iter()
            .map(|s| format!("seed {s}"))
            .collect::<Vec<_>>()
            .join(" | "),
        "---|".repeat(seeds.len())
    );
    let Some(first) = reports.first() else {
        return md;
    };
    for claim in &first.claims {
        let found: Vec<Option<&Claim>> = reports
            .iter()
            .map(|r| r.claims.iter().find(|c| c.id == claim.id))
            .collect();
        let cells: Vec<String> = found
            .iter()
            .map(|c| match c {
                Some(c) => format!("{:+.3} ± {:.3} {}", c.difference, c.se, c.verdict.text()),
                None => "—".into(),
            })
            .collect();
        let diffs: Vec<f64> = found.iter().flatten().map(|c| c.difference).collect();
        let (mean, se) = clustered(&diffs);
        let sd = se * (diffs.len() as f64).sqrt();
        let reproduced = found
            .iter()
            .flatten()
            .filter(|c| c.verdict == Verdict::Reproduced)
            .count();
        md.push_str(&format!(
            "| {} | {} | {mean:+.3} ± {sd:.3} | {reproduced} of {} |\n",
            claim.statement,
            cells.join(" | "),
            diffs.len()
        ));
    }
    let gaps: Vec<String> = reports
        .iter()
        .map(|r| format!("{:.0} %", 100.0 * r.gap_closed))
        .collect();
    md.push_str(&format!(
        "\nShare of the gap from the base to the taste in the prompt that Premier closes: {}.\n",
        gaps.join(", ")
    ));
    md
}
