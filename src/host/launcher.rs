//! Starting, watching and stopping one enclave: `nitro-cli` on a real parent, QEMU's
//! `nitro-enclave` machine (with vhost-device-vsock) for an emulated one. The supervisor in
//! [`super::enclave`] drives either through [`Launcher`], so the restart policy is the same code
//! on both.
//!
//! Every command runs with a timeout and is killed when it expires; what a command prints is
//! read up to [`MAX_OUTPUT`]; console lines are cut at [`MAX_CONSOLE_LINE`].

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tracing::{info, warn};

use super::enclave::EnclaveConfig;

/// What one command may print on stdout (and, separately, on stderr) before it is cut.
pub const MAX_OUTPUT: usize = 1024 * 1024;
/// One console line; longer lines are logged in pieces of this size.
pub const MAX_CONSOLE_LINE: usize = 16 * 1024;
/// After a command exits, how long its pipes may stay open (a daemonized grandchild holding
/// them) before what was read is taken as its output.
const PIPE_GRACE: Duration = Duration::from_secs(1);
/// How long QEMU and vhost-device-vsock get to exit after SIGTERM before they are killed.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long vhost-device-vsock gets to create its socket.
pub const VSOCK_BACKEND_START: Duration = Duration::from_secs(10);

/// What goes wrong starting, watching or stopping an enclave's programs.
#[allow(missing_docs)] // each variant's #[error] message is its documentation
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("starting {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{program} {verb}: no answer within {secs}s (killed)")]
    Timeout {
        program: String,
        verb: String,
        secs: u64,
    },
    #[error("{program} {verb} failed ({status}): {stderr}")]
    Failed {
        program: String,
        verb: String,
        status: String,
        stderr: String,
    },
    #[error("{program} {verb}: unexpected output ({reason}): {output}")]
    Output {
        program: String,
        verb: String,
        reason: String,
        output: String,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("vhost-device-vsock did not create {socket} within {secs}s", secs = VSOCK_BACKEND_START.as_secs())]
    Backend { socket: String },
}

/// Starts, watches and stops enclaves of one kind.
pub trait Launcher: Send + Sync {
    /// One running enclave.
    type Enclave: Send;
    /// Starts an enclave and returns once it runs (for nitro-cli: once `run-enclave` has
    /// answered, which is after the enclave's heartbeat).
    fn launch(&self) -> impl Future<Output = Result<Self::Enclave, LaunchError>> + Send;
    /// The enclave's id, for the log.
    fn id(enclave: &Self::Enclave) -> String;
    /// The processes on the parent that speak for the enclave over a Unix socket: a status
    /// that reaches the log sink from one of them is the enclave's (over vsock, its CID says
    /// so). QEMU: the vhost-device-vsock backend, which carries everything the enclave sends.
    /// nitro-cli: the enclave's process (`ProcessID`), which a stand-in for nitro-cli may
    /// use; a real enclave speaks over vsock.
    fn peers(enclave: &Self::Enclave) -> Vec<u32>;
    /// Whether it still runs.
    fn running(
        &self,
        enclave: &mut Self::Enclave,
    ) -> impl Future<Output = Result<bool, LaunchError>> + Send;
    /// Stops it if it still runs and releases what was started with it (console capture,
    /// vsock backend). Called after every boot, whether or not it ended on its own.
    fn terminate(
        &self,
        enclave: Self::Enclave,
    ) -> impl Future<Output = Result<(), LaunchError>> + Send;
}

/// What a command printed and how it ended.
struct Ran {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

type Shared = std::sync::Arc<std::sync::Mutex<Vec<u8>>>;

/// Reads up to [`MAX_OUTPUT`] into `buf` as it arrives, so that what was read is there even if
/// the pipe never closes.
async fn read_capped<R: AsyncRead + Unpin>(r: Option<R>, buf: Shared) {
    let Some(mut r) = r else { return };
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let n = match r.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let mut b = buf.lock().unwrap_or_else(|p| p.into_inner());
        let room = MAX_OUTPUT.saturating_sub(b.len());
        b.extend_from_slice(&chunk[..n.min(room)]);
    }
}

/// Runs `program args` with a deadline; a non-zero exit is an error naming stderr.
async fn run_bounded(program: &Path, args: &[String], limit: Duration) -> Result<Ran, LaunchError> {
    let name = program.display().to_string();
    let verb = args.first().cloned().unwrap_or_default();
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| LaunchError::Spawn {
            program: name.clone(),
            source,
        })?;
    let (out_buf, err_buf) = (Shared::default(), Shared::default());
    let out = tokio::spawn(read_capped(child.stdout.take(), out_buf.clone()));
    let err = tokio::spawn(read_capped(child.stderr.take(), err_buf.clone()));
    let status = match tokio::time::timeout(limit, child.wait()).await {
        Ok(Ok(s)) => s,
        Ok(Err(source)) => {
            return Err(LaunchError::Io {
                what: format!("waiting for {name} {verb}"),
                source,
            })
        }
        Err(_) => {
            let _ = child.kill().await;
            return Err(LaunchError::Timeout {
                program: name,
                verb,
                secs: limit.as_secs(),
            });
        }
    };
    let take = |mut h: tokio::task::JoinHandle<()>, buf: Shared| async move {
        if tokio::time::timeout(PIPE_GRACE, &mut h).await.is_err() {
            // A grandchild still holds the pipe: keep what was printed so far.
            h.abort();
        }
        let b = buf.lock().unwrap_or_else(|p| p.into_inner());
        String::from_utf8_lossy(&b).into_owned()
    };
    let stdout = take(out, out_buf).await;
    let stderr = take(err, err_buf).await;
    if !status.success() {
        return Err(LaunchError::Failed {
            program: name,
            verb,
            status: status.to_string(),
            stderr: clip(stderr.trim()),
        });
    }
    Ok(Ran {
        status,
        stdout,
        stderr,
    })
}

/// At most 2 KiB of a command's output in an error message.
fn clip(s: &str) -> String {
    const MAX: usize = 2048;
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// A console line as it goes into the host log: control characters (terminal escapes, the
/// kernel's carriage returns) are shown escaped, never interpreted.
fn printable(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line);
    let text = text.strip_suffix('\r').unwrap_or(&text);
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() && c != '\t' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Logs every line of an enclave's console until it ends.
fn capture_console<R: AsyncRead + Unpin + Send + 'static>(
    r: R,
    enclave: String,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut r = BufReader::with_capacity(64 * 1024, r);
        let mut line = Vec::new();
        let mut lines = 0u64;
        loop {
            line.clear();
            match (&mut r)
                .take(MAX_CONSOLE_LINE as u64)
                .read_until(b'\n', &mut line)
                .await
            {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if line.last() == Some(&b'\n') {
                        line.pop();
                    }
                    lines += 1;
                    info!(enclave = %enclave, "console: {}", printable(&line));
                }
            }
        }
        lines
    })
}

/// Sends SIGTERM, waits [`STOP_GRACE`], then kills.
async fn stop_child(child: &mut Child, what: &str) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    if let Some(pid) = child.id() {
        if let Ok(pid) = i32::try_from(pid) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
    if tokio::time::timeout(STOP_GRACE, child.wait())
        .await
        .is_err()
    {
        warn!(
            "{what} did not exit within {}s of SIGTERM; killing it",
            STOP_GRACE.as_secs()
        );
        let _ = child.kill().await;
    }
}

/// `nitro-cli`, on a real parent instance.
pub struct NitroCli {
    /// The nitro-cli program.
    pub program: PathBuf,
    /// The enclave image file.
    pub eif: PathBuf,
    /// `--memory`, in MiB.
    pub memory_mib: u64,
    /// `--cpu-count`.
    pub cpu_count: u32,
    /// `--enclave-cid`.
    pub cid: u32,
    /// `--debug-mode`, which also captures the console into the host log.
    pub debug_mode: bool,
    /// For `run-enclave`, which returns only after the enclave's heartbeat.
    pub run_timeout: Duration,
    /// For `describe-enclaves` and `terminate-enclave`.
    pub command_timeout: Duration,
}

/// One enclave started by nitro-cli.
pub struct NitroEnclave {
    id: String,
    process: Option<u32>,
    console: Option<(Child, tokio::task::JoinHandle<u64>)>,
}

/// The part of `nitro-cli run-enclave`'s and `describe-enclaves`' JSON that is used.
#[derive(Debug, Deserialize)]
struct Described {
    #[serde(rename = "EnclaveID")]
    id: String,
    #[serde(rename = "State", default)]
    state: Option<String>,
    #[serde(rename = "ProcessID", default)]
    process: Option<u32>,
}

/// The JSON part of a nitro-cli answer: it may print progress lines before it.
fn json_part(out: &str) -> &str {
    let start = out.find(['{', '[']).unwrap_or(out.len());
    &out[start..]
}

impl NitroCli {
    /// Takes the program, enclave and timeouts from `[enclave]`.
    pub fn from_config(c: &EnclaveConfig) -> NitroCli {
        NitroCli {
            program: c.nitro_cli.clone(),
            eif: c.eif.clone(),
            memory_mib: c.memory_mib,
            cpu_count: c.cpu_count,
            cid: c.cid,
            debug_mode: c.debug_mode,
            run_timeout: c.run_timeout(),
            command_timeout: c.command_timeout(),
        }
    }

    /// The `run-enclave` arguments.
    pub fn run_args(&self) -> Vec<String> {
        let mut a = vec![
            "run-enclave".to_string(),
            "--eif-path".into(),
            self.eif.display().to_string(),
            "--memory".into(),
            self.memory_mib.to_string(),
            "--cpu-count".into(),
            self.cpu_count.to_string(),
            "--enclave-cid".into(),
            self.cid.to_string(),
        ];
        if self.debug_mode {
            a.push("--debug-mode".into());
        }
        a
    }

    fn bad(&self, verb: &str, reason: String, output: &str) -> LaunchError {
        LaunchError::Output {
            program: self.program.display().to_string(),
            verb: verb.into(),
            reason,
            output: clip(output.trim()),
        }
    }
}

impl Launcher for NitroCli {
    type Enclave = NitroEnclave;

    async fn launch(&self) -> Result<NitroEnclave, LaunchError> {
        let ran = run_bounded(&self.program, &self.run_args(), self.run_timeout).await?;
        let d: Described = serde_json::from_str(json_part(&ran.stdout))
            .map_err(|e| self.bad("run-enclave", e.to_string(), &ran.stdout))?;
        info!(enclave = %d.id, cid = self.cid, status = %ran.status, "nitro-cli started the enclave");
        if !ran.stderr.trim().is_empty() {
            info!(enclave = %d.id, "nitro-cli: {}", printable(clip(ran.stderr.trim()).as_bytes()));
        }
        let console = if self.debug_mode {
            let spawned = Command::new(&self.program)
                .args(["console", "--enclave-id", &d.id])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn();
            match spawned {
                Ok(mut child) => child
                    .stdout
                    .take()
                    .map(|out| capture_console(out, d.id.clone()))
                    .map(|task| (child, task)),
                Err(e) => {
                    warn!(enclave = %d.id, error = %e, "cannot capture the debug console");
                    None
                }
            }
        } else {
            None
        };
        Ok(NitroEnclave {
            id: d.id,
            process: d.process,
            console,
        })
    }

    fn id(e: &NitroEnclave) -> String {
        e.id.clone()
    }

    fn peers(e: &NitroEnclave) -> Vec<u32> {
        e.process.into_iter().collect()
    }

    async fn running(&self, e: &mut NitroEnclave) -> Result<bool, LaunchError> {
        let ran = run_bounded(
            &self.program,
            &["describe-enclaves".to_string()],
            self.command_timeout,
        )
        .await?;
        let all: Vec<Described> = serde_json::from_str(json_part(&ran.stdout))
            .map_err(|err| self.bad("describe-enclaves", err.to_string(), &ran.stdout))?;
        Ok(all
            .iter()
            .any(|d| d.id == e.id && d.state.as_deref() != Some("TERMINATING")))
    }

    async fn terminate(&self, mut e: NitroEnclave) -> Result<(), LaunchError> {
        let result = if self.running(&mut e).await.unwrap_or(true) {
            run_bounded(
                &self.program,
                &[
                    "terminate-enclave".into(),
                    "--enclave-id".into(),
                    e.id.clone(),
                ],
                self.command_timeout,
            )
            .await
            .map(|_| info!(enclave = %e.id, "nitro-cli terminated the enclave"))
        } else {
            Ok(())
        };
        if let Some((mut child, task)) = e.console.take() {
            // `nitro-cli console` ends with the enclave; give it a moment to print the rest.
            if tokio::time::timeout(PIPE_GRACE, child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
            if let Ok(Ok(lines)) = tokio::time::timeout(PIPE_GRACE, task).await {
                info!(enclave = %e.id, lines, "console capture ended");
            }
        }
        result
    }
}

/// QEMU's `nitro-enclave` machine with a vhost-device-vsock backend: an emulated enclave on
/// any Linux host (see `scripts/e2e-emulated.sh`).
pub struct Qemu {
    /// The qemu-system-x86_64 with the nitro-enclave machine.
    pub qemu: PathBuf,
    /// The `-L` firmware directory.
    pub firmware: PathBuf,
    /// The vhost-device-vsock program.
    pub vhost_device_vsock: PathBuf,
    /// vhost-device-vsock's `--uds-path`: parent port P is the Unix socket `{uds_path}_P`.
    pub uds_path: PathBuf,
    /// The vhost-user socket between QEMU and the backend.
    pub socket: PathBuf,
    /// Added, unmeasured, to the EIF's kernel command line.
    pub append: String,
    /// QEMU's `-accel`.
    pub accel: String,
    /// The enclave image file.
    pub eif: PathBuf,
    /// The enclave's memory, in MiB.
    pub memory_mib: u64,
    /// vCPUs given to the enclave.
    pub cpu_count: u32,
    /// The enclave's vsock CID.
    pub cid: u32,
    /// Debug mode: the console is captured into the host log.
    pub debug_mode: bool,
}

/// One QEMU enclave and its vsock backend.
pub struct QemuEnclave {
    id: String,
    qemu: Child,
    backend: Child,
    /// Taken at launch: the backend is not reaped before the enclave is torn down, so the
    /// id stays its own.
    backend_pid: Option<u32>,
    console: Option<tokio::task::JoinHandle<u64>>,
}

impl Qemu {
    /// The vhost-device-vsock arguments: a guest connection to parent port P arrives on the
    /// Unix socket `{uds_path}_P`, where `cidboot host` listens.
    pub fn backend_args(&self) -> Vec<String> {
        vec![
            format!("--guest-cid={}", self.cid),
            format!("--socket={}", self.socket.display()),
            format!("--uds-path={}", self.uds_path.display()),
        ]
    }

    /// The QEMU arguments. ACPI makes the enclave's power-off end QEMU; `-no-reboot` makes a
    /// reboot (or a kernel panic) end it too.
    pub fn qemu_args(&self) -> Vec<String> {
        let mut a = vec![
            "-L".to_string(),
            self.firmware.display().to_string(),
            "-M".into(),
            "nitro-enclave,vsock=c0,id=cidboot,acpi=on,pit=on,pic=on,rtc=on".into(),
            "-kernel".into(),
            self.eif.display().to_string(),
        ];
        if !self.append.is_empty() {
            a.extend(["-append".to_string(), self.append.clone()]);
        }
        a.extend([
            "-nographic".to_string(),
            "-m".into(),
            format!("{}M", self.memory_mib),
            "-smp".into(),
            self.cpu_count.to_string(),
            "-accel".into(),
            self.accel.clone(),
            "-no-reboot".into(),
            "-chardev".into(),
            format!("socket,id=c0,path={}", self.socket.display()),
        ]);
        a
    }

    fn spawn(&self, program: &Path, args: &[String], stdout: Stdio) -> Result<Child, LaunchError> {
        Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| LaunchError::Spawn {
                program: program.display().to_string(),
                source,
            })
    }
}

impl Launcher for Qemu {
    type Enclave = QemuEnclave;

    async fn launch(&self) -> Result<QemuEnclave, LaunchError> {
        if let Err(e) = tokio::fs::remove_file(&self.socket).await {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(LaunchError::Io {
                    what: format!("removing the stale {}", self.socket.display()),
                    source: e,
                });
            }
        }
        let mut backend = self.spawn(
            &self.vhost_device_vsock,
            &self.backend_args(),
            Stdio::null(),
        )?;
        if let Some(err) = backend.stderr.take() {
            capture_console(err, "vhost-device-vsock".into());
        }
        let deadline = tokio::time::Instant::now() + VSOCK_BACKEND_START;
        while !self.socket.exists() {
            if tokio::time::Instant::now() >= deadline || !matches!(backend.try_wait(), Ok(None)) {
                stop_child(&mut backend, "vhost-device-vsock").await;
                return Err(LaunchError::Backend {
                    socket: self.socket.display().to_string(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let stdout = if self.debug_mode {
            Stdio::piped()
        } else {
            Stdio::null()
        };
        let mut qemu = match self.spawn(&self.qemu, &self.qemu_args(), stdout) {
            Ok(q) => q,
            Err(e) => {
                stop_child(&mut backend, "vhost-device-vsock").await;
                return Err(e);
            }
        };
        let id = format!("qemu-{}", qemu.id().unwrap_or(0));
        info!(enclave = %id, cid = self.cid, "QEMU started the enclave");
        if let Some(err) = qemu.stderr.take() {
            capture_console(err, id.clone());
        }
        let console = qemu.stdout.take().map(|o| capture_console(o, id.clone()));
        let backend_pid = backend.id();
        Ok(QemuEnclave {
            id,
            qemu,
            backend,
            backend_pid,
            console,
        })
    }

    fn id(e: &QemuEnclave) -> String {
        e.id.clone()
    }

    fn peers(e: &QemuEnclave) -> Vec<u32> {
        e.backend_pid.into_iter().collect()
    }

    async fn running(&self, e: &mut QemuEnclave) -> Result<bool, LaunchError> {
        match e.qemu.try_wait() {
            Ok(None) => Ok(true),
            Ok(Some(status)) => {
                info!(enclave = %e.id, %status, "QEMU exited");
                Ok(false)
            }
            Err(source) => Err(LaunchError::Io {
                what: format!("waiting for {}", e.id),
                source,
            }),
        }
    }

    async fn terminate(&self, mut e: QemuEnclave) -> Result<(), LaunchError> {
        stop_child(&mut e.qemu, "QEMU").await;
        stop_child(&mut e.backend, "vhost-device-vsock").await;
        if let Some(task) = e.console.take() {
            if let Ok(Ok(lines)) = tokio::time::timeout(PIPE_GRACE, task).await {
                info!(enclave = %e.id, lines, "console capture ended");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_lines_cannot_carry_terminal_escapes() {
        assert_eq!(printable(b"ok\tfine\r"), "ok\tfine");
        assert_eq!(printable(b"\x1b[2Jx"), "\\u{1b}[2Jx");
        assert_eq!(printable(b"a\nb"), "a\\nb");
    }

    #[test]
    fn nitro_cli_answers_may_start_with_progress_lines() {
        let out = "Start allocating memory...\nStarted enclave with enclave-cid: 16\n{\n \"EnclaveID\": \"i-1-enc2\"\n}\n";
        let d: Described = serde_json::from_str(json_part(out)).unwrap();
        assert_eq!((d.id.as_str(), d.process), ("i-1-enc2", None));
        let d: Described =
            serde_json::from_str(r#"{"EnclaveID":"i-2","ProcessID":4242,"EnclaveCID":16}"#)
                .unwrap();
        assert_eq!(d.process, Some(4242));
        assert!(serde_json::from_str::<Described>(json_part("no json")).is_err());
    }

    #[tokio::test]
    async fn a_command_that_hangs_is_killed_at_its_deadline() {
        let start = std::time::Instant::now();
        let r = run_bounded(
            Path::new("sleep"),
            &["30".to_string()],
            Duration::from_millis(300),
        )
        .await;
        assert!(
            matches!(r, Err(LaunchError::Timeout { .. })),
            "{:?}",
            r.err()
        );
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_daemonized_grandchild_holding_stdout_does_not_hang_a_command() {
        let start = std::time::Instant::now();
        let r = run_bounded(
            Path::new("sh"),
            &["-c".to_string(), "echo '{}'; sleep 30 &".to_string()],
            Duration::from_secs(20),
        )
        .await
        .unwrap();
        assert!(r.status.success());
        assert_eq!(r.stdout.trim(), "{}");
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
    }
}
