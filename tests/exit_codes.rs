//! The exit statuses of docs/workload.md's table, from real `cidboot` processes: `run` tells
//! cidboot's own failures (125) from an entrypoint that cannot run (126, 127) and from the
//! workload's own status; the other commands answer 0, 1 ("no") or 2 (usage); and a closed
//! stdout ends any command quietly (141), never with a panic.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;
use serde_json::json;

/// The JSON report `run --json` prints as its last line.
fn last_json(r: &Ran) -> serde_json::Value {
    let line = r.stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}\n{}", r.stderr))
}

/// The probe image with extra files.
fn probe_with(extra: &[TarEntry], config: serde_json::Value) -> Image {
    image_from_tars(&[base_layer(), tar_entries(extra)], config)
}

#[test]
fn run_tells_its_own_failures_from_the_entrypoints_and_the_workloads() {
    // cidboot failed: a layer that does not verify.
    let img = image_from_tars_with(
        &[base_layer()],
        json!({"Entrypoint": ["/bin/probe"]}),
        |_, _| format!("sha256:{}", "0".repeat(64)),
    );
    let r = run_image(&img, None, None, &["--json"]);
    assert_eq!(r.code, Some(125), "{}", r.stderr);
    let v = last_json(&r);
    assert_eq!(
        (&v["exit_code"], &v["ended"]),
        (&json!(125), &json!("cidboot"))
    );
    assert!(v["error"].as_str().unwrap().contains("diff_id"), "{v}");
    assert!(!r.stdout.contains("probe:"));

    let extra = [
        TarEntry::File {
            path: "bin/data",
            data: b"not a program".to_vec(),
            mode: 0o644,
        },
        TarEntry::File {
            path: "bin/not-elf",
            data: b"\x7fELF-but-not-really".to_vec(),
            mode: 0o755,
        },
        TarEntry::File {
            path: "bin/script",
            data: b"#!/missing/interpreter\n".to_vec(),
            mode: 0o755,
        },
    ];
    for (entrypoint, code, why) in [
        // Not there at all: 127, before anything runs.
        ("/bin/nope", 127, "executable \"/bin/nope\" not found in the image"),
        ("nope", 127, "executable \"nope\" not found in the image (PATH="),
        // There, but nothing to execute: 126, before anything runs.
        ("/bin/data", 126, "\"/bin/data\" in the image cannot be executed: it has no execute permission"),
        ("/bin", 126, "\"/bin\" in the image cannot be executed: it is a directory"),
        // The kernel refuses it at the exec (ENOEXEC), or cannot find its interpreter (ENOENT).
        ("/bin/not-elf", 126, "\"/bin/not-elf\" could not be executed: exec \"/bin/not-elf\": Exec format error"),
        ("/bin/script", 127, "\"/bin/script\" could not be executed: exec \"/bin/script\": No such file or directory"),
    ] {
        let img = probe_with(&extra, json!({"Entrypoint": [entrypoint], "Env": ["PATH=/bin"]}));
        let r = run_image(&img, None, None, &["--json"]);
        assert_eq!(r.code, Some(code), "{entrypoint}: {}", r.stderr);
        assert!(r.stderr.contains(why), "{entrypoint}: {}", r.stderr);
        let v = last_json(&r);
        assert_eq!((&v["exit_code"], &v["ended"]), (&json!(code), &json!("cidboot")), "{entrypoint}");
    }

    // The workload's own status, whatever it is.
    let img = probe_image(json!({"Entrypoint": ["/bin/probe"], "Cmd": ["exit", "3"]}));
    let r = run_image(&img, None, None, &["--json"]);
    assert_eq!(r.code, Some(3), "{}", r.stderr);
    let v = last_json(&r);
    assert_eq!(
        (&v["exit_code"], &v["ended"]),
        (&json!(3), &json!("workload"))
    );
    let r = run_image(
        &img,
        Some("[workload]\ncmd = [\"exit\", \"1\"]\n"),
        None,
        &[],
    );
    assert_eq!(r.code, Some(1), "{}", r.stderr);

    // A usage error of `run` is cidboot's failure too: 2 could be the workload's.
    let o = cidboot().args(["run", "--no-such-flag"]).output().unwrap();
    assert_eq!(o.status.code(), Some(125));
    let o = cidboot()
        .args(["run", "ipfs://x", "--nsm", "nope"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(125));
    let o = cidboot()
        .args(["-q", "run", "--json", "--bogus"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(125));
}

#[test]
fn a_workload_killed_by_sigkill_ends_the_run_with_137() {
    let token = format!("token-{}", fastrand::u64(..));
    let img = probe_image(json!({
        "Entrypoint": ["/bin/probe"], "Cmd": ["sleep", "600000", "print", token],
    }));
    let work = tempfile::tempdir().unwrap();
    let (reference, gw) = publish(&img, work.path());
    let mut child = cidboot()
        .args(["run", &reference, "--gateway", &gw.url, "--ca"])
        .arg(&gw.ca)
        .args(["--attestation-listen", "127.0.0.1:0", "--json"])
        .env("CIDBOOT_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.starts_with("probe: args=") {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "the workload never ran"
        );
    }
    // The workload, as the host sees it (outside its PID namespace).
    let pid = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&token))
        })
        .expect("the workload's process");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(137));
    let v: serde_json::Value = serde_json::from_str(rest.lines().last().unwrap()).unwrap();
    assert_eq!(
        (&v["exit_code"], &v["ended"]),
        (&json!(137), &json!("workload"))
    );
}

#[test]
fn the_other_commands_answer_yes_no_or_usage() {
    let code = |args: &[&str]| cidboot().args(args).output().unwrap().status.code();
    assert_eq!(code(&["inspect", "--no-such-flag"]), Some(2));
    assert_eq!(code(&["pack"]), Some(2));
    assert_eq!(code(&["--version"]), Some(0));
    let work = tempfile::tempdir().unwrap();
    // Not an attestation document at all: verify's answer is no.
    let junk = work.path().join("junk");
    std::fs::write(&junk, b"not base64, not CBOR!").unwrap();
    let o = run(&["verify", junk.to_str().unwrap(), "--json"]);
    assert_eq!(o.json()["exit_code"], 1, "{}", o.stdout);
    assert_eq!(code(&["verify", junk.to_str().unwrap()]), Some(1));
    // Base64 of something that is not a document: checked, and not verified.
    std::fs::write(&junk, b"junk").unwrap();
    let o = run(&["verify", junk.to_str().unwrap(), "--json"]);
    assert_eq!(o.json()["ok"], false, "{}", o.stdout);
    assert_eq!(code(&["verify", junk.to_str().unwrap()]), Some(1));
    // A configuration the daemon would not start with: host --check's answer is no.
    let bad = work.path().join("host.toml");
    std::fs::write(&bad, "[egress]\nlisten = \"nowhere\"\n").unwrap();
    assert_eq!(
        code(&["host", "--config", bad.to_str().unwrap(), "--check"]),
        Some(1)
    );
    // cidboot itself failed: no gateway answers.
    let cid = "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi";
    let o = cidboot()
        .args([
            "inspect",
            &format!("ipfs://{cid}"),
            "--gateway",
            "http://127.0.0.1:1",
        ])
        .args(["--tries", "1", "--json"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(125));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["exit_code"], 125);
    // A usage error found by cidboot rather than clap.
    let o = cidboot()
        .args([
            "expect",
            &format!("ipfs://{cid}"),
            "--kms-policy",
            "--principal",
            "arn:x",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--kms-policy needs --eif-pcrs"), "{stderr}");
}

/// A real AWS attestation document (the checkout's sibling `shared/fixtures`).
fn aws_document() -> PathBuf {
    let top = Path::new(env!("CARGO_MANIFEST_DIR"));
    [top.join("../shared"), top.join("../../shared")]
        .iter()
        .map(|s| s.join("fixtures/attestation/nitro-attest-2025-01-06.cose"))
        .find(|p| p.exists())
        .expect("shared/fixtures/attestation beside the checkout")
}

/// Runs `cidboot ARGS` with a stdout whose reader has already gone.
fn with_closed_stdout(args: &[&str], env: &[(&str, &Path)]) -> (Option<i32>, String) {
    let (r, w) = nix::unistd::pipe().unwrap();
    drop(r);
    let mut c = cidboot();
    c.args(args)
        .env("CIDBOOT_LOG", "warn")
        .stdout(Stdio::from(w))
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    let o = c.output().unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// `--pcr N=HEX` for PCR0-2 of a document: pinned, so verify has nothing to warn about.
fn pins_of(doc: &Path) -> String {
    use cidboot::nsm::document::{parse_cose, Document};
    let d = Document::parse(&parse_cose(&std::fs::read(doc).unwrap()).unwrap().payload).unwrap();
    (0..3)
        .map(|i| format!("--pcr {i}={}", hex::encode(&d.pcrs[&i])))
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn a_closed_stdout_ends_any_command_quietly() {
    let doc = aws_document();
    let d = doc.to_str().unwrap();
    let pins = pins_of(&doc);
    let mut verify = vec!["verify", d, "--at", "doc", "--json"];
    verify.extend(pins.split(' '));
    let (code, stderr) = with_closed_stdout(&verify, &[]);
    assert_eq!((code, stderr.as_str()), (Some(141), ""));
    // As a shell runs it: the first line reaches `head`; nothing at all on stderr.
    let o = Command::new("bash")
        .args(["-o", "pipefail", "-c"])
        .arg(format!(
            "{} verify {d} --at doc --json {pins} | head -1",
            env!("CARGO_BIN_EXE_cidboot")
        ))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "{\n");
    assert_eq!(String::from_utf8_lossy(&o.stderr), "");
    // The document passes: `head` may have read all of it, or closed the pipe first.
    assert!(matches!(o.status.code(), Some(0 | 141)), "{:?}", o.status);
    // The human form, and a document that does not pass, end the same way.
    let (code, stderr) = with_closed_stdout(&["verify", d, "--at", "doc"], &[]);
    assert_eq!(code, Some(141));
    assert!(!stderr.contains("panicked"), "{stderr}");

    // Help and a human result.
    let (code, stderr) = with_closed_stdout(&["pack", "--help"], &[]);
    assert_eq!((code, stderr.as_str()), (Some(0), ""));
    let img = probe_image(json!({"Entrypoint": ["/bin/probe"]}));
    let work = tempfile::tempdir().unwrap();
    let (reference, gw) = publish(&img, work.path());
    let ca = gw.ca.to_str().unwrap();
    for json in [false, true] {
        let mut args = vec!["inspect", &reference, "--gateway", &gw.url, "--ca", ca];
        if json {
            args.push("--json");
        }
        let (code, stderr) = with_closed_stdout(&args, &[]);
        assert_eq!((code, stderr.as_str()), (Some(141), ""), "{args:?}");
    }
    // A CAR to stdout: nothing is left of it either.
    let layout = work.path().join("layout");
    write_layout(&layout, &[("amd64", &img)]);
    let tmp = work.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let (code, stderr) = with_closed_stdout(
        &["pack", layout.to_str().unwrap(), "--car", "-"],
        &[("TMPDIR", &tmp)],
    );
    assert_eq!((code, stderr.as_str()), (Some(141), ""));
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
}
