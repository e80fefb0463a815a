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

/// The enclave's build (`--no-default-features`) leaves the development parts out: rcgen, which
/// only the software NSM and the development gateway use, is not in its dependency tree, and
/// the default build still has it.
#[test]
fn the_enclave_build_leaves_rcgen_out() {
    let tree = |extra: &[&str]| -> Vec<String> {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let o = Command::new(cargo)
            .args([
                "tree",
                "--locked",
                "--offline",
                "-p",
                "cidboot",
                "-e",
                "normal",
                "--prefix",
                "none",
            ])
            .args(extra)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect()
    };
    let full = tree(&[]);
    assert!(full.iter().any(|c| c == "rcgen"), "{full:?}");
    let enclave = tree(&["--no-default-features"]);
    for needed in [
        "cidboot",
        "cidboot-verify",
        "rustls",
        "aws-nitro-enclaves-nsm-api",
    ] {
        assert!(enclave.iter().any(|c| c == needed), "{needed}: {enclave:?}");
    }
    assert!(
        !enclave.iter().any(|c| c == "rcgen"),
        "the enclave build pulls in rcgen: {enclave:?}"
    );
}
