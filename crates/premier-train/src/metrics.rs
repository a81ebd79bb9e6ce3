//! Training metrics: one JSON object per step appended to a JSONL file (flushed every line, so a
//! crashed run keeps its history), and a loss-curve PNG.

use std::io::Write;
use std::path::{Path, PathBuf};

use image::RgbImage;
use premier_io::write_via_temp;
use serde::{Deserialize, Serialize};

use crate::stage1::StepReport;

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MetricRecord {
    /// The step's losses and optimizer numbers.
    #[serde(flatten)]
    pub report: StepReport,
    /// Steps per second over this step.
    #[serde(deserialize_with = "nan_if_null")]
    pub it_per_s: f64,
    /// Seconds since the run (or its resume) started.
    #[serde(deserialize_with = "nan_if_null")]
    pub elapsed_s: f64,
}

/// Errors of writing metrics or plots.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct MetricsError {
    /// The file or folder.
    pub path: PathBuf,
    /// What went wrong.
    pub reason: String,
}

/// Appends records to a JSONL file.
pub struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsLog {
    /// Opens `path` for appending (a resumed run continues the same file).
    pub fn append(path: &Path) -> Result<Self, MetricsError> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| err(parent, e))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| err(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Appends `record` as one line and flushes it.
    pub fn write(&mut self, record: &MetricRecord) -> Result<(), MetricsError> {
        let line = serde_json::to_string(record).map_err(|e| err(&self.path, e))?;
        writeln!(self.file, "{line}").map_err(|e| err(&self.path, e))?;
        self.file.flush().map_err(|e| err(&self.path, e))
    }
}

fn err(path: &Path, e: impl std::fmt::Display) -> MetricsError {
    MetricsError {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// A number JSON wrote as `null` (serde_json's spelling of NaN and ±∞) reads back as NaN, so a
/// diverged step does not make its log unreadable.
pub(crate) fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// Reads a metrics file; for steps written twice (a run resumed from an older checkpoint) the
/// last record wins. A last line cut short (the process stopped while writing it) is skipped.
pub fn read_metrics(path: &Path) -> Result<Vec<MetricRecord>, MetricsError> {
    let text = std::fs::read_to_string(path).map_err(|e| err(path, e))?;
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .collect();
    let mut by_step = std::collections::BTreeMap::new();
    for (k, &(i, line)) in lines.iter().enumerate() {
        match serde_json::from_str::<MetricRecord>(line) {
            Ok(record) => {
                by_step.insert(record.report.step, record);
            }
            Err(e) if k + 1 == lines.len() && !text.ends_with('\n') => {
                tracing::warn!("{}: skipping the cut-off last line: {e}", path.display());
            }
            Err(e) => return Err(err(path, format!("line {}: {e}", i + 1))),
        }
    }
    Ok(by_step.into_values().collect())
}

/// Exponential moving average with weight `alpha` on the new value.
pub fn smooth(values: &[f64], alpha: f64) -> Vec<f64> {
    let mut out = Vec::with_capacity(values.len());
    let mut acc = None;
    for &v in values {
        let next = match acc {
            None => v,
            Some(a) => a + alpha * (v - a),
        };
        acc = Some(next);
        out.push(next);
    }
    out
}

/// One curve of a chart: its legend, colour and (step, value) points.
struct Curve {
    label: &'static str,
    colour: (u8, u8, u8),
    points: Vec<(f64, f64)>,
}

/// Registers DejaVu Sans (embedded) as plotters' `sans-serif`, once per process.
fn register_font() -> Result<(), String> {
    static REGISTERED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            plotters::style::register_font(
                "sans-serif",
                plotters::style::FontStyle::Normal,
                dejavu::sans::regular(),
            )
            .map_err(|_| "the embedded DejaVu Sans font could not be read".to_string())
        })
        .clone()
}

/// A line chart of `curves` over the steps, `width`×`height`: axes with step and value ticks,
/// a legend; the value axis is logarithmic when every value is positive and they span two
/// decades or more (a loss that falls fast stays readable).
fn chart(curves: &[Curve], y_desc: &str, width: u32, height: u32) -> Result<RgbImage, String> {
    use plotters::prelude::*;
    register_font()?;
    let finite = || {
        curves
            .iter()
            .flat_map(|c| c.points.iter())
            .filter(|(_, y)| y.is_finite())
    };
    let (x_min, x_max) =
        finite().fold((f64::MAX, f64::MIN), |(a, b), &(x, _)| (a.min(x), b.max(x)));
    let (y_min, y_max) =
        finite().fold((f64::MAX, f64::MIN), |(a, b), &(_, y)| (a.min(y), b.max(y)));
    if x_min > x_max {
        return Err("no finite values to draw".into());
    }
    let log = y_min > 0.0 && y_max / y_min >= 100.0;
    // A log axis is drawn as log10 of the values, its ticks labelled with the values.
    let y_of = |v: f64| if log { v.log10() } else { v };
    let (lo, hi) = (y_of(y_min), y_of(y_max));
    let pad = ((hi - lo) * 0.05).max(1e-9);
    let (lo, hi) = (if log { lo - pad } else { lo.min(0.0) - pad }, hi + pad);
    let x_range = x_min..x_max.max(x_min + 1.0);
    let mut buffer = vec![255u8; width as usize * height as usize * 3];
    {
        let fail = |e: &dyn std::fmt::Display| e.to_string();
        let root = BitMapBackend::with_buffer(&mut buffer, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| fail(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d(x_range, lo..hi)
            .map_err(|e| fail(&e))?;
        let y_label = |v: &f64| {
            let value = if log { 10f64.powf(*v) } else { *v };
            format!("{value:.3}")
        };
        chart
            .configure_mesh()
            .x_desc("step")
            // Whole steps: no more ticks than steps.
            .x_labels(((x_max - x_min) as usize + 1).clamp(2, 10))
            .y_desc(if log {
                format!("{y_desc} (log scale)")
            } else {
                y_desc.to_string()
            })
            .y_label_formatter(&y_label)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(|e| fail(&e))?;
        for curve in curves {
            let (r, g, b) = curve.colour;
            let colour = RGBColor(r, g, b);
            let points = curve
                .points
                .iter()
                .filter(|(_, y)| y.is_finite() && (!log || *y > 0.0))
                .map(|&(x, y)| (x, y_of(y)));
            chart
                .draw_series(LineSeries::new(points, colour.stroke_width(2)))
                .map_err(|e| fail(&e))?
                .label(curve.label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| fail(&e))?;
        root.present().map_err(|e| fail(&e))?;
    }
    RgbImage::from_raw(width, height, buffer).ok_or_else(|| "chart buffer of the wrong size".into())
}

/// Colours of the loss curve's lines.
pub const TOTAL_COLOUR: [u8; 3] = [20, 60, 160];
/// See [`TOTAL_COLOUR`].
pub const FLOW_COLOUR: [u8; 3] = [230, 120, 20];
/// See [`TOTAL_COLOUR`].
pub const DISPERSION_COLOUR: [u8; 3] = [40, 150, 60];

/// The loss curve of a run, written atomically as a PNG (800 × 450): the total loss, the flow
/// loss and (when the run has one) the dispersion terms, each smoothed, over the steps, with
/// axes, ticks and a legend.
pub fn write_loss_curve(records: &[MetricRecord], path: &Path) -> Result<(), MetricsError> {
    let alpha = (10.0 / records.len().max(10) as f64).min(1.0);
    let steps: Vec<f64> = records.iter().map(|r| r.report.step as f64).collect();
    let curve = |label, [r, g, b]: [u8; 3], value: fn(&MetricRecord) -> f64| Curve {
        label,
        colour: (r, g, b),
        points: steps
            .iter()
            .copied()
            .zip(smooth(
                &records.iter().map(value).collect::<Vec<_>>(),
                alpha,
            ))
            .collect(),
    };
    // The total last, on top (without dispersion it is the flow loss).
    let mut curves = vec![curve("flow matching", FLOW_COLOUR, |r| r.report.flow)];
    let dispersion = |r: &MetricRecord| r.report.dispersion_shared + r.report.dispersion_distinct;
    if records.iter().any(|r| dispersion(r) != 0.0) {
        curves.push(curve(
            "dispersion (shared + distinct)",
            DISPERSION_COLOUR,
            |r| r.report.dispersion_shared + r.report.dispersion_distinct,
        ));
    }
    curves.push(curve("total", TOTAL_COLOUR, |r| r.report.loss));
    let img = chart(&curves, "loss", 800, 450).map_err(|e| err(path, e))?;
    write_via_temp(path, |tmp| {
        img.save_with_format(tmp, image::ImageFormat::Png)
            .map_err(|e| e.to_string())
    })
    .map_err(|e| err(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(step: u64, loss: f64) -> MetricRecord {
        MetricRecord {
            report: StepReport {
                step,
                loss,
                flow: loss * 0.9,
                dispersion_shared: 0.1,
                dispersion_distinct: 0.2,
                d: 1e-6,
                grad_norm: 0.3,
                delta_to_y: 0.05,
            },
            it_per_s: 2.0,
            elapsed_s: step as f64,
        }
    }

    #[test]
    fn jsonl_round_trip_keeps_the_last_record_of_a_step() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m/metrics.jsonl");
        let mut log = MetricsLog::append(&path).unwrap();
        for s in 1..=3 {
            log.write(&record(s, 1.0 / s as f64)).unwrap();
        }
        drop(log);
        // A resume from step 2 rewrites step 3.
        let mut log = MetricsLog::append(&path).unwrap();
        log.write(&record(3, 7.0)).unwrap();
        let back = read_metrics(&path).unwrap();
        assert_eq!(back.len(), 3);
        assert_eq!(back[2].report.loss, 7.0);
        assert_eq!(back[0], record(1, 1.0));
        let line = std::fs::read_to_string(&path).unwrap();
        assert!(line.contains("\"grad_norm\":0.3") && line.contains("\"it_per_s\":2.0"));
    }

    #[test]
    fn diverged_steps_and_a_cut_off_last_line_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let mut log = MetricsLog::append(&path).unwrap();
        log.write(&record(1, f64::NAN)).unwrap();
        log.write(&record(2, f64::INFINITY)).unwrap();
        drop(log);
        let mut text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"loss\":null"), "{text}");
        text.push_str("{\"step\":3,\"loss\":0.");
        std::fs::write(&path, &text).unwrap();
        let back = read_metrics(&path).unwrap();
        assert_eq!(back.len(), 2);
        assert!(back[0].report.loss.is_nan() && back[1].report.loss.is_nan());
        // A bad line before the end is an error naming it.
        std::fs::write(&path, "{\"step\":1,\n{}\n").unwrap();
        let e = read_metrics(&path).unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn loss_curve_is_drawn() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loss.png");
        let records: Vec<_> = (1..=50).map(|s| record(s, 1.0 / s as f64)).collect();
        write_loss_curve(&records, &path).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (800, 450));
        let count = |c: [u8; 3]| img.pixels().filter(|p| p.0 == c).count();
        for (what, colour) in [
            ("total", TOTAL_COLOUR),
            ("flow", FLOW_COLOUR),
            ("dispersion", DISPERSION_COLOUR),
        ] {
            assert!(
                count(colour) > 100,
                "{what}: {} curve pixels",
                count(colour)
            );
        }
        // Text (ticks, axis names, legend) is drawn: dark grey pixels of antialiased glyphs,
        // left of the plot where the value ticks stand.
        let text = (0..img.height())
            .flat_map(|y| (0..60).map(move |x| (x, y)))
            .filter(|&(x, y)| {
                let p = img.get_pixel(x, y).0;
                p[0] < 128 && p[0] == p[1] && p[1] == p[2]
            })
            .count();
        assert!(text > 200, "{text} dark pixels of tick labels");
        // A loss falling over four decades is drawn on a log axis: the curve still spans the
        // plot's height instead of lying flat on the axis after the first steps.
        let falling: Vec<_> = (1..=100).map(|s| record(s, 1.0 / (s * s) as f64)).collect();
        write_loss_curve(&falling, &path).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        let rows: Vec<u32> = img
            .enumerate_pixels()
            .filter(|(x, _, p)| *x > 400 && p.0 == TOTAL_COLOUR)
            .map(|(_, y, _)| y)
            .collect();
        let (top, bottom) = (rows.iter().min().unwrap(), rows.iter().max().unwrap());
        assert!(
            bottom - top > 50,
            "the right half spans rows {top}..{bottom}"
        );
    }

    #[test]
    fn smoothing_follows_the_values() {
        assert_eq!(smooth(&[1.0, 3.0], 0.5), vec![1.0, 2.0]);
    }
}
