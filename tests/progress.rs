//! Progress and summaries: bars on a terminal (a real pseudo-terminal, from `script`), none
//! when stderr is not one or with `--quiet`, and one summary line whose numbers are the JSON
//! report's.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// Runs cidboot with stderr on a pseudo-terminal and stdout into a file; returns what the
/// terminal showed and what stdout got.
fn on_terminal(args: &[&str], work: &Path) -> (bool, String, String) {
    let out = work.join(format!("stdout-{}", fastrand::u32(..)));
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let mut line = format!("CIDBOOT_LOG=info {}", quote(env!("CARGO_BIN_EXE_cidboot")));
    for a in args {
        line.push(' ');
        line.push_str(&quote(a));
    }
    line.push_str(&format!(" >{}", quote(out.to_str().unwrap())));
    // `script` (util-linux) gives the command a real terminal; -e passes on its exit status.
    let o = Command::new("script")
        .args(["-qfec", &line, "/dev/null"])
        .output()
        .expect("script (util-linux)");
    let stdout = std::fs::read_to_string(&out).unwrap_or_default();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        stdout,
    )
}

struct Published {
    reference: String,
    gw: Gateway,
    work: tempfile::TempDir,
}

/// Two layers of incompressible content, so each has a bar with something to count.
fn published() -> Published {
    let work = tempfile::tempdir().unwrap();
    let img = image(
        "amd64",
        &[
            vec![("a/one", noise(300_000, 1)), ("a/two", noise(5_000, 2))],
            vec![("b/three", noise(200_000, 3))],
        ],
    );
    let (reference, gw) = publish(&img, work.path());
    Published {
        reference,
        gw,
        work,
    }
}

impl Published {
    fn args<'a>(&'a self, cmd: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
        let mut v = vec![
            cmd,
            &self.reference,
            "--gateway",
            &self.gw.url,
            "--ca",
            self.gw.ca.to_str().unwrap(),
        ];
        v.extend_from_slice(extra);
        v
    }
    fn dir(&self, name: &str) -> String {
        self.work.path().join(name).to_str().unwrap().to_string()
    }
}

#[test]
fn unpack_on_a_terminal_draws_a_bar_per_layer_and_sums_up_with_the_reports_numbers() {
    let p = published();
    let root = p.dir("root");
    let (ok, terminal, stdout) =
        on_terminal(&p.args("unpack", &["--rootfs", &root]), p.work.path());
    assert!(ok, "{terminal}");
    for want in ["layer 1/2", "layer 2/2", "applied: "] {
        assert!(
            terminal.contains(want),
            "no {want:?} on the terminal:\n{terminal}"
        );
    }
    // Logs are written between the bars, whole.
    assert!(terminal.contains("layer applied"), "{terminal}");

    // The same image unpacked with --json: the summary's numbers are the report's.
    let json_root = p.dir("json-root");
    let o = run(&p.args("unpack", &["--rootfs", &json_root, "--json"]));
    assert!(o.ok, "{}", o.stderr);
    let whole = o.json();
    let r = &whole["apply"];
    let layers = r["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    let sum = |k: &str| layers.iter().map(|l| l[k].as_u64().unwrap()).sum::<u64>();
    for k in [
        "compressed_bytes",
        "uncompressed_bytes",
        "entries",
        "file_bytes",
    ] {
        assert_eq!(
            r[k].as_u64().unwrap(),
            sum(k),
            "{k} is not the layers' sum: {r}"
        );
    }
    // Content bytes are what the files hold; the tar stream is more (headers, padding).
    assert_eq!(r["file_bytes"], 505_000);
    assert!(r["uncompressed_bytes"].as_u64().unwrap() > 505_000);
    let summary = stdout.trim();
    assert_eq!(summary.lines().count(), 1, "{stdout}");
    for part in [
        format!("applied 2 layers into {root} in "),
        format!("{} bytes fetched", r["compressed_bytes"]),
        format!("{} uncompressed", r["uncompressed_bytes"]),
        format!("{} entries", r["entries"]),
        format!("{} bytes in files", r["file_bytes"]),
    ] {
        assert!(summary.contains(&part), "no {part:?} in {summary:?}");
    }
}

#[test]
fn without_a_terminal_or_with_quiet_there_are_no_bars() {
    let p = published();
    // Not a terminal: logs, no bars, no escape sequences.
    let o = run(&p.args("unpack", &["--rootfs", &p.dir("piped")]));
    assert!(o.ok, "{}", o.stderr);
    assert!(!o.stderr.contains("layer 1/2"), "{}", o.stderr);
    assert!(!o.stderr.contains('\x1b'), "{:?}", o.stderr);
    assert!(o.stdout.starts_with("applied 2 layers"), "{}", o.stdout);

    // --quiet on a terminal (before or after the command): no bars, no informational logs, the
    // same result on stdout.
    for args in [
        {
            let mut v = vec!["--quiet"];
            v.extend(p.args("unpack", &["--rootfs"]));
            v
        },
        p.args("unpack", &["-q", "--rootfs"]),
    ] {
        let root = p.dir(&format!("quiet-{}", fastrand::u32(..)));
        let mut args = args.clone();
        args.push(&root);
        let (ok, terminal, stdout) = on_terminal(&args, p.work.path());
        assert!(ok, "{terminal}");
        assert!(!terminal.contains("layer 1/2"), "{terminal}");
        assert!(!terminal.contains("INFO"), "{terminal}");
        assert!(stdout.starts_with("applied 2 layers"), "{stdout}");
    }
}

#[test]
fn pull_and_expect_show_progress_on_a_terminal_and_print_the_same_result() {
    let p = published();
    let out = p.dir("layout");
    let (ok, terminal, stdout) =
        on_terminal(&p.args("pull", &["--oci-layout", &out]), p.work.path());
    assert!(ok, "{terminal}");
    assert!(terminal.contains("fetching"), "{terminal}");
    assert!(terminal.contains("blob 1/2"), "{terminal}");
    assert!(stdout.starts_with("verified image "), "{stdout}");

    let (ok, terminal, on_tty) = on_terminal(&p.args("expect", &[]), p.work.path());
    assert!(ok, "{terminal}");
    let piped = run(&p.args("expect", &[]));
    assert!(piped.ok, "{}", piped.stderr);
    assert!(on_tty.starts_with("PCR16 "), "{on_tty}");
    assert_eq!(on_tty, piped.stdout);
}

#[test]
fn run_on_a_terminal_draws_the_layers_it_applies() {
    if !nix_is_root() {
        eprintln!("skipped: cidboot run needs root");
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let img = probe_image(serde_json::json!({"Entrypoint": ["/bin/probe"]}));
    let (reference, gw) = publish(&img, work.path());
    let (ok, terminal, _) = on_terminal(
        &[
            "run",
            &reference,
            "--gateway",
            &gw.url,
            "--ca",
            gw.ca.to_str().unwrap(),
            "--attestation-listen",
            "127.0.0.1:0",
        ],
        work.path(),
    );
    assert!(ok, "{terminal}");
    assert!(terminal.contains("layer 1/1"), "{terminal}");
    assert!(terminal.contains("applied: "), "{terminal}");
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}
