//! The shell examples of docs/ run as written, against real parts (tests/docs_examples.rs
//! parses the TOML ones). A page opts in with one line:
//! `#[test] fn page_md() { Reader::new().run_page("docs/page.md"); }`.
//!
//! How a page runs:
//! - Each ```sh block runs under `bash -euo pipefail -c`, in the page's order, in one scratch
//!   directory, as a reader going down the page would run them: what a block writes
//!   (`statement.json`, `secrets.toml`) is there for the next one.
//! - The reader's machine is real: a gateway serving the test image over HTTPS, and the test
//!   KMS (tests/kms/test_kms.py, over TLS, SigV4 checked) whose key policy is the
//!   `statement.json` of the scratch directory and which trusts the `nsm-root.pem` there,
//!   both read at each request.
//! - The environment is clean but for what a reader would have exported ([`Reader::env`]):
//!   `KEY`, `DB_PASSWORD`, AWS credentials and region, the AWS CLI's `AWS_ENDPOINT_URL_KMS`
//!   and `AWS_CA_BUNDLE` at the test KMS (which `cidboot seal` honours as `aws kms` does),
//!   `CIDBOOT_CA` for the gateway, an empty `HOME`, and a `PATH` of this build's `cidboot`, the
//!   AWS CLI (scripts/setup-tools.sh installs it beside moto) and /usr/bin:/bin.
//! - The files a reader brings are there first, under the names the pages use: `enclave.toml`
//!   (the page's `[kms]`, `[kms_proxy]`, `[workload] env` and `[[secrets]]`, at the test KMS),
//!   `eif.json`, `host.toml`, `orders-key.bin`.
//! - [`Reader::substitutions`], the only change made to a block's text, fills in the
//!   placeholders; a `…` still there fails the block.
//! - Every block must exit 0. The line before a block may say otherwise, and nothing else:
//!   `<!-- run: in the workload -->` runs it with the environment cidboot gave the workload
//!   (read from the workload's own report), while a `cidboot run` of `enclave.toml` holds its
//!   KMS proxy on loopback (`cidboot run` shares this machine's network);
//!   `<!-- not run: REASON -->` leaves it out, for the reason given.
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
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use cidboot::kms::sealed::SecretsFile;
use common::kms::{moto_python, Server, Tls};
use common::*;
use serde_json::json;

/// The principal the pages name in their statements.
const ROLE: &str = "arn:aws:iam::111122223333:role/enclave-parent";
/// What the reader seals as `$DB_PASSWORD`.
const DB_PASSWORD: &str = "correct horse battery staple";
/// The value `orders-key.bin` seals (under `purpose=orders`), for the workload to open.
const ORDERS_KEY: &[u8] = b"the orders table's data key, 32B";
/// Longest a block (or the workload's boot) may take.
const BLOCK_DEADLINE: Duration = Duration::from_secs(180);

/// How a block runs, from the comment on the line before it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Mode {
    Run,
    InWorkload,
    NotRun(String),
}

#[derive(Debug)]
struct Block {
    line: usize,
    mode: Mode,
    text: String,
}

/// Whether `line` is an HTML comment, which before a shell block must be a marker.
fn is_comment(line: &str) -> bool {
    let l = line.trim();
    l.starts_with("<!--") && l.ends_with("-->")
}

/// Whether `line` is meant as a shell block's marker.
fn is_shell_marker(line: &str) -> bool {
    let l = line.trim();
    is_comment(l) && {
        let inner = l[4..l.len() - 3].trim();
        inner.starts_with("run") || inner.starts_with("not run")
    }
}

/// The mode the line before a shell block gives; `Err` for a comment that is not a marker.
fn mode(marker: Option<&str>) -> Result<Mode, String> {
    let Some(m) = marker.map(str::trim).filter(|m| is_comment(m)) else {
        return Ok(Mode::Run);
    };
    let inner = m[4..m.len() - 3].trim();
    if inner == "run: in the workload" {
        return Ok(Mode::InWorkload);
    }
    if let Some(why) = inner.strip_prefix("not run:") {
        if !why.trim().is_empty() {
            return Ok(Mode::NotRun(why.trim().to_string()));
        }
    }
    Err(format!(
        "{m}: the marker of a shell block is `<!-- run: in the workload -->` or `<!-- not run: REASON -->`"
    ))
}

/// The ```sh blocks of a Markdown text, with their modes.
fn sh_blocks(page: &str, text: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut last: Option<&str> = None;
    let mut open: Option<(bool, Block)> = None;
    for (i, line) in text.lines().enumerate() {
        let fence = line.trim_start().starts_with("```");
        if let Some((shell, b)) = open.as_mut() {
            if fence {
                let shell = *shell;
                let (_, b) = open.take().unwrap();
                if shell {
                    out.push(b);
                }
            } else {
                b.text.push_str(line);
                b.text.push('\n');
            }
            continue;
        }
        if fence {
            let lang = line.trim_start().trim_start_matches('`').trim();
            let shell = matches!(lang, "sh" | "bash" | "shell");
            let mode = if shell {
                mode(last).unwrap_or_else(|e| panic!("{page}:{}: {e}", i + 1))
            } else {
                if last.is_some_and(is_shell_marker) {
                    panic!(
                        "{page}:{}: a shell block's marker before a ```{lang} block",
                        i + 1
                    );
                }
                Mode::Run
            };
            open = Some((
                shell,
                Block {
                    line: i + 1,
                    mode,
                    text: String::new(),
                },
            ));
        }
        if !line.trim().is_empty() {
            last = Some(line);
        }
    }
    assert!(open.is_none(), "{page}: a code block is never closed");
    out
}

/// What a block printed, and how it ended.
#[derive(Debug)]
struct Ran {
    line: usize,
    mode: Mode,
    text: String,
    env: Vec<(String, String)>,
    stdout: String,
    stderr: String,
}

/// A child's stdout, line by line, and its stderr, collected as they come.
struct Collected {
    lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
}

impl Collected {
    fn collect(child: &mut Child) -> Collected {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = BufReader::new(child.stdout.take().unwrap());
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                l.lock().unwrap().push(line);
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().unwrap();
        let e = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                e.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Collected { lines, stderr }
    }

    fn stdout(&self) -> String {
        let mut s = self.lines.lock().unwrap().join("\n");
        s.push('\n');
        s
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

/// Waits for `child` until `deadline`; past it, kills its process group.
fn wait(child: &mut Child, deadline: Instant) -> Option<std::process::ExitStatus> {
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st);
        }
        if Instant::now() > deadline {
            let pg = nix::unistd::Pid::from_raw(-(child.id() as i32));
            let _ = nix::sys::signal::kill(pg, nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn write(dir: &Path, name: &str, text: impl AsRef<[u8]>) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A reader's machine: the files, servers and environment the pages' commands expect.
struct Reader {
    dir: tempfile::TempDir,
    reference: String,
    gw: Gateway,
    kms: Server,
    tls: Tls,
    proxy_port: u16,
    hold_port: u16,
}

impl Reader {
    fn new() -> Reader {
        let dir = private_tempdir();
        let d = dir.path();
        // The workload reports its secrets, then holds while the test connects to it (a run
        // of the page's goes on at once: nobody listens there then).
        let hold_port = free_port();
        let img = probe_image(json!({
            "Entrypoint": ["/bin/probe"],
            "Cmd": ["cat", "/run/secrets/db-password", "hold", format!("127.0.0.1:{hold_port}")],
            "User": "app",
        }));
        let (reference, gw) = publish(&img, d);
        let tls = Tls::make(d);
        let kms = Server::test_kms(
            &tls,
            &d.join("nsm-root.pem"),
            &d.join("statement.json"),
            ROLE,
            None,
        );
        let reader = Reader {
            reference,
            gw,
            kms,
            tls,
            proxy_port: free_port(),
            hold_port,
            dir,
        };
        reader.bring_files();
        reader
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn key(&self) -> &str {
        &self.kms.keys[0]
    }

    /// The placeholders of the pages, and what a block gets instead: the only change made to
    /// a block's text.
    fn substitutions(&self) -> Vec<(&'static str, String)> {
        vec![
            ("ipfs://bafy…", self.reference.clone()),
            ("https://…", self.gw.url.clone()),
            ("/etc/cidboot/host.toml", "host.toml".into()),
            // The KMS proxy's default port: this reader's own, as runs go on in parallel.
            ("127.0.0.1:9394", format!("127.0.0.1:{}", self.proxy_port)),
            // The workload's own path; here, the scratch directory.
            ("/run/orders-key", "orders-key".into()),
        ]
    }

    /// What a reader would have exported.
    fn env(&self) -> Vec<(String, String)> {
        let bin = self.path().join("bin");
        let home = self.path().join("home");
        let mut env: Vec<(String, String)> = [
            ("PATH", format!("{}:/usr/bin:/bin", bin.display())),
            ("HOME", home.display().to_string()),
            ("KEY", self.key().to_string()),
            ("DB_PASSWORD", DB_PASSWORD.to_string()),
            ("AWS_ENDPOINT_URL_KMS", self.kms.url.clone()),
            ("AWS_CA_BUNDLE", self.tls.ca.display().to_string()),
            ("CIDBOOT_CA", self.gw.ca.display().to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        env.extend(self.kms.env(&home).into_iter().filter(|(k, _)| k != "HOME"));
        env
    }

    /// The files the pages' commands name, and `bin/` for `PATH`.
    fn bring_files(&self) {
        let d = self.path();
        std::fs::create_dir(d.join("home")).unwrap();
        let bin = d.join("bin");
        std::fs::create_dir(&bin).unwrap();
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_cidboot"), bin.join("cidboot")).unwrap();
        let aws = moto_python().with_file_name("aws");
        assert!(
            aws.exists(),
            "the AWS CLI is not at {} (scripts/setup-tools.sh installs it beside moto)",
            aws.display()
        );
        std::os::unix::fs::symlink(&aws, bin.join("aws")).unwrap();

        let m = json!({"Measurements": {"HashAlgorithm": "Sha384 { ... }",
            "PCR0": "a0".repeat(48), "PCR1": "b1".repeat(48), "PCR2": "c2".repeat(48)}});
        write(d, "eif.json", m.to_string());
        let ca = std::fs::read_to_string(&self.tls.ca).unwrap();
        write(
            d,
            "enclave.toml",
            format!(
                r#"image = "{reference}"

[kms]
region = "{region}"
endpoint = "{url}"

[tls]
extra_ca = """
{ca}"""

[attestation]
listen = "127.0.0.1:0"

[kms_proxy]
listen = "127.0.0.1:{proxy}"

[workload]
env = ["AWS_REGION=us-east-1", "AWS_DEFAULT_REGION=us-east-1",
       "AWS_ACCESS_KEY_ID=workload", "AWS_SECRET_ACCESS_KEY=unused"]

[[secrets]]
name = "db-password"
key_id = "{key}"
env = "DB_PASSWORD"
file = "/run/secrets/db-password"

[[secrets]]
name = "app-key"
key_id = "{key}"
env = "MNEMONIC"
format = "mnemonic"
"#,
                reference = self.reference,
                region = self.kms.region,
                url = self.kms.url,
                proxy = self.proxy_port,
                key = self.key(),
            ),
        );
        write(
            d,
            "host.toml",
            format!(
                r#"[boot]
listen = "vsock:any:8001"
config = "{d}/enclave.toml"
secrets = "{d}/secrets.toml"

[credentials]
listen = "vsock:any:8003"
source = "environment"

[egress]
listen = "vsock:any:8000"
allow = ["{kms}", "{gw}"]
"#,
                d = d.display(),
                kms = self.kms.url.trim_start_matches("https://"),
                gw = self.gw.url.trim_start_matches("https://"),
            ),
        );
        let rt = tokio::runtime::Runtime::new().unwrap();
        let context = [("purpose".to_string(), "orders".to_string())]
            .into_iter()
            .collect();
        let sealed = rt
            .block_on(
                self.kms
                    .client(&self.tls.ca, None)
                    .encrypt(self.key(), ORDERS_KEY, &context),
            )
            .unwrap();
        write(d, "orders-key.bin", &sealed.ciphertext);
    }

    /// Runs `text` (substituted) under bash in the scratch directory with `env`.
    fn bash(&self, page: &str, b: &Block, env: &[(String, String)]) -> Ran {
        let mut text = b.text.clone();
        for (from, to) in self.substitutions() {
            text = text.replace(from, &to);
        }
        assert!(
            !text.contains('…'),
            "{page}:{}: a placeholder the test does not fill in (add it to Reader::substitutions, or mark the block `<!-- not run: REASON -->`):\n{text}",
            b.line
        );
        let mut child = Command::new("/bin/bash")
            .args(["-euo", "pipefail", "-c", &text])
            .current_dir(self.path())
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let out = Collected::collect(&mut child);
        let status = wait(&mut child, Instant::now() + BLOCK_DEADLINE);
        // The readers end with the pipes.
        std::thread::sleep(Duration::from_millis(50));
        let (stdout, stderr) = (out.stdout(), out.stderr());
        assert!(
            status.is_some_and(|s| s.success()),
            "{page}:{}: the block {}; make it run, or mark it `<!-- not run: REASON -->`:\n{text}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
            b.line,
            match status {
                Some(s) => format!("ended with {s}"),
                None => format!("did not end within {BLOCK_DEADLINE:?}"),
            }
        );
        Ran {
            line: b.line,
            mode: b.mode.clone(),
            text,
            env: env.to_vec(),
            stdout,
            stderr,
        }
    }

    /// A `cidboot run` of `enclave.toml` with `secrets.toml`, as the page's run is, its
    /// workload holding until the returned guard is dropped; and the workload's environment.
    fn workload(&self) -> (Workload, Vec<(String, String)>) {
        let listener = TcpListener::bind(("127.0.0.1", self.hold_port)).unwrap();
        let d = self.path();
        let mut child = Command::new(env!("CARGO_BIN_EXE_cidboot"))
            .args(["run", &self.reference, "--gateway", &self.gw.url])
            .args(["--config", "enclave.toml", "--secrets", "secrets.toml"])
            .args(["--nsm", "software", "--nsm-pcrs", "eif.json"])
            .args(["--nsm-root-out", "nsm-root.pem"])
            .current_dir(d)
            .env_clear()
            .envs(self.env())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let out = Collected::collect(&mut child);
        listener.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + BLOCK_DEADLINE;
        let held = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("accepting the workload: {e}"),
            }
            if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
                let _ = wait(&mut child, Instant::now());
                panic!(
                    "the workload never held:\n{}\n{}",
                    out.stdout(),
                    out.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // Its report is complete once it says it holds.
        let said = format!("probe: hold 127.0.0.1:{} held", self.hold_port);
        while !out.lines.lock().unwrap().contains(&said) {
            assert!(Instant::now() < deadline, "{}", out.stdout());
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut env: Vec<(String, String)> = out
            .lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| l.strip_prefix("probe: env "))
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .filter(|(k, _)| k != "PATH" && k != "HOME")
            .collect();
        env.extend(
            self.env()
                .into_iter()
                .filter(|(k, _)| k == "PATH" || k == "HOME"),
        );
        (
            Workload {
                child,
                out,
                held: Some(held),
            },
            env,
        )
    }

    /// Runs every shell block of `page` as its marker says; what each printed.
    fn run_page(&self, page: &str) -> Vec<Ran> {
        let top = Path::new(env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(top.join(page)).unwrap();
        let blocks = sh_blocks(page, &text);
        assert!(!blocks.is_empty(), "{page}: no ```sh block");
        let mut ran = Vec::new();
        for b in &blocks {
            match &b.mode {
                Mode::Run => ran.push(self.bash(page, b, &self.env())),
                Mode::InWorkload => {
                    let (mut w, env) = self.workload();
                    ran.push(self.bash(page, b, &env));
                    w.release();
                }
                Mode::NotRun(_) => ran.push(Ran {
                    line: b.line,
                    mode: b.mode.clone(),
                    text: b.text.clone(),
                    env: Vec::new(),
                    stdout: String::new(),
                    stderr: String::new(),
                }),
            }
        }
        ran
    }
}

/// The workload of [`Reader::workload`], holding.
struct Workload {
    child: Child,
    out: Collected,
    held: Option<TcpStream>,
}

impl Workload {
    /// Lets the workload go on; it exits 0, and so does the run.
    fn release(&mut self) {
        drop(self.held.take());
        let status = wait(&mut self.child, Instant::now() + BLOCK_DEADLINE);
        assert!(
            status.is_some_and(|s| s.success()),
            "the workload's run ended with {status:?}:\n{}\n{}",
            self.out.stdout(),
            self.out.stderr()
        );
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = wait(&mut self.child, Instant::now());
    }
}

/// The block whose text contains `what`, which must have run.
fn block<'a>(ran: &'a [Ran], what: &str) -> &'a Ran {
    let b = ran
        .iter()
        .find(|r| r.text.contains(what))
        .unwrap_or_else(|| panic!("no block runs {what:?}"));
    assert!(
        !matches!(b.mode, Mode::NotRun(_)),
        "{what:?} (the block at line {}) is not run",
        b.line
    );
    b
}

#[test]
fn secrets_md() {
    let started = Instant::now();
    let reader = Reader::new();
    let ran = reader.run_page("docs/secrets.md");
    let d = reader.path();

    // What is left out, and why: nothing else.
    let excused: Vec<(&str, &str)> = ran
        .iter()
        .filter_map(|r| match &r.mode {
            Mode::NotRun(why) => Some((r.text.lines().next().unwrap_or(""), why.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(excused.len(), 2, "{excused:#?}");
    assert!(excused[0]
        .0
        .contains("aws configure export-credentials --profile sso-admin"));
    assert!(excused[1].0.contains("cat /run/secrets/db-password"));

    // The statement the page's `expect` printed is the test KMS's key policy, for this image.
    let statement: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("statement.json")).unwrap()).unwrap();
    assert_eq!(statement["Principal"]["AWS"], ROLE, "{statement}");
    // The secrets file `seal` made, once each name, under the key.
    let file = SecretsFile::parse(&std::fs::read(d.join("secrets.toml")).unwrap()).unwrap();
    let names: Vec<(&str, &str)> = file
        .secrets
        .iter()
        .map(|s| (s.name.as_str(), s.key_id.as_str()))
        .collect();
    assert_eq!(
        names,
        [("db-password", reader.key()), ("app-key", reader.key())]
    );
    assert!(block(&ran, "cidboot host --check")
        .stdout
        .ends_with("host.toml: ok\n"));

    // The run: the workload got the sealed value in its variable and its file, and the
    // generated key as 24 words.
    let run = block(&ran, "cidboot run");
    let line = |prefix: &str| {
        run.stdout
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?}:\n{}\n{}", run.stdout, run.stderr))
            .to_string()
    };
    assert_eq!(line("probe: env DB_PASSWORD="), DB_PASSWORD);
    assert_eq!(
        line("probe: cat /run/secrets/db-password hex="),
        hex::encode(DB_PASSWORD)
    );
    let words = line("probe: env MNEMONIC=");
    assert_eq!(words.split(' ').count(), 24, "{words}");
    assert!(
        words.bytes().all(|b| b == b' ' || b.is_ascii_lowercase()),
        "{words}"
    );

    // In the workload, the AWS CLI through the KMS proxy: random bytes, and the data key
    // opened into a file and printed.
    let aws = block(&ran, "aws kms decrypt");
    assert_eq!(aws.mode, Mode::InWorkload);
    // The workload's environment, as cidboot set it: the proxy's endpoint, and the page's
    // dummy credentials, which the test KMS would refuse.
    let var = |k: &str| {
        aws.env
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    };
    let proxy = format!("http://127.0.0.1:{}", reader.proxy_port);
    assert_eq!(var("AWS_ENDPOINT_URL_KMS"), Some(proxy.as_str()));
    assert_eq!(var("AWS_ACCESS_KEY_ID"), Some("workload"));
    let b64 = base64::engine::general_purpose::STANDARD;
    let printed: Vec<&str> = aws.stdout.lines().collect();
    assert_eq!(printed.len(), 2, "{}\n{}", aws.stdout, aws.stderr);
    assert_eq!(b64.decode(printed[0]).unwrap().len(), 32);
    assert_eq!(b64.decode(printed[1]).unwrap(), ORDERS_KEY);
    assert_eq!(std::fs::read(d.join("orders-key")).unwrap(), ORDERS_KEY);
    eprintln!("docs/secrets.md ran in {:?}", started.elapsed());
}

#[test]
fn markers_say_how_a_block_runs_and_nothing_else() {
    let md = "\
```sh
a
```

<!-- run: in the workload -->
```sh
b
```
<!-- not run: it needs an SSO profile -->

```sh
c
```

```toml
[x]
```
";
    let bs = sh_blocks("t.md", md);
    let modes: Vec<&Mode> = bs.iter().map(|b| &b.mode).collect();
    assert_eq!(
        modes,
        [
            &Mode::Run,
            &Mode::InWorkload,
            &Mode::NotRun("it needs an SSO profile".into())
        ]
    );
    assert_eq!(bs[1].text, "b\n");
    assert_eq!(bs[2].line, 11);
    for bad in [
        "<!-- not run -->\n```sh\nx\n```\n",
        "<!-- not run:  -->\n```sh\nx\n```\n",
        "<!-- run: somewhere -->\n```sh\nx\n```\n",
        "<!-- not run: why -->\n```toml\nx\n```\n",
        "<!-- host.toml -->\n```sh\nx\n```\n",
        "```sh\nx\n",
    ] {
        assert!(
            std::panic::catch_unwind(|| sh_blocks("t.md", bad)).is_err(),
            "{bad}"
        );
    }
}
