//! Attestation verify throughput: cidboot's verifier against evervault's
//! attestation-doc-validation, on the same real AWS document, in the same process.
//!
//! Both verifiers check the chain at the wall clock and the document's leaf lives three hours,
//! so scripts/bench.sh runs this under libfaketime at an instant inside that window.
//! Usage: verify-throughput DOC SECONDS_PER_VERIFIER (the two take turns in slices)

use std::time::{Duration, Instant};

use cidboot::verify::{self, At, Policy};

/// Verifies for `budget`; returns how many documents and the time they took.
fn run(budget: Duration, f: &mut impl FnMut() -> bool) -> (u64, Duration) {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget {
        for _ in 0..16 {
            std::hint::black_box(f());
        }
        n += 16;
    }
    (n, start.elapsed())
}

/// Documents per second of each verifier. They take turns in short slices, so that a change
/// in the machine's speed during the run (other work, the clock) falls on both alike.
fn race(secs: f64, mut a: impl FnMut() -> bool, mut b: impl FnMut() -> bool) -> (f64, f64) {
    const SLICES: u32 = 20;
    assert!(
        a(),
        "cidboot rejected the document: the clock is outside its validity"
    );
    assert!(
        b(),
        "attestation-doc-validation rejected the document: the clock is outside its validity"
    );
    let slice = Duration::from_secs_f64(secs / f64::from(SLICES));
    let (mut na, mut ta, mut nb, mut tb) = (0, Duration::ZERO, 0, Duration::ZERO);
    for _ in 0..SLICES {
        let (n, t) = run(slice, &mut a);
        na += n;
        ta += t;
        let (n, t) = run(slice, &mut b);
        nb += n;
        tb += t;
    }
    (na as f64 / ta.as_secs_f64(), nb as f64 / tb.as_secs_f64())
}

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("usage: verify-throughput DOC SECONDS");
    let secs: f64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(3.0);
    let doc = std::fs::read(&path).expect("read the document");
    let policy = Policy {
        root_der: verify::aws_root().expect("embedded root"),
        at: At::Now,
        pcrs: Default::default(),
        nonce: None,
        user_data: None,
        insecure_unsigned: false,
        require_locked: Default::default(),
        measurements: None,
        // Throughput of the signature and chain checks alone.
        allow_unpinned: true,
    };
    let (ours, theirs) = race(
        secs,
        || verify::verify(&doc, &policy).ok,
        || attestation_doc_validation::validate_and_parse_attestation_doc(&doc).is_ok(),
    );
    println!(
        "{}",
        serde_json::json!({
            "document": path,
            "cidboot_per_s": ours.round(),
            "attestation_doc_validation_per_s": theirs.round(),
            "ratio": (ours / theirs * 100.0).round() / 100.0,
        })
    );
}
