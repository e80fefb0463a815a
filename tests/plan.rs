//! One plan for every boot: what the measured configuration says about fetching (`[tls]`,
//! `[fetch]`) is what `cidboot run` and `cidboot expect` do, as PID 1 does.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

mod common;

use common::*;

#[test]
fn the_configurations_extra_ca_and_fetch_section_are_used_without_flags() {
    let work = tempfile::tempdir().unwrap();
    let img = image("amd64", &[vec![("a", b"a".to_vec())]]);
    let (reference, gw) = publish(&img, work.path());
    let pem = std::fs::read_to_string(&gw.ca).unwrap();
    let cfg = work.path().join("cidboot.toml");
    std::fs::write(
        &cfg,
        format!("[tls]\nextra_ca = \"\"\"\n{pem}\"\"\"\n\n[fetch]\ntries = 1\nconnect_timeout_secs = 5\n"),
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();

    // Without the configuration, the gateway's private CA is unknown.
    let o = run(&["expect", &reference, "--gateway", &gw.url]);
    assert!(!o.ok, "{}", o.stdout);
    assert!(o.stderr.contains("--ca"), "{}", o.stderr);

    // With it, the measured [tls] extra_ca is trusted, as in the enclave.
    let o = run(&["expect", &reference, "--gateway", &gw.url, "--config", cfg]);
    assert!(o.ok, "{}", o.stderr);
    assert!(o.stdout.starts_with("PCR16 "), "{}", o.stdout);

    // A [fetch] the enclave would refuse is refused here too, by key.
    std::fs::write(work.path().join("bad.toml"), "[fetch]\ntries = 0\n").unwrap();
    let o = run(&[
        "expect",
        &reference,
        "--gateway",
        &gw.url,
        "--config",
        work.path().join("bad.toml").to_str().unwrap(),
    ]);
    assert!(!o.ok);
    assert!(
        o.stderr.contains("[fetch] tries must be 1..=10"),
        "{}",
        o.stderr
    );
}
