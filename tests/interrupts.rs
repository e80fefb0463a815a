//! What cidboot stages is private from its first instant, and a signal or a kill leaves none
//! of it behind: real `cidboot` processes, real CARs from ipfs-car and a real gateway behind a
//! proxy that stalls the image's large layer halfway, so that each signal lands mid-transfer.
//! Another local user is a real uid-1000 process.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::json;

/// A plain-HTTP proxy in front of a gateway that, for any request naming `stall`, sends half
/// of the response and then holds the connection silent.
struct Staller {
    url: String,
    stalled: Arc<AtomicBool>,
}

impl Staller {
    fn start(upstream: &str, stall: String) -> Staller {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stalled = Arc::new(AtomicBool::new(false));
        let upstream = upstream.trim_start_matches("http://").to_string();
        let flag = stalled.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let (upstream, stall, flag) = (upstream.clone(), stall.clone(), flag.clone());
                std::thread::spawn(move || {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&req).into_owned();
                    let path = head
                        .lines()
                        .next()
                        .and_then(|l| l.split(' ').nth(1))
                        .unwrap_or("/")
                        .to_string();
                    let accept = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .starts_with("accept:")
                                .then(|| l[7..].trim().to_string())
                        })
                        .unwrap_or_default();
                    let Ok(mut up) = std::net::TcpStream::connect(&upstream) else {
                        return;
                    };
                    let _ = write!(
                        up,
                        "GET {path} HTTP/1.1\r\nHost: {upstream}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
                    );
                    let mut resp = Vec::new();
                    let _ = up.read_to_end(&mut resp);
                    if path.contains(&stall) {
                        let _ = conn.write_all(&resp[..resp.len() / 2]);
                        flag.store(true, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_secs(600));
                        return;
                    }
                    let _ = conn.write_all(&resp);
                });
            }
        });
        Staller { url, stalled }
    }

    fn wait_stalled(&self) {
        let t0 = Instant::now();
        while !self.stalled.load(Ordering::SeqCst) {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "the transfer never reached the large layer"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // Let what arrived before the stall reach the spill files and the root.
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A tar header for the image root itself (`./`), whose mode the applier gives the root.
fn root_entry(mode: u32) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.as_gnu_mut().unwrap().name[..2].copy_from_slice(b"./");
    h.set_entry_type(tar::EntryType::Directory);
    h.set_size(0);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&h, &[][..]).unwrap();
    b.into_inner().unwrap()
}

/// The probe image with a setuid-root copy of the probe, a root the image makes mode 0755
/// (as real images do), and then a large layer of 8 MiB that does not compress.
fn setuid_image(config: serde_json::Value) -> Image {
    let mut first = root_entry(0o755);
    // Two tar archives concatenated are not one; keep the `./` entry's 512-byte header and
    // drop its end-of-archive blocks.
    first.truncate(512);
    first.extend(base_layer());
    let suid = tar_entries(&[TarEntry::File {
        path: "bin/suid-probe",
        data: std::fs::read(sample_bin("probe")).unwrap(),
        mode: 0o4755,
    }]);
    let big = tar_entries(&[TarEntry::File {
        path: "big",
        data: noise(8 << 20, 7),
        mode: 0o644,
    }]);
    image_from_tars(&[first, suid, big], config)
}

/// An image served by a plain gateway behind a proxy that stalls its last (large) layer.
struct Served {
    work: tempfile::TempDir,
    reference: String,
    direct: Gateway,
    staller: Staller,
}

fn serve(img: &Image) -> Served {
    let work = tempfile::tempdir().unwrap();
    // Like /tmp: anyone may enter and create; only what cidboot makes inside is private.
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let dir = work.path().join("layout");
    write_layout(&dir, &[("amd64", img)]);
    let car = dir.with_extension("car");
    let root = ipfs_car_pack(&dir, &car, false);
    let direct = Gateway::start_plain(std::slice::from_ref(&car));
    let reference = format!("ipfs://{root}");
    let o = run(&["inspect", &reference, "--gateway", &direct.url, "--json"]);
    assert!(o.ok, "{}", o.stderr);
    let big = o.json()["layers"].as_array().unwrap().last().unwrap()["cid"]
        .as_str()
        .unwrap()
        .to_string();
    let staller = Staller::start(&direct.url, big);
    Served {
        work,
        reference,
        direct,
        staller,
    }
}

impl Served {
    /// A directory for cidboot's `$TMPDIR`, as open as /tmp.
    fn tmpdir(&self, name: &str) -> PathBuf {
        let d = self.work.path().join(name);
        std::fs::create_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o1777)).unwrap();
        d
    }
}

/// Starts `cidboot ARGS` with its own `$TMPDIR`.
fn start(args: &[&str], tmpdir: &Path) -> Child {
    cidboot()
        .args(args)
        .env("TMPDIR", tmpdir)
        .env("CIDBOOT_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Sends `sig` and waits (at most a minute) for the process to end.
fn interrupt(mut child: Child, sig: Signal) -> (Option<i32>, String, String) {
    kill(Pid::from_raw(child.id() as i32), sig).unwrap();
    let t0 = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("cidboot did not end within a minute of {sig}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = child.wait_with_output().unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Everything in `dir` (one level), by name.
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The entries of `dir` whose names start with `prefix`.
fn named(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    entries(dir)
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .map(|n| dir.join(n))
        .collect()
}

/// Waits until `p` exists (as root sees it).
fn wait_for(p: &Path) {
    let t0 = Instant::now();
    while !p.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "{} never appeared",
            p.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A setuid-root file that root sees at `suid`, and that a uid-1000 process can neither run
/// nor even find, nor list the private directory `private` that holds it.
fn unreachable_by_another_user(private: &Path, suid: &Path) {
    let m = std::fs::metadata(suid).unwrap();
    assert_eq!(
        (m.mode() & 0o7777, m.uid()),
        (0o4755, 0),
        "{} is not the image's setuid-root file",
        suid.display()
    );
    let p = std::fs::symlink_metadata(private).unwrap();
    assert_eq!(
        (p.mode() & 0o7777, p.uid()),
        (0o700, 0),
        "{} is not private",
        private.display()
    );
    let as_other = |c: &mut Command| {
        c.uid(1000)
            .gid(1000)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
    };
    match as_other(&mut Command::new(suid)) {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{e}"),
        Ok(o) => panic!(
            "uid 1000 ran {}: {}",
            suid.display(),
            String::from_utf8_lossy(&o.stdout)
        ),
    }
    // Its own entry is visible in its parent, as any name is; nothing under it is.
    let first = suid
        .ancestors()
        .find(|a| a.parent() == Some(private))
        .unwrap();
    for what in [first, suid] {
        let o = as_other(Command::new("stat").arg(what)).unwrap();
        assert!(
            !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("Permission denied"),
            "uid 1000 reached {}",
            what.display()
        );
    }
    let o = as_other(Command::new("ls").arg(private)).unwrap();
    assert!(!o.status.success(), "uid 1000 listed {}", private.display());
}

/// A uid-1000 process that swaps each new staging directory in `dir` (whose entries it may
/// rename) for a symlink to a directory of its own, as soon as it appears, where the layout's
/// `index.json` is a symlink to `victim`.
const SWAPPER: &str = r#"
import os, sys, time
d, victim = sys.argv[1], sys.argv[2]
end = time.time() + 60
while time.time() < end:
    for n in os.listdir(d):
        p = os.path.join(d, n)
        if n.startswith(".") and ".partial-" in n or n.startswith(".cidboot-unpack-"):
            if os.path.islink(p):
                continue
            os.rename(p, os.path.join(d, "taken-" + n))
            fake = os.path.join(d, "fake-" + n)
            inner = n[1:].split(".partial-")[0]
            for sub in (inner + "/blobs/sha256", "root"):
                os.makedirs(os.path.join(fake, sub), exist_ok=True)
            os.symlink(victim, os.path.join(fake, inner, "index.json"))
            os.symlink(fake, p)
            print("swapped", n, flush=True)
    time.sleep(0.0005)
"#;

/// A directory owned by another user (who could rename what root stages there): `pull`,
/// `unpack` and `pack` refuse to stage anything in it, so that user cannot make root write
/// through a symlink of theirs. (Without that refusal, the swapper above made `pull`
/// overwrite a root-owned file with the layout's index.json.)
#[test]
fn root_stages_nothing_where_another_user_could_swap_it() {
    let s = serve(&setuid_image(json!({"Entrypoint": ["/bin/probe"]})));
    let theirs = s.work.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(1000), Some(1000)).unwrap();
    let victim = s.work.path().join("victim");
    std::fs::write(&victim, "root's\n").unwrap();
    let mut swapper = Command::new("setpriv")
        .args([
            "--reuid=1000",
            "--regid=1000",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            SWAPPER,
        ])
        .arg(&theirs)
        .arg(&victim)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let dir = s.work.path().join("packme");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("f"), b"x").unwrap();
    for args in [
        vec![
            "pull",
            &s.reference,
            "--gateway",
            &s.direct.url,
            "--oci-layout",
        ],
        vec![
            "unpack",
            &s.reference,
            "--gateway",
            &s.direct.url,
            "--rootfs",
        ],
        vec!["pack", dir.to_str().unwrap(), "--any-dir", "--car"],
    ] {
        let target = theirs.join(format!("{}-out", args[0]));
        let mut args = args.clone();
        args.push(target.to_str().unwrap());
        let o = run(&args);
        assert_eq!(
            std::fs::read_to_string(&victim).unwrap(),
            "root's\n",
            "{args:?} wrote through another user's symlink"
        );
        assert!(
            !o.ok,
            "{args:?} staged in another user's directory: {}",
            o.stderr
        );
        assert!(
            o.stderr.contains("refusing to stage anything in")
                && o.stderr.contains("is owned by uid 1000"),
            "{args:?}: {}",
            o.stderr
        );
    }
    let _ = swapper.kill();
    let out = swapper.wait_with_output().unwrap();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "root's\n");
    assert!(
        entries(&theirs).is_empty(),
        "{:?} {}",
        entries(&theirs),
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn an_interrupted_unpack_leaves_nothing_and_its_staging_is_private_meanwhile() {
    let s = serve(&setuid_image(json!({"Entrypoint": ["/bin/probe"]})));
    let tmp = s.tmpdir("tmp");
    let out = s.work.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o755)).unwrap();
    let target = out.join("root");
    let child = start(
        &[
            "unpack",
            &s.reference,
            "--gateway",
            &s.staller.url,
            "--rootfs",
            target.to_str().unwrap(),
            "--json",
        ],
        &tmp,
    );
    s.staller.wait_stalled();
    let staged = named(&out, ".cidboot-unpack-");
    assert_eq!(staged.len(), 1, "{:?}", entries(&out));
    // Only the one private directory: the root and the spill files are inside it.
    assert_eq!(
        entries(&out),
        vec![staged[0].file_name().unwrap().to_string_lossy().to_string()]
    );
    let suid = staged[0].join("root/bin/suid-probe");
    wait_for(&suid);
    // The image makes its root 0755; unpack keeps it 0700 from the first entry, inside a
    // private directory: nothing another user can reach.
    let root_mode = std::fs::metadata(staged[0].join("root")).unwrap().mode() & 0o7777;
    assert_eq!(root_mode, 0o700);
    unreachable_by_another_user(&staged[0], &suid);
    let (code, stdout, stderr) = interrupt(child, Signal::SIGINT);
    assert_eq!(code, Some(130), "{stderr}");
    assert!(
        stderr.contains("interrupted by SIGINT: removed ") && stderr.contains(".cidboot-unpack-"),
        "{stderr}"
    );
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(last["exit_code"], 130);
    assert!(entries(&out).is_empty(), "left behind: {:?}", entries(&out));
    assert!(
        entries(&tmp).is_empty(),
        "left in $TMPDIR: {:?}",
        entries(&tmp)
    );
}

#[test]
fn a_sigterm_during_a_pull_leaves_no_partial_layout() {
    let s = serve(&setuid_image(json!({"Entrypoint": ["/bin/probe"]})));
    let tmp = s.tmpdir("tmp");
    let out = s.work.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let layout = out.join("layout");
    let child = start(
        &[
            "pull",
            &s.reference,
            "--gateway",
            &s.staller.url,
            "--oci-layout",
            layout.to_str().unwrap(),
        ],
        &tmp,
    );
    s.staller.wait_stalled();
    let partial = named(&out, ".layout.partial-");
    assert_eq!(partial.len(), 1, "{:?}", entries(&out));
    assert_eq!(
        std::fs::symlink_metadata(&partial[0]).unwrap().mode() & 0o7777,
        0o700
    );
    assert!(partial[0].join("layout/blobs/sha256").is_dir());
    let (code, _, stderr) = interrupt(child, Signal::SIGTERM);
    assert_eq!(code, Some(143), "{stderr}");
    assert!(stderr.contains("interrupted by SIGTERM"), "{stderr}");
    assert!(entries(&out).is_empty(), "left behind: {:?}", entries(&out));
    assert!(entries(&tmp).is_empty());
}

#[test]
fn an_interrupted_pack_leaves_no_partial_car() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("dir");
    std::fs::create_dir(&dir).unwrap();
    // A large file, sparse on disk, so that packing takes a while.
    let f = std::fs::File::create(dir.join("large")).unwrap();
    f.set_len(4 << 30).unwrap();
    let out = work.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let car = out.join("image.car");
    let child = start(
        &[
            "pack",
            dir.to_str().unwrap(),
            "--any-dir",
            "--car",
            car.to_str().unwrap(),
        ],
        work.path(),
    );
    // Mid-way: the partial CAR has some megabytes in it.
    let t0 = Instant::now();
    let partial = loop {
        let p = named(&out, ".image.car.partial-");
        if let Some(d) = p.first() {
            let f = d.join("image.car");
            if std::fs::metadata(&f).is_ok_and(|m| m.len() > 4 << 20) {
                break d.clone();
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "{:?}",
            entries(&out)
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(
        std::fs::symlink_metadata(&partial).unwrap().mode() & 0o7777,
        0o700
    );
    let (code, _, stderr) = interrupt(child, Signal::SIGINT);
    assert_eq!(code, Some(130), "{stderr}");
    assert!(
        stderr.contains("interrupted by SIGINT: removed"),
        "{stderr}"
    );
    assert!(entries(&out).is_empty(), "left behind: {:?}", entries(&out));
}

/// A signal while the CAR is being finished (its blocks all written, its header rewritten and
/// synced): either the pack stops and leaves nothing, with 130, or it had committed and says
/// so, with 0 and the CID; never a CAR left in place after "interrupted".
#[test]
fn a_signal_as_a_pack_finishes_leaves_nothing_or_reports_the_car() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("dir");
    std::fs::create_dir(&dir).unwrap();
    // Incompressible and not sparse, so that syncing the CAR takes a moment.
    std::fs::write(dir.join("large"), common::noise(192 << 20, 7)).unwrap();
    let out = work.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let car = out.join("image.car");
    let pack = |car: &Path| {
        start(
            &[
                "pack",
                dir.to_str().unwrap(),
                "--any-dir",
                "--car",
                car.to_str().unwrap(),
            ],
            work.path(),
        )
    };
    // Its full size, from a pack elsewhere.
    let full = work.path().join("full.car");
    assert!(pack(&full).wait().unwrap().success());
    let size = std::fs::metadata(&full).unwrap().len();
    std::fs::remove_file(&full).unwrap();
    for _ in 0..3 {
        let child = pack(&car);
        // The signal once the partial CAR has all its bytes: the header and the sync remain.
        let t0 = Instant::now();
        loop {
            let done = named(&out, ".image.car.partial-").first().is_some_and(|d| {
                std::fs::metadata(d.join("image.car")).is_ok_and(|m| m.len() >= size)
            });
            if done || car.exists() {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "{:?}",
                entries(&out)
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let (code, stdout, stderr) = interrupt(child, Signal::SIGINT);
        match code {
            Some(130) => {
                assert!(
                    entries(&out).is_empty(),
                    "left behind after 130: {:?}\n{stderr}",
                    entries(&out)
                );
            }
            Some(0) => {
                assert_eq!(entries(&out), ["image.car"], "{stderr}");
                assert!(stdout.starts_with("bafy"), "{stdout}");
                std::fs::remove_file(&car).unwrap();
            }
            other => panic!("exit {other:?}: {stderr}"),
        }
    }
}

#[test]
fn an_interrupted_run_mid_transfer_leaves_nothing_and_its_root_is_private_meanwhile() {
    let s = serve(&setuid_image(json!({"Entrypoint": ["/bin/probe"]})));
    let tmp = s.tmpdir("tmp");
    let child = start(
        &[
            "run",
            &s.reference,
            "--gateway",
            &s.staller.url,
            "--attestation-listen",
            "127.0.0.1:0",
            "--json",
        ],
        &tmp,
    );
    s.staller.wait_stalled();
    let work = named(&tmp, "cidboot-run-");
    assert_eq!(work.len(), 1, "{:?}", entries(&tmp));
    let suid = work[0].join("rootfs/bin/suid-probe");
    wait_for(&suid);
    unreachable_by_another_user(&work[0], &suid);
    let (code, stdout, stderr) = interrupt(child, Signal::SIGINT);
    assert_eq!(code, Some(130), "{stderr}");
    assert!(
        stderr.contains("interrupted by SIGINT: removed"),
        "{stderr}"
    );
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(
        (&last["exit_code"], &last["ended"]),
        (&json!(130), &json!("cidboot"))
    );
    assert!(entries(&tmp).is_empty(), "left behind: {:?}", entries(&tmp));
}

/// Processes whose command line holds `token`.
fn processes_with(token: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(token))
        })
        .collect()
}

/// Starts `cidboot run` of a workload that sleeps, and waits until it is running; the rest of
/// its stdout is read by the thread returned.
fn run_sleeping(
    s: &Served,
    tmp: &Path,
    token: &str,
    extra: &[&str],
) -> (Child, std::thread::JoinHandle<String>) {
    let mut args = vec![
        "run",
        &s.reference,
        "--gateway",
        &s.direct.url,
        "--attestation-listen",
        "127.0.0.1:0",
        "--json",
    ];
    args.extend(extra);
    let mut child = start(&args, tmp);
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "cidboot ended before the workload ran"
        );
        if line.starts_with("probe: args=") {
            break;
        }
    }
    assert_eq!(
        processes_with(token).len(),
        1,
        "the workload is not running"
    );
    let rest = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    (child, rest)
}

#[test]
fn an_interrupted_run_stops_the_workload_and_removes_its_root() {
    let token = format!("token-{}", fastrand::u64(..));
    let s = serve(&setuid_image(json!({
        "Entrypoint": ["/bin/probe"], "Cmd": ["sleep", "600000", "print", token], "User": "app",
    })));
    let tmp = s.tmpdir("tmp");
    let (child, rest) = run_sleeping(&s, &tmp, &token, &[]);
    // While the workload runs, the root with its setuid file is the run's alone.
    let work = named(&tmp, "cidboot-run-");
    assert_eq!(work.len(), 1, "{:?}", entries(&tmp));
    unreachable_by_another_user(&work[0], &work[0].join("rootfs/bin/suid-probe"));
    let (code, _, stderr) = interrupt(child, Signal::SIGINT);
    let stdout = rest.join().unwrap();
    assert_eq!(code, Some(130), "{stderr}");
    assert!(
        stderr.contains("SIGINT: stopping the workload")
            && stderr.contains("the workload was stopped")
            && stderr.contains("interrupted by SIGINT: removed"),
        "{stderr}"
    );
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(
        (&last["exit_code"], &last["ended"]),
        (&json!(130), &json!("cidboot"))
    );
    assert!(
        processes_with(&token).is_empty(),
        "the workload outlived the run"
    );
    assert!(entries(&tmp).is_empty(), "left behind: {:?}", entries(&tmp));
}

#[test]
fn a_kept_root_is_emptied_on_sighup_and_must_be_private() {
    let token = format!("token-{}", fastrand::u64(..));
    let s = serve(&setuid_image(json!({
        "Entrypoint": ["/bin/probe"], "Cmd": ["sleep", "600000", "print", token],
    })));
    let tmp = s.tmpdir("tmp");
    // A root kept where other users can reach it is refused before anything is fetched.
    let open = s.work.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = cidboot()
        .args(["run", &s.reference, "--gateway", &s.direct.url])
        .args(["--rootfs", open.join("root").to_str().unwrap()])
        .env("TMPDIR", &tmp)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(125), "{stderr}");
    assert!(
        stderr.contains("other local users can reach it"),
        "{stderr}"
    );
    assert!(entries(&open).is_empty(), "{:?}", entries(&open));
    // In a private directory it is used, and emptied when the run is interrupted.
    let private = s.work.path().join("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let rootfs = private.join("root");
    let (child, _rest) = run_sleeping(&s, &tmp, &token, &["--rootfs", rootfs.to_str().unwrap()]);
    assert!(rootfs.join("bin/suid-probe").exists());
    assert!(private.join(".root.cidboot-partial").exists());
    let (code, _, stderr) = interrupt(child, Signal::SIGHUP);
    assert_eq!(code, Some(129), "{stderr}");
    assert!(
        stderr.contains("interrupted by SIGHUP: removed ")
            && stderr.contains(&format!("emptied {}", rootfs.display())),
        "{stderr}"
    );
    assert!(processes_with(&token).is_empty());
    assert!(
        entries(&rootfs).is_empty(),
        "left in the root: {:?}",
        entries(&rootfs)
    );
    assert_eq!(entries(&private), vec!["root".to_string()]);
    assert!(entries(&tmp).is_empty(), "left behind: {:?}", entries(&tmp));
}

#[test]
fn the_leftovers_of_killed_runs_are_removed_by_the_next_and_live_ones_kept() {
    let s = serve(&setuid_image(json!({"Entrypoint": ["/bin/probe"]})));
    let tmp = s.tmpdir("tmp");
    let out = s.work.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let unpack = |target: &str, gw: &str| {
        start(
            &[
                "unpack",
                &s.reference,
                "--gateway",
                gw,
                "--rootfs",
                out.join(target).to_str().unwrap(),
            ],
            &tmp,
        )
    };
    // One that is running, stalled mid-transfer.
    let live = unpack("b", &s.staller.url);
    s.staller.wait_stalled();
    let alive = named(&out, ".cidboot-unpack-");
    assert_eq!(alive.len(), 1);
    let alive = alive[0].clone();
    // One killed mid-transfer: it cannot remove anything itself. (Starting, it saw the
    // running one's directory and left it alone.)
    s.staller.stalled.store(false, Ordering::SeqCst);
    let mut killed = unpack("a", &s.staller.url);
    s.staller.wait_stalled();
    killed.kill().unwrap();
    killed.wait().unwrap();
    let dead: Vec<PathBuf> = named(&out, ".cidboot-unpack-")
        .into_iter()
        .filter(|p| *p != alive)
        .collect();
    assert_eq!(dead.len(), 1, "{:?}", entries(&out));
    assert!(alive.exists());
    // The next unpack beside them removes the dead one only, and completes.
    let o = unpack("c", &s.direct.url).wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        !dead[0].exists(),
        "the killed unpack's staging is still there"
    );
    assert!(alive.exists(), "a running unpack's staging was removed");
    assert!(out.join("c/bin/suid-probe").exists());
    let (code, _, _) = interrupt(live, Signal::SIGINT);
    assert_eq!(code, Some(130));
    assert_eq!(entries(&out), vec!["c".to_string()]);

    // The same for `run`: a killed run's scratch in $TMPDIR, and a killed run's kept root.
    let private = s.work.path().join("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let rootfs = private.join("root");
    s.staller.stalled.store(false, Ordering::SeqCst);
    let mut killed = start(
        &[
            "run",
            &s.reference,
            "--gateway",
            &s.staller.url,
            "--rootfs",
            rootfs.to_str().unwrap(),
            "--attestation-listen",
            "127.0.0.1:0",
        ],
        &tmp,
    );
    s.staller.wait_stalled();
    wait_for(&rootfs.join("bin/suid-probe"));
    killed.kill().unwrap();
    killed.wait().unwrap();
    assert_eq!(named(&tmp, "cidboot-run-").len(), 1);
    assert!(!entries(&rootfs).is_empty());
    // The next run in the same places empties the kept root, removes the scratch, and runs.
    let o = cidboot()
        .args(["run", &s.reference, "--gateway", &s.direct.url])
        .args(["--rootfs", rootfs.to_str().unwrap()])
        .args(["--attestation-listen", "127.0.0.1:0"])
        .env("TMPDIR", &tmp)
        .env("CIDBOOT_LOG", "info")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("emptied the root an interrupted cidboot run left behind")
            && stderr.contains("removed what an interrupted cidboot left behind"),
        "{stderr}"
    );
    assert!(entries(&tmp).is_empty(), "left behind: {:?}", entries(&tmp));
    // Kept after a run that ended, without its lock file.
    assert!(rootfs.join("bin/suid-probe").exists());
    assert_eq!(entries(&private), vec!["root".to_string()]);
}

/// A kubo-compatible RPC endpoint whose network stalls mid-upload: it reads the request head
/// and the first 64 KiB of the body, then stops reading, and holds the connection.
fn stalling_endpoint() -> (String, Arc<AtomicBool>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let stalled = Arc::new(AtomicBool::new(false));
    let flag = stalled.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let flag = flag.clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                let mut buf = [0u8; 8192];
                while got.len() < 64 << 10 {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                flag.store(true, Ordering::SeqCst);
                std::thread::sleep(Duration::from_secs(600));
            });
        }
    });
    (url, stalled)
}

/// `publish` interrupted while the CAR goes out: its staged CAR (private meanwhile) is removed
/// and it ends with 128 + the signal.
#[test]
fn an_interrupted_publish_mid_upload_leaves_no_staged_car() {
    let s = serve(&setuid_image(json!({"Entrypoint": ["/bin/probe"]})));
    let layout = s.work.path().join("layout");
    for (sig, code) in [(Signal::SIGINT, 130), (Signal::SIGTERM, 143)] {
        let (url, stalled) = stalling_endpoint();
        let tmp = s.tmpdir(&format!("tmp-{code}"));
        let mut c = cidboot();
        c.args(["publish", layout.to_str().unwrap(), "--to"])
            .arg(format!("rpc:{url}"))
            .env("TMPDIR", &tmp)
            .env("CIDBOOT_LOG", "info")
            .env("CIDBOOT_RPC_TOKEN", "t")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = c.spawn().unwrap();
        let t0 = Instant::now();
        while !stalled.load(Ordering::SeqCst) {
            assert!(t0.elapsed() < Duration::from_secs(60), "no upload began");
            std::thread::sleep(Duration::from_millis(20));
        }
        let staged = named(&tmp, "cidboot-publish-");
        assert_eq!(staged.len(), 1, "{:?}", entries(&tmp));
        assert_eq!(
            std::fs::symlink_metadata(&staged[0]).unwrap().mode() & 0o7777,
            0o700
        );
        assert!(staged[0].join("image.car").is_file());
        let (got, _, stderr) = interrupt(child, sig);
        assert_eq!(got, Some(code), "{stderr}");
        assert!(
            stderr.contains(&format!("interrupted by {}: removed", sig.as_str())),
            "{stderr}"
        );
        assert!(entries(&tmp).is_empty(), "left behind: {:?}", entries(&tmp));
    }
}

/// `check` interrupted while it fetches the image's large layer: nothing is left, and it ends
/// with 128 + the signal.
#[test]
fn an_interrupted_check_mid_transfer_leaves_nothing() {
    for (sig, code) in [(Signal::SIGINT, 130), (Signal::SIGTERM, 143)] {
        let s = serve(&setuid_image(json!({"Entrypoint": ["/bin/probe"]})));
        let tmp = s.tmpdir("tmp");
        let child = start(&["check", &s.reference, "--gateway", &s.staller.url], &tmp);
        s.staller.wait_stalled();
        let (got, _, stderr) = interrupt(child, sig);
        assert_eq!(got, Some(code), "{stderr}");
        assert!(
            stderr.contains(&format!("interrupted by {}", sig.as_str())),
            "{stderr}"
        );
        assert!(entries(&tmp).is_empty(), "left behind: {:?}", entries(&tmp));
    }
}
