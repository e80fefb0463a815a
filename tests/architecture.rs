//! The crate boundaries hold: the verifier crate, which a verifier service embeds, pulls in no
//! async runtime, no HTTP stack and no system-call crate.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use std::process::Command;

#[test]
fn the_verifier_crate_depends_on_no_runtime_http_or_system_calls() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let o = Command::new(cargo)
        .args([
            "tree",
            "--locked",
            "--offline",
            "-p",
            "cidboot-verify",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let tree = String::from_utf8_lossy(&o.stdout);
    let crates: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(crates.contains(&"cidboot-verify"), "{tree}");
    assert!(crates.contains(&"rustls-webpki"), "{tree}");
    for banned in [
        "tokio",
        "hyper",
        "nix",
        "rustix",
        "mio",
        "rustls",
        "cidboot",
        "aws-nitro-enclaves-nsm-api",
    ] {
        assert!(
            !crates.contains(&banned),
            "the verifier crate pulls in {banned}:\n{tree}"
        );
    }
}
