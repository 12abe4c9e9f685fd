//! Transfer progress: a bar on a terminal, plain lines in a CI log.
//!
//! A CI log must not fill with carriage-return redraws, and a person at a
//! terminal wants a bar: the choice is made once, by whether stderr is a
//! terminal. In plain mode a line is logged at every tenth of the transfer
//! and at most every [`PLAIN_EVERY`] otherwise, so a slow upload still
//! shows it is alive.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// Longest silence of a plain-mode transfer.
pub const PLAIN_EVERY: Duration = Duration::from_secs(15);

/// A shared handle to one transfer's progress (cheap to clone).
#[derive(Clone)]
pub struct Progress(Arc<Inner>);

struct Inner {
    label: String,
    total: u64,
    bar: Option<ProgressBar>,
    plain: Mutex<Plain>,
}

struct Plain {
    done: u64,
    next_tenth: u64,
    last_line: Instant,
}

impl Progress {
    /// A transfer of `total` bytes called `label` (e.g. `"s3 put host/x.tar.gz"`),
    /// drawn as a bar when stderr is a terminal.
    pub fn new(label: impl Into<String>, total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            if let Ok(style) = ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        });
        Self::build(label.into(), total, bar)
    }

    /// A transfer that is never drawn as a bar (tests, nested transfers).
    pub fn plain(label: impl Into<String>, total: u64) -> Self {
        Self::build(label.into(), total, None)
    }

    fn build(label: String, total: u64, bar: Option<ProgressBar>) -> Self {
        if let Some(b) = &bar {
            b.set_message(label.clone());
        }
        Progress(Arc::new(Inner {
            label,
            total,
            bar,
            plain: Mutex::new(Plain {
                done: 0,
                next_tenth: 1,
                last_line: Instant::now(),
            }),
        }))
    }

    /// `n` more bytes went through.
    pub fn advance(&self, n: u64) {
        if let Some(b) = &self.0.bar {
            b.inc(n);
        }
        let Ok(mut p) = self.0.plain.lock() else {
            return;
        };
        p.done = p.done.saturating_add(n);
        if self.0.bar.is_some() {
            return;
        }
        let tenth_reached =
            self.0.total > 0 && p.done.saturating_mul(10) >= p.next_tenth * self.0.total;
        if tenth_reached || p.last_line.elapsed() >= PLAIN_EVERY {
            while self.0.total > 0 && p.done.saturating_mul(10) >= p.next_tenth * self.0.total {
                p.next_tenth += 1;
            }
            p.last_line = Instant::now();
            tracing::info!(
                target: "ferry::progress",
                done = p.done,
                total = self.0.total,
                "{}: {} of {} ({}%)",
                self.0.label,
                human(p.done),
                human(self.0.total),
                percent(p.done, self.0.total)
            );
        }
    }

    /// A retry starts the transfer of a piece again: take `n` bytes back.
    pub fn rewind(&self, n: u64) {
        if let Some(b) = &self.0.bar {
            b.set_position(b.position().saturating_sub(n));
        }
        if let Ok(mut p) = self.0.plain.lock() {
            p.done = p.done.saturating_sub(n);
        }
    }

    /// Bytes counted so far.
    pub fn done(&self) -> u64 {
        self.0.plain.lock().map(|p| p.done).unwrap_or(0)
    }

    /// The transfer ended (either way): clears the bar.
    pub fn finish(&self) {
        if let Some(b) = &self.0.bar {
            b.finish_and_clear();
        }
    }
}

fn percent(done: u64, total: u64) -> u64 {
    if total == 0 {
        100
    } else {
        (done.min(total) as u128 * 100 / total as u128) as u64
    }
}

/// Bytes for people: `512 B`, `3.4 MiB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_rewinds() {
        let p = Progress::plain("t", 100);
        p.advance(30);
        p.clone().advance(30);
        assert_eq!(p.done(), 60);
        p.rewind(20);
        assert_eq!(p.done(), 40);
        p.finish();
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(3 * 1024 * 1024 + 400 * 1024), "3.4 MiB");
        assert_eq!(percent(5, 0), 100);
        assert_eq!(percent(50, 200), 25);
    }
}
