//! The crate boundaries hold: the verifier crate, which a verifier service embeds, and the
//! IPLD crate, where untrusted bytes become verified blocks, pull in no async runtime, no HTTP
//! stack and no system-call crate; the confined filesystem pulls in no async runtime and no
//! network.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use std::process::Command;

/// The crates in `package`'s normal dependency tree (`cargo tree`), and the tree as printed.
fn dependency_tree(package: &str) -> (Vec<String>, String) {
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

#[test]
fn the_verifier_crate_depends_on_no_runtime_http_or_system_calls() {
    let (crates, tree) = dependency_tree("cidboot-verify");
    let crates: Vec<&str> = crates.iter().map(String::as_str).collect();
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

#[test]
fn the_ipld_crate_depends_on_no_runtime_http_or_system_calls() {
    let (crates, tree) = dependency_tree("cidboot-ipld");
    let crates: Vec<&str> = crates.iter().map(String::as_str).collect();
    assert!(crates.contains(&"cidboot-ipld"), "{tree}");
    assert!(crates.contains(&"cid"), "{tree}");
    for banned in [
        "tokio",
        "hyper",
        "nix",
        "rustix",
        "mio",
        "rustls",
        "libc",
        "cidboot",
        "cidboot-verify",
    ] {
        assert!(
            !crates.contains(&banned),
            "the IPLD crate pulls in {banned}:\n{tree}"
        );
    }
}

#[test]
fn the_rootfs_crate_depends_on_no_runtime_or_network() {
    let (crates, tree) = dependency_tree("cidboot-rootfs");
    let crates: Vec<&str> = crates.iter().map(String::as_str).collect();
    assert!(crates.contains(&"cidboot-rootfs"), "{tree}");
    assert!(crates.contains(&"nix"), "{tree}");
    for banned in ["tokio", "hyper", "mio", "rustls", "cidboot", "cidboot-ipld"] {
        assert!(
            !crates.contains(&banned),
            "the rootfs crate pulls in {banned}:\n{tree}"
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
