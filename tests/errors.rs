//! Errors and pastes a newcomer meets: each message names the fix, through real `cidboot`
//! processes.
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

fn small_layout(work: &std::path::Path) -> (Image, String, std::path::PathBuf) {
    let img = image("amd64", &[vec![("etc/greeting", b"hi\n".to_vec())]]);
    let dir = work.join("layout");
    write_layout(&dir, &[("amd64", &img)]);
    let car = work.join("layout.car");
    let root = ipfs_car_pack(&dir, &car, false);
    (img, root, car)
}

#[test]
fn a_gateway_url_ending_in_ipfs_is_taken_as_its_base_url() {
    let work = tempfile::tempdir().unwrap();
    let (img, root, car) = small_layout(work.path());
    let gw = Gateway::start(&[car], work.path());
    let r = format!("ipfs://{root}");
    for pasted in [format!("{}/ipfs", gw.url), format!("{}/ipfs/", gw.url)] {
        let out = run(&[
            "inspect",
            &r,
            "--gateway",
            &pasted,
            "--ca",
            gw.ca.to_str().unwrap(),
            "--json",
        ]);
        assert!(
            out.ok,
            "inspect with --gateway {pasted} failed: {}",
            out.stderr
        );
        assert_eq!(out.json()["manifest_digest"], img.manifest.digest);
    }
}

#[test]
fn a_missing_executable_says_where_it_came_from_and_what_overrides_it() {
    use serde_json::json;
    for (config, workload, want) in [
        (
            json!({"Cmd": ["/bin/true"]}),
            None,
            "\"/bin/true\" not found in the image; it comes from the image's Cmd (it has no Entrypoint): set workload.entrypoint",
        ),
        (
            json!({"Entrypoint": ["/bin/true"], "Cmd": ["x"]}),
            None,
            "it comes from the image's Entrypoint: set workload.entrypoint",
        ),
        (
            json!({"Entrypoint": ["/bin/probe"]}),
            Some("[workload]\nentrypoint = [\"/bin/true\"]\n"),
            "it comes from workload.entrypoint in the configuration",
        ),
    ] {
        let r = run_image(&probe_image(config), workload, None, &[]);
        assert_eq!(r.code, Some(127), "{}", r.stderr);
        assert!(r.stderr.contains(want), "{want}: {}", r.stderr);
    }
}

#[test]
fn an_unknown_tls_issuer_names_ca_and_is_not_retried() {
    let work = tempfile::tempdir().unwrap();
    let (img, root, car) = small_layout(work.path());
    let gw = Gateway::start(&[car], work.path());
    let r = format!("ipfs://{root}");
    let o = cidboot()
        .args(["inspect", &r, "--gateway", &gw.url, "--json"])
        .env_remove("CIDBOOT_CA")
        .env("CIDBOOT_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        stderr.contains("needs its CA certificate given with --ca FILE (or CIDBOOT_CA"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("retrying"),
        "a certificate failure was retried: {stderr}"
    );
    // CIDBOOT_CA stands for --ca.
    let o = cidboot()
        .args(["inspect", &r, "--gateway", &gw.url, "--json"])
        .env("CIDBOOT_CA", &gw.ca)
        .env("CIDBOOT_LOG", "warn")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["manifest_digest"], img.manifest.digest);
}

/// A `cidboot host` with only an egress proxy; returns it and the proxy's address.
fn egress_host(allow: &str, work: &std::path::Path) -> (KillOnDrop, String) {
    egress_host_at("tcp:127.0.0.1:0", allow, work)
}

fn egress_host_at(listen: &str, allow: &str, work: &std::path::Path) -> (KillOnDrop, String) {
    use std::io::BufRead;
    let cfg = work.join(format!("host-{}.toml", fastrand::u32(..)));
    std::fs::write(
        &cfg,
        format!("[egress]\nlisten = \"{listen}\"\nallow = [\"{allow}\"]\n"),
    )
    .unwrap();
    let mut child = cidboot()
        .args(["host", "--config"])
        .arg(&cfg)
        .env("CIDBOOT_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The daemon logs to stderr (its stdout carries enclave records).
    let out = child.stderr.take().unwrap();
    let child = KillOnDrop(child);
    let (tx, rx) = std::sync::mpsc::channel();
    // Reads the host's output to the end, so that it never blocks on a full pipe.
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if let Some(a) = line.split("egress proxy listening on ").nth(1) {
                let _ = tx.send(a.trim().to_string());
            }
        }
    });
    let addr = rx
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("cidboot host announces its egress proxy");
    (child, addr)
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_destination_the_egress_allowlist_denies_shows_why_and_is_not_retried() {
    let work = tempfile::tempdir().unwrap();
    let img = probe_image(serde_json::json!({"Entrypoint": ["/bin/probe"]}));
    let (reference, gw) = publish(&img, work.path());
    let (_host, egress) = egress_host("localhost:9", work.path());
    let o = cidboot()
        .args(["run", &reference, "--gateway", &gw.url, "--ca"])
        .arg(&gw.ca)
        .args(["--nsm", "software", "--attestation-listen", "127.0.0.1:0"])
        .args(["--parent-egress", &egress])
        .env("CIDBOOT_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(125), "{stderr}");
    let gw_authority = gw.url.trim_start_matches("https://");
    assert!(
        stderr.contains(&format!(
            "egress proxy refused {gw_authority}: 403 Forbidden (egress to {gw_authority} denied:"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("[egress] allow"), "{stderr}");
    assert!(
        !stderr.contains("retrying"),
        "a refusal was retried: {stderr}"
    );
}

#[test]
fn a_busy_attestation_port_fails_before_anything_is_fetched() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    // The gateway accepts and never answers: had the fetch started, the run would hang on it
    // rather than fail at once.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gw = format!("http://{}", silent.local_addr().unwrap());
    let start = std::time::Instant::now();
    let o = cidboot()
        .args([
            "run",
            "ipfs://bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi",
            "--gateway",
            &gw,
            "--nsm",
            "software",
            "--attestation-listen",
            &addr,
        ])
        .env("CIDBOOT_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(125), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {addr}"))
            && stderr.contains("--attestation-listen"),
        "{stderr}"
    );
    assert!(start.elapsed() < std::time::Duration::from_secs(10));
    silent.set_nonblocking(true).unwrap();
    assert!(silent.accept().is_err(), "the gateway was contacted");
}

#[test]
fn a_log_sink_with_nothing_listening_says_at_once_what_it_waits_for() {
    use std::io::BufRead;
    let work = tempfile::tempdir().unwrap();
    let sock = work.path().join("nobody.sock");
    let sink = format!("unix:{}", sock.display());
    let mut child = cidboot()
        .args([
            "run",
            "ipfs://bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi",
        ])
        .args(["--gateway", "http://127.0.0.1:1", "--log-sink", &sink])
        .env("CIDBOOT_LOG", "warn")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let err = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = rx.recv_timeout(std::time::Duration::from_secs(10));
    let _ = child.kill();
    let _ = child.wait();
    let line = line.expect("a line within 10s, long before the 30s patience ends");
    assert!(
        line.contains(&format!("waiting up to 30s for the log sink {sink}"))
            && line.contains("cidboot host"),
        "{line}"
    );
}

#[test]
fn pack_refuses_a_directory_that_is_not_an_oci_layout_and_can_write_to_stdout() {
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("index.json"), b"{}").unwrap();
    let car = work.path().join("tree.car");
    let out = run(&[
        "pack",
        tree.to_str().unwrap(),
        "--car",
        car.to_str().unwrap(),
    ]);
    assert!(!out.ok, "packed a non-layout: {}", out.stdout);
    assert!(out.stdout.is_empty(), "printed a CID: {}", out.stdout);
    assert!(
        out.stderr
            .contains("is not an OCI image layout (no oci-layout)")
            && out.stderr.contains("--any-dir"),
        "{}",
        out.stderr
    );
    assert!(!car.exists());
    // --any-dir packs it as ipfs-car would.
    let out = run(&[
        "pack",
        tree.to_str().unwrap(),
        "--car",
        car.to_str().unwrap(),
        "--any-dir",
    ]);
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(
        out.stdout.trim(),
        ipfs_car_pack(&tree, &work.path().join("theirs.car"), false)
    );

    // `--car -`: the CAR on stdout, byte for byte what ipfs-car writes; the CID on stderr.
    let (_, root, theirs) = small_layout(work.path());
    let o = cidboot()
        .args(["pack"])
        .arg(work.path().join("layout"))
        .args(["--car", "-"])
        .env("CIDBOOT_LOG", "warn")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.stdout, std::fs::read(theirs).unwrap());
    assert_eq!(String::from_utf8_lossy(&o.stderr).trim(), root);
}

#[test]
fn every_verify_flag_has_help_and_host_help_lists_its_sections() {
    let o = cidboot().args(["verify", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<&str> = help.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut flags = 0;
    for (i, l) in lines.iter().enumerate() {
        let t = l.trim_start();
        let is_flag = t.starts_with("--") || (t.starts_with('-') && t.chars().nth(2) == Some(','));
        if !is_flag {
            continue;
        }
        flags += 1;
        // clap puts a flag's help after it on its line, or on the lines below, indented more.
        let inline = t
            .split_once("  ")
            .is_some_and(|(_, h)| !h.trim().is_empty());
        let below = lines
            .get(i + 1)
            .is_some_and(|n| indent(n) > indent(l) && !n.trim().is_empty());
        assert!(inline || below, "{t} has no help text");
    }
    assert!(flags > 20, "{help}");
    let o = cidboot().args(["host", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&o.stdout);
    for section in [
        "[egress]",
        "[boot]",
        "[logs]",
        "[[ingress]]",
        "[heartbeat]",
        "docs/operating.md",
    ] {
        assert!(help.contains(section), "{section} missing from: {help}");
    }
}

#[test]
fn one_address_syntax_for_every_listen_and_a_wrong_one_names_the_forms() {
    use std::io::BufRead;
    const FORMS: &str = "tcp:HOST:PORT (or just HOST:PORT), unix:PATH or vsock:CID:PORT";
    let work = tempfile::tempdir().unwrap();
    let (_, _, car) = small_layout(work.path());
    // gateway --listen: tcp: and bare forms both serve.
    for listen in ["tcp:127.0.0.1:0", "127.0.0.1:0"] {
        let mut child = KillOnDrop(
            cidboot()
                .args(["gateway", "--listen", listen, "--car"])
                .arg(&car)
                .env("CIDBOOT_LOG", "error")
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let mut line = String::new();
        std::io::BufReader::new(child.0.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("http://127.0.0.1:"), "{listen}: {line:?}");
    }
    let out = run(&[
        "gateway",
        "--listen",
        "localhost",
        "--car",
        car.to_str().unwrap(),
    ]);
    assert!(!out.ok && out.stderr.contains(FORMS), "{}", out.stderr);
    // host.toml takes a bare HOST:PORT as TCP.
    let (_host, egress) = egress_host_at("127.0.0.1:0", "localhost:9", work.path());
    assert!(egress.starts_with("tcp:127.0.0.1:"), "{egress}");
    // [egress] listen and [attestation] listen of the runtime configuration.
    for (cfg, want) in [
        (
            "[egress]\nallow = [\"localhost:1\"]\nlisten = \"http://x\"\n",
            "egress.listen",
        ),
        (
            "[attestation]\nlisten = \"localhost\"\n",
            "attestation.listen",
        ),
        (
            "[attestation]\nlisten = \"unix:/run/a.sock\"\n",
            "only TCP is possible here",
        ),
    ] {
        let p = work.path().join("cidboot.toml");
        std::fs::write(&p, cfg).unwrap();
        let out = run(&[
            "run",
            "ipfs://bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi",
            "--gateway",
            "http://127.0.0.1:1",
            "--config",
            p.to_str().unwrap(),
        ]);
        assert!(
            !out.ok && out.stderr.contains(want) && out.stderr.contains(FORMS),
            "{cfg}: {}",
            out.stderr
        );
    }
}

#[test]
fn expect_refuses_eif_pcrs_of_the_wrong_length_before_fetching() {
    let work = tempfile::tempdir().unwrap();
    let eif = work.path().join("eif.json");
    for short in ["aa".repeat(32), "aa".repeat(49), "zz".repeat(48)] {
        let m = serde_json::json!({"Measurements": {"PCR0": "aa".repeat(48), "PCR1": short, "PCR2": "aa".repeat(48)}});
        std::fs::write(&eif, m.to_string()).unwrap();
        // No gateway answers: the refusal must come before any fetch.
        let out = run(&[
            "expect",
            "ipfs://bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi",
            "--gateway",
            "http://127.0.0.1:1",
            "--eif-pcrs",
            eif.to_str().unwrap(),
        ]);
        assert!(
            !out.ok && out.stderr.contains("PCR1 is") && out.stderr.contains("96 hex digits"),
            "{}",
            out.stderr
        );
    }
}

#[test]
fn a_busy_workload_egress_port_fails_before_anything_is_fetched() {
    let work = tempfile::tempdir().unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gw = format!("http://{}", silent.local_addr().unwrap());
    let cfg = work.path().join("cidboot.toml");
    std::fs::write(
        &cfg,
        format!("[egress]\nallow = [\"localhost:1\"]\nlisten = \"{addr}\"\n"),
    )
    .unwrap();
    let out = run(&[
        "run",
        "ipfs://bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi",
        "--gateway",
        &gw,
        "--nsm",
        "software",
        "--attestation-listen",
        "127.0.0.1:0",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert!(
        !out.ok
            && out
                .stderr
                .contains(&format!("egress.listen: cannot listen on tcp:{addr}"))
            && out.stderr.contains("choose another egress.listen"),
        "{}",
        out.stderr
    );
    silent.set_nonblocking(true).unwrap();
    assert!(silent.accept().is_err(), "the gateway was contacted");
}

#[test]
fn a_log_filter_that_is_not_a_level_is_reported_not_obeyed() {
    // `verbose` parses as a target name, which would silently turn every other log off.
    let o = cidboot()
        .args([
            "inspect",
            "ipfs://bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi",
            "--gateway",
            "http://127.0.0.1:9",
            "--tries",
            "1",
        ])
        .env("CIDBOOT_LOG", "verbose")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("ignoring CIDBOOT_LOG=\"verbose\": \"verbose\" is not a level"),
        "{stderr}"
    );
    // Logging still works at the default level: the failed try is logged.
    assert!(stderr.contains("WARN"), "{stderr}");
}

#[test]
fn run_refuses_nsm_pcrs_that_are_not_an_eifs_before_fetching() {
    let work = tempfile::tempdir().unwrap();
    let eif = work.path().join("eif.json");
    for (pcrs, want) in [
        (
            serde_json::json!({"PCR0": "aa".repeat(48), "PCR1": "aa".repeat(47), "PCR2": "aa".repeat(48)}),
            "PCR1 is",
        ),
        (
            serde_json::json!({"Measurements": {"PCR0": "aa".repeat(48)}}),
            "no PCR1",
        ),
    ] {
        std::fs::write(&eif, pcrs.to_string()).unwrap();
        // No gateway answers: the refusal must come before any fetch.
        let out = run(&[
            "run",
            "ipfs://bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi",
            "--gateway",
            "http://127.0.0.1:1",
            "--nsm",
            "software",
            "--nsm-pcrs",
            eif.to_str().unwrap(),
            "--attestation-listen",
            "127.0.0.1:0",
        ]);
        assert!(
            !out.ok && out.stderr.contains("--nsm-pcrs") && out.stderr.contains(want),
            "{}",
            out.stderr
        );
    }
    // The device reports its own PCRs: the flag is refused rather than ignored.
    let out = run(&[
        "run",
        "ipfs://bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi",
        "--gateway",
        "http://127.0.0.1:1",
        "--nsm",
        "device",
        "--nsm-pcrs",
        eif.to_str().unwrap(),
        "--attestation-listen",
        "127.0.0.1:0",
    ]);
    assert!(
        !out.ok && out.stderr.contains("reports its own"),
        "{}",
        out.stderr
    );
}
