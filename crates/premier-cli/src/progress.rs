//! Progress a person sees wherever stderr goes: an indicatif bar on a terminal, and off one
//! (a log file, CI, `> log 2>&1`) a plain line at the start, every [`PLAIN_EVERY`] and at the
//! end — indicatif hides its bars there, and a long run printed nothing for minutes.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// How often a plain progress line is printed off a terminal.
pub const PLAIN_EVERY: Duration = Duration::from_secs(15);

/// A bar on a terminal, plain lines elsewhere. Methods take `&self`, as indicatif's do.
pub struct Progress {
    bar: Option<ProgressBar>,
    plain: Mutex<Plain>,
}

/// The state of plain lines.
struct Plain {
    unit: String,
    len: u64,
    pos: u64,
    /// Where the rate and ETA count from (a resumed run starts past 0).
    start_pos: u64,
    message: String,
    started: Instant,
    printed: Option<Instant>,
}

impl Plain {
    fn line(&self) -> String {
        let elapsed = self.started.elapsed().as_secs_f64();
        let done = self.pos.saturating_sub(self.start_pos) as f64;
        let rate = if elapsed > 0.0 { done / elapsed } else { 0.0 };
        let left = self.len.saturating_sub(self.pos) as f64;
        let eta = if rate > 0.0 {
            format!(", ETA {}", clock(left / rate))
        } else {
            String::new()
        };
        let message = if self.message.is_empty() {
            String::new()
        } else {
            format!(" {}", self.message)
        };
        format!(
            "{}/{} {}{message} ({:.2} {}/s, {} elapsed{eta})",
            self.pos,
            self.len,
            self.unit,
            rate,
            self.unit,
            clock(elapsed)
        )
    }
}

/// Seconds as `h:mm:ss` or `m:ss`.
fn clock(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

impl Progress {
    /// Progress over `len` `unit`s (`len` may be set later).
    pub fn new(len: u64, unit: &str) -> Self {
        Self::with_terminal(len, unit, std::io::stderr().is_terminal())
    }

    /// As [`Self::new`], saying whether stderr is a terminal.
    pub fn with_terminal(len: u64, unit: &str, terminal: bool) -> Self {
        let bar = terminal.then(|| {
            ProgressBar::new(len).with_style(
                ProgressStyle::with_template(&format!(
                    "{{bar:40}} {{pos}}/{{len}} {unit} [{{elapsed_precise}}<{{eta_precise}}] {{msg}}"
                ))
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            )
        });
        Self {
            bar,
            plain: Mutex::new(Plain {
                unit: unit.to_string(),
                len,
                pos: 0,
                start_pos: 0,
                message: String::new(),
                started: Instant::now(),
                printed: None,
            }),
        }
    }

    fn plain(&self) -> std::sync::MutexGuard<'_, Plain> {
        self.plain.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The plain line now, when it is due (the first position, every [`PLAIN_EVERY`], the
    /// last); `None` on a terminal or when not due.
    fn due_line(&self, force: bool) -> Option<String> {
        if self.bar.is_some() {
            return None;
        }
        let mut p = self.plain();
        let due = force || p.pos >= p.len || p.printed.is_none_or(|t| t.elapsed() >= PLAIN_EVERY);
        due.then(|| {
            p.printed = Some(Instant::now());
            p.line()
        })
    }

    /// Sets the number of units the phase has.
    pub fn set_length(&self, len: u64) {
        if let Some(bar) = &self.bar {
            bar.set_length(len);
        }
        self.plain().len = len;
    }

    /// Counts rate and ETA from here on (a resumed run's first step).
    pub fn start_at(&self, pos: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(pos);
            bar.reset_eta();
        }
        let mut p = self.plain();
        (p.pos, p.start_pos, p.started) = (pos, pos, Instant::now());
    }

    /// Sets the units done (a line is printed off a terminal when one is due).
    pub fn set_position(&self, pos: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(pos);
        }
        self.plain().pos = pos;
        if let Some(line) = self.due_line(false) {
            eprintln!("{line}");
        }
    }

    /// Sets the text shown after the count (loss, it/s, …).
    pub fn set_message(&self, message: impl Into<String>) {
        let message = message.into();
        if let Some(bar) = &self.bar {
            bar.set_message(message.clone());
        }
        self.plain().message = message;
    }

    /// Runs `f` with the bar out of the way (what it prints stays above the bar).
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.bar {
            Some(bar) => bar.suspend(f),
            None => f(),
        }
    }

    /// Leaves the bar at its end; off a terminal, prints the last line unless it was just
    /// printed.
    pub fn finish(&self) {
        match &self.bar {
            Some(bar) => bar.finish(),
            None => self.last_line(),
        }
    }

    /// Removes the bar; off a terminal, prints the last line unless it was just printed.
    pub fn finish_and_clear(&self) {
        match &self.bar {
            Some(bar) => bar.finish_and_clear(),
            None => self.last_line(),
        }
    }

    fn last_line(&self) {
        let printed_last = {
            let p = self.plain();
            p.printed.is_some() && p.pos >= p.len
        };
        if !printed_last {
            if let Some(line) = self.due_line(true) {
                eprintln!("{line}");
            }
        }
    }

    /// The plain line as it stands (what off a terminal prints), for tests.
    pub fn plain_line(&self) -> String {
        self.plain().line()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_a_terminal_lines_carry_position_rate_and_eta() {
        let p = Progress::with_terminal(10, "steps", false);
        p.start_at(2);
        p.set_position(4);
        p.set_message("loss 0.5");
        let line = p.plain_line();
        assert!(line.starts_with("4/10 steps loss 0.5 ("), "{line}");
        assert!(
            line.contains("steps/s") && line.contains("elapsed"),
            "{line}"
        );
        // The first position printed a line; the next one within PLAIN_EVERY does not.
        assert!(p.plain().printed.is_some());
        assert_eq!(p.due_line(false), None);
        p.set_position(10);
        assert!(
            p.due_line(false).is_some(),
            "the last position is always printed"
        );
        assert_eq!(clock(3725.0), "1:02:05");
        assert_eq!(clock(65.4), "1:05");
    }
}
