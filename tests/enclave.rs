//! `cidboot host` with `[enclave]`: the launcher, the watch and the restart policy, against a
//! stand-in `nitro-cli` whose enclaves are real processes that report their status to the
//! host's log sink over its Unix socket, as an enclave's PID 1 does over vsock. Each runs as
//! the process the stand-in reports as the enclave's (`ProcessID`), which is what makes the
//! supervisor take its status; a status from any other peer is ignored.
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
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cidboot;

/// The stand-in: `run-enclave` starts `enclave.py` in the background with the next line of
/// `plan` and prints nitro-cli's JSON after a progress line; `describe-enclaves` lists those
/// whose `running.ID` file exists; `terminate-enclave` kills one; `console` prints two lines
/// and lasts as long as the enclave. Every call is appended to `calls`.
const NITRO_CLI: &str = r#"#!/bin/bash
set -u
d=$(dirname "$0")
echo "$*" >>"$d/calls"
case "$1" in
run-enclave)
  n=$(( $(cat "$d/count" 2>/dev/null || echo 0) + 1 )); echo "$n" >"$d/count"
  plan=$(sed -n "${n}p" "$d/plan"); [ -n "$plan" ] || plan=$(tail -n1 "$d/plan")
  if [ "$plan" = fail ]; then echo "[ E26 ] Insufficient memory requested." >&2; exit 1; fi
  id="i-fake-enc$n"
  date +%s.%N >"$d/start.$n"
  touch "$d/running.$id"
  python3 "$d/enclave.py" "$d" "$plan" "$id" "$n" >/dev/null 2>&1 </dev/null &
  echo "$!" >"$d/pid.$id"
  echo "Start allocating memory..."
  printf '{\n  "EnclaveName": "fake",\n  "EnclaveID": "%s",\n  "ProcessID": %d,\n  "EnclaveCID": 16\n}\n' "$id" "$!" ;;
describe-enclaves)
  printf '['; sep=
  for f in "$d"/running.*; do
    [ -e "$f" ] || continue
    printf '%s{"EnclaveID":"%s","State":"RUNNING","Flags":"DEBUG_MODE"}' "$sep" "${f##*/running.}"; sep=,
  done
  printf ']\n' ;;
terminate-enclave)
  id=$3; kill "$(cat "$d/pid.$id")" 2>/dev/null; rm -f "$d/running.$id"
  printf '{"EnclaveID":"%s","Terminated":true}\n' "$id" ;;
console)
  id=$3; echo "console of $id: booting"; printf 'escape \033[2J here\n'
  while [ -e "$d/running.$id" ]; do sleep 0.1; done ;;
*) echo "unknown command $1" >&2; exit 2 ;;
esac
"#;

/// A fake enclave: reports to the log sink like PID 1 (a hello naming its boot, then numbered
/// frames of kind, sequence, length and payload, until the sink acknowledges the last), then
/// "powers off". Plans: an exit code, `none` (no status), `hang` (no status, runs on),
/// `waitN` (exit code N once the file `go` exists).
const ENCLAVE: &str = r#"
import json, os, socket, struct, sys, time
d, plan, eid, n = sys.argv[1:5]
def frame(s, kind, seq, payload):
    s.sendall(struct.pack(">BQI", kind, seq, len(payload)) + payload)
def exact(s, k):
    b = b""
    while len(b) < k:
        c = s.recv(k - len(b))
        if not c:
            raise EOFError
        b += c
    return b
sent = [0]
def record(s, kind, payload):
    sent[0] += 1
    frame(s, kind, sent[0], payload)
s = socket.socket(socket.AF_UNIX)
s.settimeout(10)
s.connect(os.path.join(d, "logs.sock"))
frame(s, 5, 0, json.dumps({"boot": os.urandom(16).hex(), "secret": os.urandom(32).hex(), "name": "fake"}).encode())
record(s, 4, ("fake enclave %s booted" % eid).encode())
if plan.startswith("wait"):
    while not os.path.exists(os.path.join(d, "go")):
        time.sleep(0.1)
    plan = plan[4:]
if plan not in ("none", "hang"):
    record(s, 3, json.dumps({"exit_code": int(plan), "reason": "the workload exited"}, separators=(",", ":")).encode())
while True:
    kind, seq, size = struct.unpack(">BQI", exact(s, 13))
    exact(s, size)
    if kind == 6 and seq >= sent[0]:
        break
s.close()
if plan == "hang":
    time.sleep(3600)
time.sleep(0.3)
open(os.path.join(d, "end.%s" % n), "w").write("%.6f" % time.time())
os.remove(os.path.join(d, "running." + eid))
"#;

struct Host {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Host {
    /// Starts `cidboot host` with a log sink and `[enclave]` (plus `extra` keys) on the
    /// stand-in in `d`, whose enclaves follow `plan`.
    fn start(d: &Path, plan: &[&str], extra: &str) -> Host {
        std::fs::write(d.join("nitro-cli"), NITRO_CLI).unwrap();
        std::fs::set_permissions(
            d.join("nitro-cli"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        std::fs::write(d.join("enclave.py"), ENCLAVE).unwrap();
        std::fs::write(d.join("plan"), plan.join("\n") + "\n").unwrap();
        std::fs::write(d.join("x.eif"), b"an EIF").unwrap();
        let config = format!(
            "[logs]\nlisten = \"unix:{d}/logs.sock\"\n\n[enclave]\neif = \"{d}/x.eif\"\nmemory_mib = 512\ncpu_count = 2\ncid = 16\ndebug_mode = true\nnitro_cli = \"{d}/nitro-cli\"\npoll_secs = 1\n{extra}\n",
            d = d.display()
        );
        std::fs::write(d.join("host.toml"), &config).unwrap();
        let mut child = cidboot()
            .args(["host", "--config"])
            .arg(d.join("host.toml"))
            .env("CIDBOOT_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let collect = |r: Box<dyn Read + Send>| {
            let l = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(r).lines() {
                    let Ok(line) = line else { break };
                    l.lock().unwrap().push(line);
                }
            });
        };
        collect(Box::new(child.stdout.take().unwrap()));
        collect(Box::new(child.stderr.take().unwrap()));
        Host { child, lines }
    }

    fn wait_for(&self, needle: &str, limit: Duration) -> String {
        let start = Instant::now();
        loop {
            if let Some(l) = self.find(needle) {
                return l;
            }
            assert!(
                start.elapsed() < limit,
                "no {needle:?} in the host's output:\n{}",
                self.lines.lock().unwrap().join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn find(&self, needle: &str) -> Option<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains(needle))
            .cloned()
    }

    fn all(&self, needle: &str) -> Vec<String> {
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `-L` directory `host` checks for QEMU's firmware, as the emulator's setup lays it out.
fn qemu_firmware(d: &Path) {
    std::fs::create_dir_all(d.join("fw")).unwrap();
    for f in ["bios-microvm.bin", "linuxboot_dma.bin"] {
        std::fs::write(d.join("fw").join(f), b"firmware").unwrap();
    }
}

fn launches(d: &Path) -> usize {
    std::fs::read_to_string(d.join("calls"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("run-enclave"))
        .count()
}

fn time_file(p: &Path) -> f64 {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn never_launches_once_with_the_nitro_cli_command_line_and_captures_the_console() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let host = Host::start(d, &["1"], "restart = \"never\"");
    host.wait_for("not relaunching the enclave", Duration::from_secs(30));
    let ended = host.wait_for("the enclave ended", Duration::from_secs(1));
    assert!(ended.contains("exit code 1"), "{ended}");
    let calls = std::fs::read_to_string(d.join("calls")).unwrap();
    let run = format!(
        "run-enclave --eif-path {}/x.eif --memory 512 --cpu-count 2 --enclave-cid 16 --debug-mode",
        d.display()
    );
    assert!(calls.lines().any(|l| l == run), "{calls}");
    assert!(
        calls.contains("console --enclave-id i-fake-enc1"),
        "{calls}"
    );
    assert!(calls.contains("describe-enclaves"), "{calls}");
    host.wait_for(
        "console: console of i-fake-enc1: booting",
        Duration::from_secs(5),
    );
    // The console's terminal escape reaches the log escaped, not as an escape.
    let esc = host.wait_for("console: escape", Duration::from_secs(5));
    assert!(
        esc.contains("\\u{1b}[2J") && !esc.contains('\x1b'),
        "{esc:?}"
    );
    host.wait_for("[status] {\"exit_code\":1", Duration::from_secs(1));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(launches(d), 1, "relaunched under restart = \"never\"");
    // The other services keep running.
    assert!(std::os::unix::net::UnixStream::connect(d.join("logs.sock")).is_ok());
}

#[test]
fn on_failure_relaunches_failed_boots_with_doubling_capped_backoff_until_one_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // An exit code 1, an enclave that vanishes without a status, three more failures, then 0.
    let host = Host::start(
        d,
        &["1", "none", "3", "1", "1", "0"],
        "restart = \"on-failure\"\nrestart_backoff_secs = 1\nrestart_backoff_max_secs = 2",
    );
    host.wait_for("not relaunching the enclave", Duration::from_secs(90));
    assert_eq!(launches(d), 6);
    let ended = host.all("the enclave ended");
    assert_eq!(ended.len(), 6, "{ended:#?}");
    assert!(ended[1].contains("without a status"), "{}", ended[1]);
    assert!(ended[5].contains("outcome=succeeded"), "{}", ended[5]);
    let delays: Vec<String> = host
        .all("relaunching the enclave after a delay")
        .iter()
        .map(|l| {
            let at = l.find("delay_secs=").unwrap();
            l[at..].split_whitespace().next().unwrap().to_string()
        })
        .collect();
    assert_eq!(
        delays,
        [
            "delay_secs=1",
            "delay_secs=2",
            "delay_secs=2",
            "delay_secs=2",
            "delay_secs=2"
        ]
    );
    // Measured between the enclave's end and the next launch: at least the delay, and not more
    // than the delay plus one poll, the status grace for the boot without a status, and slack.
    for n in 1..6 {
        let gap =
            time_file(&d.join(format!("start.{}", n + 1))) - time_file(&d.join(format!("end.{n}")));
        let delay = if n == 1 { 1.0 } else { 2.0 };
        let grace = if n == 2 { 5.0 } else { 0.0 };
        assert!(
            gap >= delay && gap <= delay + 1.0 + grace + 2.5,
            "boot {n}: relaunched {gap:.2}s after it ended (delay {delay}s)"
        );
    }
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        launches(d),
        6,
        "relaunched after a success under on-failure"
    );
}

#[test]
fn always_relaunches_successful_boots_up_to_max_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let host = Host::start(
        d,
        &["0"],
        "restart = \"always\"\nrestart_backoff_secs = 1\nmax_restarts = 2\n\n[metrics]\nlisten = \"127.0.0.1:0\"",
    );
    host.wait_for("max_restarts reached", Duration::from_secs(60));
    assert_eq!(launches(d), 3);
    // The relaunches are counted on /metrics.
    let l = host.wait_for("metrics listening on ", Duration::from_secs(5));
    let addr = l.split(" listening on ").nth(1).unwrap().trim();
    let mut m = std::net::TcpStream::connect(addr.strip_prefix("tcp:").unwrap_or(addr)).unwrap();
    std::io::Write::write_all(&mut m, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut body = String::new();
    let _ = std::io::Read::read_to_string(&mut m, &mut body);
    assert!(
        body.lines()
            .any(|l| l == "cidboot_enclave_restarts_total 2"),
        "{body}"
    );
    assert_eq!(host.all("the enclave ended").len(), 3);
    assert!(host
        .all("the enclave ended")
        .iter()
        .all(|l| l.contains("outcome=succeeded")));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(launches(d), 3);
}

#[test]
fn a_launch_that_fails_is_a_failed_boot_and_names_nitro_clis_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let host = Host::start(d, &["fail", "0"], "restart = \"on-failure\"");
    let e = host.wait_for("the enclave failed to start", Duration::from_secs(30));
    assert!(e.contains("Insufficient memory requested"), "{e}");
    // The policy is named as host.toml spells it.
    assert!(e.contains("policy=on-failure"), "{e}");
    let l = host.wait_for(
        "relaunching the enclave after a delay",
        Duration::from_secs(5),
    );
    assert!(l.contains("policy=on-failure"), "{l}");
    let l = host.wait_for("not relaunching the enclave", Duration::from_secs(30));
    assert!(
        l.contains("policy=on-failure") && l.contains("succeeded"),
        "{l}"
    );
    assert_eq!(launches(d), 2);
}

/// Stopped while waiting to relaunch an enclave that never started, the host says that no
/// enclave ran and why the last one did not start, and terminates nothing.
#[test]
fn a_stop_after_a_failed_start_says_no_enclave_ran() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut host = Host::start(
        d,
        &["fail"],
        "restart = \"on-failure\"\nrestart_backoff_secs = 60",
    );
    host.wait_for(
        "relaunching the enclave after a delay",
        Duration::from_secs(30),
    );
    let pid = nix::unistd::Pid::from_raw(host.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let start = Instant::now();
    while host.child.try_wait().unwrap().is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no exit on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let stopped = host.wait_for("enclave supervision stopped", Duration::from_secs(5));
    assert!(
        stopped.contains("no enclave was running")
            && stopped.contains("failed to start")
            && stopped.contains("Insufficient memory requested"),
        "{stopped}"
    );
    let all = host.lines.lock().unwrap().join("\n");
    assert!(!all.contains("the enclave was terminated"), "{all}");
    assert!(!all.contains("OnFailure"), "{all}");
    let calls = std::fs::read_to_string(d.join("calls")).unwrap();
    assert!(!calls.contains("terminate-enclave"), "{calls}");
}

#[test]
fn sigterm_terminates_the_enclave_and_then_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut host = Host::start(d, &["hang"], "restart = \"always\"");
    host.wait_for("fake enclave i-fake-enc1 booted", Duration::from_secs(30));
    assert!(d.join("running.i-fake-enc1").exists());
    let pid = nix::unistd::Pid::from_raw(host.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = host.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the host did not exit on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0), "a graceful stop: {status:?}");
    let calls = std::fs::read_to_string(d.join("calls")).unwrap();
    assert!(
        calls.contains("terminate-enclave --enclave-id i-fake-enc1"),
        "{calls}"
    );
    assert!(!d.join("running.i-fake-enc1").exists());
    assert_eq!(launches(d), 1);
    host.wait_for(
        "enclave supervision stopped: the enclave was terminated",
        Duration::from_secs(5),
    );
}

#[test]
fn a_bad_enclave_section_or_a_missing_eif_stops_the_host_before_it_listens() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = format!(
        "[logs]\nlisten = \"unix:{d}/logs.sock\"\n[enclave]\nmemory_mib = 512\ncpu_count = 2\ncid = 16\n",
        d = d.display()
    );
    for (extra, want) in [
        (
            format!(
                "eif = \"{}/x.eif\"\nrestart_backoff_secs = 0\n",
                d.display()
            ),
            "restart_backoff_secs",
        ),
        (
            format!("eif = \"{}/missing.eif\"\n", d.display()),
            "missing.eif",
        ),
    ] {
        std::fs::write(d.join("host.toml"), format!("{base}{extra}")).unwrap();
        let out = cidboot()
            .args(["host", "--config"])
            .arg(d.join("host.toml"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{extra}: {text}");
        assert!(text.contains(want), "{extra}: {text}");
        assert!(
            !d.join("logs.sock").exists(),
            "{extra}: the log sink listened"
        );
    }
}

/// The QEMU launcher against stand-ins for QEMU and vhost-device-vsock that record their
/// arguments and SIGTERM: the backend starts first, the console is QEMU's stdout, and SIGTERM
/// to the host stops both before the host exits.
#[test]
fn the_qemu_launcher_starts_the_backend_then_qemu_and_stops_both_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let script = |name: &str, body: &str| {
        let p = d.join(name);
        std::fs::write(&p, format!("#!/bin/bash\nd=$(dirname \"$0\")\n{body}\ntrap 'echo term >>\"$d/{name}.term\"; exit 0' TERM\nwhile :; do sleep 0.1; done\n")).unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        p
    };
    let vhost = script(
        "vhost",
        "echo \"$*\" >\"$d/vhost.args\"\nfor a; do case $a in --socket=*) touch \"${a#--socket=}\";; esac; done",
    );
    let qemu = script(
        "qemu",
        "[ -e \"$d/vsock.vhost\" ] || exit 3\necho \"$*\" >\"$d/qemu.args\"\necho 'console line from the fake machine'",
    );
    std::fs::write(d.join("x.eif"), b"an EIF").unwrap();
    qemu_firmware(d);
    let config = format!(
        "[logs]\nlisten = \"unix:{d}/vsock_8002\"\n[enclave]\nlauncher = \"qemu\"\neif = \"{d}/x.eif\"\nmemory_mib = 256\ncpu_count = 1\ncid = 4\ndebug_mode = true\npoll_secs = 1\n[enclave.qemu]\nqemu = \"{q}\"\nfirmware = \"{d}/fw\"\nvhost_device_vsock = \"{v}\"\nuds_path = \"{d}/vsock\"\nappend = \"cidboot.parent_cid=2\"\n",
        d = d.display(),
        q = qemu.display(),
        v = vhost.display()
    );
    std::fs::write(d.join("host.toml"), config).unwrap();
    let mut child = cidboot()
        .args(["host", "--config"])
        .arg(d.join("host.toml"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    for r in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(r).lines().map_while(Result::ok) {
                l.lock().unwrap().push(line);
            }
        });
    }
    let host = Host { child, lines };
    host.wait_for(
        "console: console line from the fake machine",
        Duration::from_secs(30),
    );
    let vargs = std::fs::read_to_string(d.join("vhost.args")).unwrap();
    assert_eq!(
        vargs.trim(),
        format!(
            "--guest-cid=4 --socket={d}/vsock.vhost --uds-path={d}/vsock",
            d = d.display()
        )
    );
    let qargs = std::fs::read_to_string(d.join("qemu.args")).unwrap();
    for want in [
        format!("-L {}/fw -M nitro-enclave,vsock=c0,", d.display()),
        format!(
            "-kernel {}/x.eif -append cidboot.parent_cid=2 ",
            d.display()
        ),
        "-m 256M -smp 1 -accel tcg -no-reboot".to_string(),
        format!("-chardev socket,id=c0,path={}/vsock.vhost", d.display()),
    ] {
        assert!(qargs.contains(&want), "{want:?} not in {qargs:?}");
    }
    let mut host = host;
    let pid = nix::unistd::Pid::from_raw(host.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = host.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the host did not exit on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0), "a graceful stop: {status:?}");
    assert!(d.join("qemu.term").exists(), "QEMU got no SIGTERM");
    assert!(
        d.join("vhost.term").exists(),
        "vhost-device-vsock got no SIGTERM"
    );
}

/// A hello of a boot of its own, then a final status claiming exit code 1, from a local peer
/// that is not the enclave: returns once the sink has acknowledged it (it is written).
fn forge_status(sock: &Path) {
    use std::io::Write;
    let frame = |kind: u8, seq: u64, payload: &[u8]| {
        let mut f = vec![kind];
        f.extend_from_slice(&seq.to_be_bytes());
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        f.extend_from_slice(payload);
        f
    };
    let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let hello = format!(
        r#"{{"boot":"{:032x}","secret":"{:064x}","name":"fake"}}"#,
        fastrand::u128(..),
        fastrand::u128(..)
    );
    s.write_all(&frame(5, 0, hello.as_bytes())).unwrap();
    s.write_all(&frame(
        3,
        1,
        b"{\"exit_code\":1,\"reason\":\"forged\\nby a local peer\"}",
    ))
    .unwrap();
    let mut ack = [0u8; 13];
    loop {
        s.read_exact(&mut ack).unwrap();
        if ack[1..9] == 1u64.to_be_bytes() {
            return;
        }
    }
}

/// A status forged by a local peer beside a running enclave: logged and ignored; the enclave
/// runs on, and its own status decides the boot.
#[test]
fn a_forged_status_beside_a_nitro_cli_enclave_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let host = Host::start(d, &["wait0"], "restart = \"never\"");
    host.wait_for("fake enclave i-fake-enc1 booted", Duration::from_secs(30));
    forge_status(&d.join("logs.sock"));
    let ignored = host.wait_for(
        "a status from a peer that is not the supervised enclave: ignored",
        Duration::from_secs(10),
    );
    assert!(ignored.contains("forged\\nby a local peer"), "{ignored}");
    // Three polls later the enclave still runs, and the supervisor decided nothing.
    std::thread::sleep(Duration::from_secs(3));
    assert!(d.join("running.i-fake-enc1").exists());
    assert!(host.find("the enclave ended").is_none());
    assert!(host.find("terminat").is_none());
    std::fs::write(d.join("go"), b"").unwrap();
    host.wait_for("not relaunching the enclave", Duration::from_secs(30));
    let ended = host.wait_for("the enclave ended", Duration::from_secs(1));
    assert!(ended.contains("outcome=succeeded"), "{ended}");
    assert_eq!(launches(d), 1);
}

/// The emulated enclave's statuses reach the sink through its vsock backend, the process the
/// launcher started; here the stand-in backend is the enclave too. A local peer's status on
/// the same Unix socket is ignored, and QEMU is not torn down.
#[test]
fn a_forged_status_beside_a_qemu_enclave_is_ignored_and_qemu_runs_on() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("enclave.py"), QEMU_ENCLAVE).unwrap();
    let script = |name: &str, body: &str| {
        let p = d.join(name);
        std::fs::write(&p, format!("#!/bin/bash\nd=$(dirname \"$0\")\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        p
    };
    // The backend creates its vhost-user socket, then becomes the enclave (same process).
    let vhost = script(
        "vhost",
        "for a; do case $a in --socket=*) touch \"${a#--socket=}\";; esac; done\nexec python3 \"$d/enclave.py\" \"$d\"",
    );
    // QEMU runs until the enclave powers off.
    let qemu = script(
        "qemu",
        "while [ ! -e \"$d/off\" ]; do sleep 0.1; done\necho 'powered off'",
    );
    std::fs::write(d.join("x.eif"), b"an EIF").unwrap();
    qemu_firmware(d);
    let config = format!(
        "[logs]\nlisten = \"unix:{d}/vsock_8002\"\n[enclave]\nlauncher = \"qemu\"\neif = \"{d}/x.eif\"\nmemory_mib = 256\ncpu_count = 1\ncid = 4\ndebug_mode = true\npoll_secs = 1\nrestart = \"never\"\n[enclave.qemu]\nqemu = \"{q}\"\nfirmware = \"{d}/fw\"\nvhost_device_vsock = \"{v}\"\nuds_path = \"{d}/vsock\"\n",
        d = d.display(),
        q = qemu.display(),
        v = vhost.display()
    );
    std::fs::write(d.join("host.toml"), config).unwrap();
    let mut child = cidboot()
        .args(["host", "--config"])
        .arg(d.join("host.toml"))
        .env("CIDBOOT_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    for r in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(r).lines().map_while(Result::ok) {
                l.lock().unwrap().push(line);
            }
        });
    }
    let host = Host { child, lines };
    host.wait_for(
        "[init] the emulated enclave booted",
        Duration::from_secs(30),
    );
    forge_status(&d.join("vsock_8002"));
    host.wait_for(
        "a status from a peer that is not the supervised enclave: ignored",
        Duration::from_secs(10),
    );
    std::thread::sleep(Duration::from_secs(3));
    assert!(host.find("the enclave ended").is_none());
    assert!(host.find("QEMU exited").is_none(), "QEMU was stopped");
    std::fs::write(d.join("go"), b"").unwrap();
    host.wait_for("not relaunching the enclave", Duration::from_secs(30));
    let ended = host.wait_for("the enclave ended", Duration::from_secs(1));
    assert!(ended.contains("outcome=succeeded"), "{ended}");
    assert!(host.find("QEMU exited").is_some());
    assert!(host.find("terminating it").is_none());
}

/// The emulated enclave behind the stand-in backend: boots, waits for `go`, reports exit code
/// 0, and powers off (QEMU's stand-in ends when `off` exists).
const QEMU_ENCLAVE: &str = r#"
import json, os, socket, struct, sys, time
d = sys.argv[1]
def frame(s, kind, seq, payload):
    s.sendall(struct.pack(">BQI", kind, seq, len(payload)) + payload)
s = socket.socket(socket.AF_UNIX)
s.settimeout(30)
s.connect(os.path.join(d, "vsock_8002"))
frame(s, 5, 0, json.dumps({"boot": os.urandom(16).hex(), "secret": os.urandom(32).hex()}).encode())
frame(s, 4, 1, b"the emulated enclave booted")
while not os.path.exists(os.path.join(d, "go")):
    time.sleep(0.1)
frame(s, 3, 2, json.dumps({"exit_code": 0, "reason": "the workload exited"}).encode())
while True:
    kind, seq, size = struct.unpack(">BQI", s.recv(13, socket.MSG_WAITALL))
    if kind == 6 and seq >= 2:
        break
open(os.path.join(d, "off"), "w").close()
time.sleep(3600)
"#;

/// Sends statuses of a boot of its own to the sink at `sock`, 256 at a time, each batch once
/// the one before is acknowledged, until `stop`: returns how many.
fn flood_statuses(sock: &Path, stop: &std::sync::atomic::AtomicBool) -> u64 {
    use std::io::Write;
    let frame = |kind: u8, seq: u64, payload: &[u8], out: &mut Vec<u8>| {
        out.push(kind);
        out.extend_from_slice(&seq.to_be_bytes());
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(payload);
    };
    let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut hello = Vec::new();
    let h = format!(
        r#"{{"boot":"{:032x}","secret":"{:064x}","name":"flood"}}"#,
        fastrand::u128(..),
        fastrand::u128(..)
    );
    frame(5, 0, h.as_bytes(), &mut hello);
    s.write_all(&hello).unwrap();
    let mut seq = 0u64;
    let mut ack = [0u8; 13];
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let mut batch = Vec::new();
        for _ in 0..256 {
            seq += 1;
            frame(3, seq, br#"{"exit_code":1,"reason":"flood"}"#, &mut batch);
        }
        s.write_all(&batch).unwrap();
        loop {
            s.read_exact(&mut ack).unwrap();
            if u64::from_be_bytes(ack[1..9].try_into().unwrap()) >= seq {
                break;
            }
        }
    }
    seq
}

/// Local peers flood the sink with statuses of boots of their own while the enclave reports
/// its own, and the supervisor is busy with a slow `describe-enclaves`: the enclave's status
/// still decides the boot, however many others come around it.
#[test]
fn a_flood_of_statuses_from_local_peers_does_not_hide_the_enclaves_own() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let host = Host::start(d, &["wait0"], "restart = \"on-failure\"\nmax_restarts = 1");
    host.wait_for("fake enclave i-fake-enc1 booted", Duration::from_secs(30));
    // From now on describe-enclaves takes 0.8 s, as a busy nitro-cli may.
    let slow = std::fs::read_to_string(d.join("nitro-cli"))
        .unwrap()
        .replace("describe-enclaves)\n", "describe-enclaves)\n  sleep 0.8\n");
    std::fs::write(d.join("nitro-cli.slow"), slow).unwrap();
    std::fs::set_permissions(
        d.join("nitro-cli.slow"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::rename(d.join("nitro-cli.slow"), d.join("nitro-cli")).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let flooders: Vec<_> = (0..2)
        .map(|_| {
            let (sock, stop) = (d.join("logs.sock"), stop.clone());
            std::thread::spawn(move || flood_statuses(&sock, &stop))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    std::fs::write(d.join("go"), b"").unwrap();
    let ended = host.wait_for("the enclave ended", Duration::from_secs(30));
    stop.store(true, Ordering::Relaxed);
    let sent: u64 = flooders.into_iter().map(|f| f.join().unwrap()).sum();
    assert!(sent > 1000, "only {sent} statuses were sent");
    assert!(ended.contains("outcome=succeeded"), "{ended}");
    assert_eq!(launches(d), 1);
}
