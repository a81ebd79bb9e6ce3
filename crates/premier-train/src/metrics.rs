//! Training metrics: one JSON object per step appended to a JSONL file (flushed every line, so a
//! crashed run keeps its history), and a loss-curve PNG.

use std::io::Write;
use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};
use premier_mmdit::load::write_via_temp;
use serde::{Deserialize, Serialize};

use crate::stage1::StepReport;

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MetricRecord {
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
    pub path: PathBuf,
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

/// Draws the curves `series` (each a list of y values at steps 0..n, with a colour) on one
/// chart, `width`×`height` with a margin, y from 0 to the largest value. Light grid lines mark
/// quarters of each axis.
pub fn plot_curves(series: &[(Vec<f64>, [u8; 3])], width: u32, height: u32) -> RgbImage {
    let mut img = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    let margin = 8u32;
    let (w, h) = (width - 2 * margin, height - 2 * margin);
    for q in 0..=4 {
        let y = margin + h * q / 4;
        let x = margin + w * q / 4;
        for i in 0..w {
            img.put_pixel(margin + i, y, Rgb([225, 225, 225]));
        }
        for i in 0..h {
            img.put_pixel(x, margin + i, Rgb([225, 225, 225]));
        }
    }
    let top = series
        .iter()
        .flat_map(|(v, _)| v.iter().copied())
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max)
        .max(1e-12);
    for (values, colour) in series {
        let n = values.len();
        if n == 0 {
            continue;
        }
        let point = |i: usize| {
            let x = margin as f64 + w as f64 * i as f64 / (n.max(2) - 1) as f64;
            let y = margin as f64 + h as f64 * (1.0 - (values[i] / top).clamp(0.0, 1.0));
            (x, y)
        };
        for i in 0..n {
            let (x1, y1) = point(i);
            let (x0, y0) = if i == 0 { (x1, y1) } else { point(i - 1) };
            let steps = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as usize).max(1);
            for s in 0..=steps {
                let f = s as f64 / steps as f64;
                let (x, y) = (x0 + (x1 - x0) * f, y0 + (y1 - y0) * f);
                if x >= 0.0 && y >= 0.0 && (x as u32) < width && (y as u32) < height {
                    img.put_pixel(x as u32, y as u32, Rgb(*colour));
                }
            }
        }
    }
    img
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

/// The loss curve of a run: total loss (smoothed, dark blue) and flow loss (smoothed, orange),
/// written atomically as a PNG.
pub fn write_loss_curve(records: &[MetricRecord], path: &Path) -> Result<(), MetricsError> {
    let loss: Vec<f64> = records.iter().map(|r| r.report.loss).collect();
    let flow: Vec<f64> = records.iter().map(|r| r.report.flow).collect();
    let alpha = (10.0 / records.len().max(10) as f64).min(1.0);
    let img = plot_curves(
        &[
            (smooth(&flow, alpha), [230, 120, 20]),
            (smooth(&loss, alpha), [20, 60, 160]),
        ],
        640,
        360,
    );
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
        assert_eq!(img.dimensions(), (640, 360));
        let blue = img.pixels().filter(|p| p.0 == [20, 60, 160]).count();
        assert!(blue > 100, "{blue} curve pixels");
    }

    #[test]
    fn smoothing_follows_the_values() {
        assert_eq!(smooth(&[1.0, 3.0], 0.5), vec![1.0, 2.0]);
    }
}
