//! The crate boundaries hold: the verifier crate, which a verifier service embeds, the IPLD
//! crate, where untrusted bytes become verified blocks, and the CMS crate, which opens KMS's
//! answers, pull in no async runtime, no HTTP stack and no system-call crate; the confined
//! filesystem pulls in no async runtime and no network.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use std::process::Command;

/// The crates in `package`'s normal dependency tree (`cargo tree`, with `extra` arguments),
/// and the tree as printed.
fn dependency_tree(package: &str, extra: &[&str]) -> (Vec<String>, String) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let o = Command::new(cargo)
        .args([
            "tree",
            "--locked",
            "--offline",
            "-p",
            package,
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
    let tree = String::from_utf8_lossy(&o.stdout).into_owned();
    let crates = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    (crates, tree)
}

/// Asserts that `package`'s tree has every crate in `needed` and none in `banned`.
fn assert_tree(package: &str, extra: &[&str], needed: &[&str], banned: &[&str]) {
    let (crates, tree) = dependency_tree(package, extra);
    for n in needed {
        assert!(
            crates.iter().any(|c| c == n),
            "{package} lacks {n}:\n{tree}"
        );
    }
    for b in banned {
        assert!(
            !crates.iter().any(|c| c == b),
            "{package} {extra:?} pulls in {b}:\n{tree}"
        );
    }
}

/// What a crate that only checks bytes must not pull in: an async runtime, HTTP, TLS, or
/// system-call wrappers.
const NO_RUNTIME: &[&str] = &["tokio", "hyper", "nix", "rustix", "mio", "rustls"];

#[test]
fn the_verifier_crate_depends_on_no_runtime_http_or_system_calls() {
    assert_tree(
        "cidboot-verify",
        &[],
        &["cidboot-verify", "rustls-webpki"],
        &[NO_RUNTIME, &["cidboot", "aws-nitro-enclaves-nsm-api"]].concat(),
    );
}

#[test]
fn the_ipld_crate_depends_on_no_runtime_http_or_system_calls() {
    assert_tree(
        "cidboot-ipld",
        &[],
        &["cidboot-ipld", "cid"],
        &[NO_RUNTIME, &["libc", "cidboot", "cidboot-verify"]].concat(),
    );
}

/// The crate that opens KMS's envelopes is bytes and cryptography only: AWS-LC for RSA and AES
/// (never the `rsa` crate, whose decryption is not constant time), nothing that does I/O.
#[test]
fn the_cms_crate_depends_on_no_runtime_http_or_system_calls() {
    assert_tree(
        "cidboot-cms",
        &[],
        &["cidboot-cms", "aws-lc-rs"],
        &[NO_RUNTIME, &["libc", "cidboot", "cidboot-verify", "rsa"]].concat(),
    );
}

#[test]
fn the_rootfs_crate_depends_on_no_runtime_or_network() {
    assert_tree(
        "cidboot-rootfs",
        &[],
        &["cidboot-rootfs", "nix"],
        &["tokio", "hyper", "mio", "rustls", "cidboot", "cidboot-ipld"],
    );
}

/// The enclave's build (`--no-default-features`) leaves the development parts out: rcgen, which
/// only the software NSM and the development gateway use, is not in its dependency tree, and
/// the default build still has it.
#[test]
fn the_enclave_build_leaves_rcgen_out() {
    assert_tree("cidboot", &[], &["rcgen"], &[]);
    assert_tree(
        "cidboot",
        &["--no-default-features"],
        &[
            "cidboot",
            "cidboot-verify",
            "rustls",
            "aws-nitro-enclaves-nsm-api",
        ],
        &["rcgen"],
    );
}
