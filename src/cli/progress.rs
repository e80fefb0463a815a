//! Progress on a terminal. Bars are drawn on stderr only when stderr is a terminal and neither
//! `--quiet` nor `--json` was given; logs are written around them, never through them. What a
//! command prints on stdout (its result) is the same either way.

use std::io::{self, IsTerminal, Write};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressStyle};

use crate::apply::{ApplyReport, LayerReport, Observer, Unobserved};

static BARS: OnceLock<MultiProgress> = OnceLock::new();

/// Turns progress on for this process if `wanted` and stderr is a terminal.
pub fn enable(wanted: bool) {
    if wanted && io::stderr().is_terminal() {
        let _ = BARS.set(MultiProgress::new());
    }
}

fn bars() -> Option<&'static MultiProgress> {
    BARS.get()
}

/// Stderr for the logs: the bars are hidden while a line is written, then redrawn.
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match bars() {
            Some(m) => m.suspend(|| io::stderr().write(buf)),
            None => io::stderr().write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

/// A spinner naming what is under way (resolving, verifying), cleared when dropped.
pub struct Spinner(Option<ProgressBar>);

impl Spinner {
    pub fn new(what: impl Into<String>) -> Spinner {
        Spinner(bars().map(|m| {
            let b = m.add(ProgressBar::new_spinner());
            b.set_style(style("{spinner} {msg} [{elapsed}]"));
            b.set_message(what.into());
            b.enable_steady_tick(Duration::from_millis(120));
            b
        }))
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        if let Some(b) = &self.0 {
            b.finish_and_clear();
        }
    }
}

/// A bar over `total` bytes, or nothing when progress is off.
pub fn bytes_bar(total: u64) -> Option<ProgressBar> {
    bars().map(|m| {
        let b = m.add(ProgressBar::new(total));
        b.set_style(style(
            "{prefix} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} {msg}",
        ));
        b
    })
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// The observer for an image being applied: one bar a layer, the compressed bytes fetched
/// and verified, then what the layer applied.
pub fn layers() -> Arc<dyn Observer> {
    match bars() {
        Some(_) => Arc::new(Layers::default()),
        None => Arc::new(Unobserved),
    }
}

#[derive(Default)]
struct Layers {
    bars: Mutex<Vec<ProgressBar>>,
}

impl Layers {
    fn with(&self, layer: usize, f: impl FnOnce(&ProgressBar)) {
        if let Ok(bars) = self.bars.lock() {
            if let Some(b) = bars.get(layer) {
                f(b);
            }
        }
    }
}

impl Observer for Layers {
    fn begin(&self, layers: &[(String, u64)]) {
        let Ok(mut bars) = self.bars.lock() else {
            return;
        };
        bars.clear();
        for (i, (digest, size)) in layers.iter().enumerate() {
            if let Some(b) = bytes_bar(*size) {
                let short = digest.strip_prefix("sha256:").unwrap_or(digest);
                b.set_prefix(format!(
                    "layer {}/{} {}",
                    i + 1,
                    layers.len(),
                    short.get(..12).unwrap_or(short)
                ));
                bars.push(b);
            }
        }
    }
    fn fetched(&self, layer: usize, bytes: u64) {
        self.with(layer, |b| b.inc(bytes));
    }
    fn applied(&self, layer: usize, r: &LayerReport) {
        self.with(layer, |b| {
            b.finish_with_message(format!(
                "applied: {} entries, {} uncompressed",
                r.entries,
                HumanBytes(r.uncompressed_bytes)
            ))
        });
    }
    fn end(&self, _report: &ApplyReport) {
        // Each layer's last state stays on the terminal as a plain line, so the cursor is on
        // a fresh line for whatever is printed next.
        let (Ok(mut layers), Some(m)) = (self.bars.lock(), bars()) else {
            return;
        };
        for b in layers.drain(..) {
            let line = format!(
                "{} {}/{} {}",
                b.prefix(),
                HumanBytes(b.position()),
                HumanBytes(b.length().unwrap_or(0)),
                if b.is_finished() {
                    b.message()
                } else {
                    "stopped".to_string()
                }
            );
            b.finish_and_clear();
            m.remove(&b);
            m.suspend(|| errln!("{line}"));
        }
    }
}

/// The one line that sums up an applied image, with the numbers the JSON report gives.
pub fn summary(report: &ApplyReport, into: &std::path::Path) -> String {
    let n = report.layers.len();
    // A float-to-integer cast saturates, and the rate is never negative.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let rate = if report.seconds > 0.0 {
        (report.compressed_bytes as f64 / report.seconds) as u64
    } else {
        0
    };
    format!(
        "applied {n} layer{} into {} in {:.2}s: {} bytes fetched ({}/s), {} uncompressed, {} entries, {} bytes in files",
        if n == 1 { "" } else { "s" },
        into.display(),
        report.seconds,
        report.compressed_bytes,
        HumanBytes(rate),
        report.uncompressed_bytes,
        report.entries,
        report.file_bytes,
    )
}
