//! Per-gateway figures for the run: successes, errors, time to first byte and throughput,
//! a liveness probe, and quarantine. The parallel fetcher gives ranges to the best gateways
//! first; a gateway that once served a block that failed verification is never used again in
//! this run (it is hostile or broken, and either way cannot be trusted to be honest next time).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::FetchError;
use crate::reference::BlockError;

/// Weight of the newest sample in the moving averages.
const EWMA_WEIGHT: f64 = 0.3;

/// How long a probe may take before the gateway counts as down.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a failed probe keeps a gateway out of parallel work before it is probed again.
pub const PROBE_RETRY: Duration = Duration::from_secs(30);

/// The identity CID of empty content: every trustless gateway answers it from the CID alone.
/// cidboot refuses identity CIDs as content (they prove nothing); this one is only a ping.
pub const PROBE_CID: &str = "bafkqaaa";

/// What one gateway has done so far in this run.
#[derive(Debug, Default, Clone, Copy)]
pub struct Figures {
    /// Transfers completed.
    pub successes: u64,
    /// Transfers failed or abandoned for being slow.
    pub errors: u64,
    /// Time to first byte, moving average.
    pub ttfb: Option<Duration>,
    /// Bytes per second of completed transfers, moving average.
    pub rate: Option<f64>,
}

/// What the probe (or real traffic) says of a gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Not probed yet and not heard from.
    Unknown,
    /// Answered a probe or a real request.
    Alive,
    /// The probe failed at this instant.
    Down(Instant),
}

/// One gateway's figures, liveness and quarantine, shared by every fetch of the run.
pub struct Score {
    figures: Mutex<Figures>,
    live: Mutex<Liveness>,
    quarantined: AtomicBool,
}

impl Default for Score {
    fn default() -> Self {
        Score {
            figures: Mutex::new(Figures::default()),
            live: Mutex::new(Liveness::Unknown),
            quarantined: AtomicBool::new(false),
        }
    }
}

/// A moving average: each new figure weighs `EWMA_WEIGHT`.
pub(super) fn ewma(old: Option<f64>, new: f64) -> f64 {
    match old {
        Some(o) => o * (1.0 - EWMA_WEIGHT) + new * EWMA_WEIGHT,
        None => new,
    }
}

impl Score {
    /// A snapshot of the figures.
    pub fn figures(&self) -> Figures {
        self.figures.lock().map(|f| *f).unwrap_or_default()
    }

    /// A completed transfer of `bytes` that took `elapsed`, its headers after `ttfb`.
    pub fn success(&self, bytes: u64, ttfb: Duration, elapsed: Duration) {
        if let Ok(mut f) = self.figures.lock() {
            f.successes += 1;
            f.ttfb = Some(Duration::from_secs_f64(ewma(
                f.ttfb.map(|d| d.as_secs_f64()),
                ttfb.as_secs_f64(),
            )));
            // Small transfers say more about latency than about throughput.
            if bytes >= 256 * 1024 {
                let rate = bytes as f64 / elapsed.as_secs_f64().max(1e-3);
                f.rate = Some(ewma(f.rate, rate));
            }
        }
    }

    /// A failed transfer.
    pub fn error(&self) {
        if let Ok(mut f) = self.figures.lock() {
            f.errors += 1;
        }
    }

    /// A transfer abandoned for being slow: counts as an error and drags the rate down.
    pub fn slow(&self, bytes: u64, elapsed: Duration) {
        if let Ok(mut f) = self.figures.lock() {
            f.errors += 1;
            let rate = bytes as f64 / elapsed.as_secs_f64().max(1e-3);
            f.rate = Some(ewma(f.rate, rate));
        }
    }

    /// Helia's reliability figure, successes / (attempts + 3 × errors), with one success of
    /// credit so that an untried gateway is not ranked last.
    pub fn reliability(&self) -> f64 {
        let f = self.figures();
        let attempts = f.successes + f.errors;
        (f.successes + 1) as f64 / (attempts + 1 + 3 * f.errors) as f64
    }

    /// Marks the gateway hostile for the rest of the run; true the first time.
    pub fn quarantine(&self, label: &str, why: &FetchError) -> bool {
        let first = !self.quarantined.swap(true, Ordering::Relaxed);
        if first {
            warn!(gateway = %label, error = %why, "hostile gateway: it served a block that fails verification; quarantined for the rest of this run");
        }
        first
    }

    /// Whether the gateway served a block that failed verification in this run.
    pub fn is_quarantined(&self) -> bool {
        self.quarantined.load(Ordering::Relaxed)
    }

    /// What is known of the gateway's liveness.
    pub fn liveness(&self) -> Liveness {
        self.live.lock().map(|l| *l).unwrap_or(Liveness::Unknown)
    }

    /// Whether the gateway must be probed before large requests go to it.
    pub fn needs_probe(&self) -> bool {
        match self.liveness() {
            Liveness::Unknown => true,
            Liveness::Alive => false,
            Liveness::Down(at) => at.elapsed() >= PROBE_RETRY,
        }
    }

    /// The gateway answered a real request: it is alive without a probe.
    pub fn mark_alive(&self) {
        if let Ok(mut l) = self.live.lock() {
            *l = Liveness::Alive;
        }
    }

    /// Records a probe's outcome; an answered probe's time seeds the time to first byte.
    pub fn set_live(&self, label: &str, alive: bool, took: Duration, why: Option<&FetchError>) {
        if let Ok(mut l) = self.live.lock() {
            *l = if alive {
                Liveness::Alive
            } else {
                Liveness::Down(Instant::now())
            };
        }
        if alive {
            if let Ok(mut f) = self.figures.lock() {
                f.ttfb.get_or_insert(took);
            }
            info!(gateway = %label, ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX), "gateway probe answered");
        } else {
            warn!(gateway = %label, error = %why.map(|e| e.to_string()).unwrap_or_default(), "gateway probe failed: not used for parallel ranges for now");
        }
    }
}

/// Whether an error proves that the gateway served bytes that are not what it was asked for:
/// a block that does not hash to its CID, or a block other than the one the DAG names.
pub fn is_hostile(e: &FetchError) -> bool {
    matches!(
        e,
        FetchError::Block(BlockError::HashMismatch { .. })
            | FetchError::UnexpectedBlock { .. }
            | FetchError::DuplicateBlock(_)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reliability_ranks_errors_down() {
        let good = Score::default();
        let bad = Score::default();
        for _ in 0..3 {
            good.success(
                1 << 20,
                Duration::from_millis(5),
                Duration::from_millis(100),
            );
            bad.error();
        }
        assert!(good.reliability() > 0.9);
        assert!(bad.reliability() < 0.2);
        assert!(good.figures().rate.unwrap() > 5e6);
    }
}
