//! The command line: one binary for the enclave, the operator, the publisher and the verifier.

#[macro_use]
mod out;
mod attest;
mod check;
mod image;
mod progress;
mod publish;
mod run;
mod seal;
mod signals;
mod unpack_target;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::writer::BoxMakeWriter;

use crate::oci::{OciError, Selector};

#[derive(Parser, Debug)]
#[command(
    name = "cidboot",
    version,
    about = "Run a content-addressed (IPFS CID) OCI image, verified end to end"
)]
/// The command line (`cidboot COMMAND`); PID 1 never parses one.
pub struct Cli {
    /// No progress bars and no informational logs (warnings and errors only); the result on
    /// stdout is unchanged. Bars appear only when stderr is a terminal anyway.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands; each one's doc comment is its `--help` line.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Pack an OCI image layout directory into a CARv1 and print its root CID.
    Pack(publish::PackArgs),
    /// Make an EigenRuntime specification artifact (DevKit's) as an OCI image layout to pack.
    Artifact(publish::ArtifactArgs),
    /// Pack an OCI image layout and upload it: to S3-compatible buckets that import CARs,
    /// kubo-compatible RPC endpoints, Pinning Service API providers; then, with --check,
    /// check it on gateways.
    Publish(publish::PublishArgs),
    /// Serve the blocks of CAR files as a trustless gateway (development, tests, air-gapped).
    #[cfg(feature = "dev-gateway")]
    Gateway(publish::GatewayArgs),
    /// Fetch and verify an image from each gateway given, and report which serve it, how fast
    /// and in which formats; exit 1 when fewer than --min do.
    Check(check::CheckArgs),
    /// Resolve and verify an image's index, manifest and config, and describe it.
    Inspect(image::InspectArgs),
    /// Fetch and verify a whole image and write it as an OCI image layout.
    Pull(image::PullArgs),
    /// Fetch, verify and apply an image into a directory (no measurement, no workload).
    Unpack(image::UnpackArgs),
    /// Fetch, verify, apply, measure and run an image on this machine (as root).
    Run(run::RunArgs),
    /// Check an attestation document: signature, chain to the AWS root, PCRs, nonce, user_data.
    Verify(attest::VerifyArgs),
    /// Print the PCR values to pin for an image: PCR0-2 from the EIF build, PCR16 from the image.
    Expect(attest::ExpectArgs),
    /// The parent-instance daemon: egress proxy, boot configuration, log sink, ingress.
    Host(HostArgs),
    /// Encrypt a secret (from stdin, or made by KMS) for an enclave with AWS KMS, and print its
    /// secrets-file entry.
    Seal(seal::SealArgs),
}

/// How to reach content: gateways, trust anchors, platform. Where a command takes --config,
/// these flags win over its `[fetch]`, `platform`, `tag` and `digest`, which replace the
/// defaults said here.
#[derive(Args, Debug, Clone)]
pub struct FetchArgs {
    /// Gateway base URL (repeatable; tried in order, with failover).
    #[arg(long = "gateway", value_name = "URL")]
    pub gateways: Vec<String>,
    /// Extra CA certificate(s), PEM, trusted beside the built-in web PKI roots: what a private
    /// gateway (or an intercepting proxy) needs.
    #[arg(long, value_name = "PEM", env = "CIDBOOT_CA")]
    pub ca: Option<PathBuf>,
    /// Platform to select from an image index (default: linux/amd64).
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
    /// Take the index.json entry with this tag (`org.opencontainers.image.ref.name`).
    #[arg(long, value_name = "NAME", conflicts_with = "digest")]
    pub tag: Option<String>,
    /// Take the index.json entry with this digest.
    #[arg(long, value_name = "sha256:HEX")]
    pub digest: Option<String>,
    /// Seconds to connect (TCP or tunnel, and TLS) [default: 10].
    #[arg(long, value_name = "SECS")]
    pub connect_timeout: Option<u64>,
    /// Seconds from a request to its response headers [default: 30].
    #[arg(long, value_name = "SECS")]
    pub first_byte_timeout: Option<u64>,
    /// Longest silence, in seconds, inside a response body [default: 30].
    #[arg(long, value_name = "SECS")]
    pub idle_timeout: Option<u64>,
    /// Least bytes per second a response body must average over each --rate-window (0: off)
    /// [default: 16384].
    #[arg(long, value_name = "BYTES")]
    pub min_rate: Option<u64>,
    /// Seconds of waiting on a gateway after which its throughput is compared with --min-rate
    /// [default: 30].
    #[arg(long, value_name = "SECS")]
    pub rate_window: Option<u64>,
    /// Tries per gateway for one object before failing over [default: 3].
    #[arg(long, value_name = "N")]
    pub tries: Option<u32>,
    /// Longest time, in seconds, spent on one object across all gateways
    /// [default: 1800].
    #[arg(long, value_name = "SECS")]
    pub object_deadline: Option<u64>,
}

impl FetchArgs {
    /// What to take from an index: these options, each falling back to the runtime
    /// configuration's `platform`, `tag` and `digest` when not given on the command line.
    pub fn selector(&self, cfg: &crate::config::RuntimeConfig) -> Result<Selector, OciError> {
        crate::boot::plan::selector(
            cfg,
            self.platform.as_deref(),
            self.tag.as_deref(),
            self.digest.as_deref(),
        )
    }

    /// The fetch flags given, each of which wins over the configuration's `[fetch]`.
    pub fn overrides(&self) -> crate::config::Fetch {
        crate::config::Fetch {
            connect_timeout_secs: self.connect_timeout,
            first_byte_timeout_secs: self.first_byte_timeout,
            idle_timeout_secs: self.idle_timeout,
            min_rate: self.min_rate,
            rate_window_secs: self.rate_window,
            tries: self.tries,
            object_deadline_secs: self.object_deadline,
            ..crate::config::Fetch::default()
        }
    }
}

/// `cidboot host`: the parent's side.
#[derive(Args, Debug)]
#[command(after_help = HOST_SECTIONS)]
pub struct HostArgs {
    /// The host configuration (TOML); its sections are listed below.
    #[arg(long, value_name = "HOST.TOML")]
    pub config: PathBuf,
    /// Check the configuration completely (every boot configuration, the allowlist, the log
    /// file) and what it needs of this machine (listen addresses, socket and log
    /// directories, the EIF and the launcher's programs), naming every problem, and exit: 0
    /// if the daemon would start. Creates and binds nothing.
    #[arg(long)]
    pub check: bool,
    /// Log as JSON lines: the daemon's own log (stderr) and the enclave records (stdout and
    /// the log file).
    #[arg(long)]
    pub json: bool,
}

/// What `cidboot host --help` says about host.toml (see crate::host::HostConfig).
const HOST_SECTIONS: &str = "\
host.toml sections (each optional, at least one needed; addresses are vsock:CID:PORT, with
`any` to listen on every CID, unix:PATH or tcp:HOST:PORT):
  [egress]       listen, allow = [\"host:port\", ...]: the HTTP CONNECT proxy the enclave fetches
                 and connects through; everything not allowed is denied
  [boot]         listen, config = PATH, secrets = PATH, [boot.enclaves] CID = PATH or
                 { config, secrets }: serves each enclave its runtime configuration byte for
                 byte, and the sealed secrets it names
  [credentials]  listen, source = imds|environment: AWS credentials for the enclave's KMS calls
                 (the instance role's, or the daemon's own)
  [logs]         listen, file = PATH, state = PATH, idle_timeout_secs: receives the workload's
                 output and the boot's final status, each record written once, each boot
                 writable only by its sender
  [metrics]      listen = \"127.0.0.1:PORT\": Prometheus /metrics
  [[ingress]]    listen, target: forwards connections from the network into the enclave
  [heartbeat]    listen: answers the enclave's boot heartbeat (emulated enclaves only: on
                 Nitro, nitro-cli answers it)
  [enclave]      eif, memory_mib, cpu_count, cid, restart = never|on-failure|always, launcher =
                 nitro-cli|qemu: launches the enclave, watches it and relaunches it by the
                 policy (docs/launching.md)
  [cache]        listen, dir, gateways = [URL, ...], max_bytes, ca, prefetch = [\"ipfs://CID\"]:
                 a verified block cache served to the enclave as a trustless gateway
  [sockets]      mode = 0o660, group = NAME: who may connect to the daemon's Unix sockets
                 (default 0600: only the daemon's user)

See docs/operating.md for a complete example, limits and systemd setup.";

/// Why a command failed; printed as one `error:` line (and as JSON with `--json`).
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each variant's #[error] message is its documentation
pub enum CliError {
    #[error(transparent)]
    Host(#[from] crate::host::HostError),
    #[error(transparent)]
    Ref(#[from] crate::reference::RefError),
    #[error(transparent)]
    Fetch(#[from] crate::fetch::FetchError),
    #[error(transparent)]
    Oci(#[from] OciError),
    #[error(transparent)]
    Transport(#[from] crate::transport::TransportError),
    #[error(transparent)]
    Apply(#[from] crate::apply::ApplyError),
    #[error(transparent)]
    Crypt(#[from] crate::ocicrypt::CryptError),
    #[error(transparent)]
    Pack(#[from] crate::publish::pack::PackError),
    #[error(transparent)]
    Artifact(#[from] crate::publish::artifact::ArtifactError),
    #[error(transparent)]
    Upload(#[from] crate::publish::upload::UploadError),
    #[cfg(feature = "dev-gateway")]
    #[error(transparent)]
    Serve(#[from] crate::publish::serve::ServeError),
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Boot(#[from] crate::boot::BootError),
    #[error(transparent)]
    Nsm(#[from] crate::nsm::NsmError),
    #[error(transparent)]
    Kms(#[from] crate::kms::KmsError),
    #[error(transparent)]
    Sealed(#[from] crate::kms::sealed::SealedError),
    #[error("starting the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Scratch(#[from] crate::scratch::ScratchError),
    /// The command's answer is no (exit status 1): a document `verify` cannot even decode.
    #[error("{0}")]
    Rejected(String),
    /// The workload's entrypoint could not be started: exit status 126 or 127.
    #[error(transparent)]
    Entrypoint(crate::launch::LaunchError),
    #[error("interrupted by {}", .0.as_str())]
    Interrupted(nix::sys::signal::Signal),
    /// Whoever read stdout went away: the command ends quietly (exit status 141).
    #[error("stdout was closed")]
    StdoutClosed,
}

/// The exit statuses of every command (the table in docs/workload.md, "Exit statuses").
pub mod exit {
    /// Done; `verify`: the document passed every check; `host --check`: the daemon would start.
    pub const OK: u8 = 0;
    /// The command's answer is no: `verify` checked the document and it did not pass;
    /// `host --check` found a configuration the daemon would not start with.
    pub const NO: u8 = 1;
    /// The command line is wrong (clap's errors, and cidboot's checks of what flags say); for
    /// `run`, [`FAILED`] instead, so that 2 stays the workload's own.
    pub const USAGE: u8 = 2;
    /// cidboot itself failed: configuration, fetch, verification, apply, measurement, sandbox,
    /// I/O (and, for `run`, a usage error).
    pub const FAILED: u8 = 125;
    /// `run`: the entrypoint is there but cannot be executed.
    pub const CANNOT_EXECUTE: u8 = 126;
    /// `run`: the entrypoint (or its interpreter) was not found.
    pub const NOT_FOUND: u8 = 127;
    /// Stdout was closed before the whole result was written (128 + SIGPIPE).
    pub const STDOUT_CLOSED: u8 = 141;

    /// 128 + the signal's number: a command interrupted by it (or, for `run`, a workload
    /// killed by it).
    pub fn signaled(signal: i32) -> u8 {
        u8::try_from(128 + signal.clamp(0, 127)).unwrap_or(u8::MAX)
    }
}

impl CliError {
    /// The exit status this error ends the command with (see [`exit`]).
    pub fn exit_code(&self, run: bool) -> u8 {
        use crate::launch::LaunchError as L;
        use nix::errno::Errno;
        match self {
            CliError::Usage(_) if !run => exit::USAGE,
            CliError::Rejected(_) => exit::NO,
            CliError::Interrupted(s) => exit::signaled(*s as i32),
            CliError::StdoutClosed => exit::STDOUT_CLOSED,
            CliError::Entrypoint(L::Exec {
                errno: Errno::ENOENT | Errno::ENOTDIR,
                ..
            }) => exit::NOT_FOUND,
            CliError::Entrypoint(L::Exec { .. }) => exit::CANNOT_EXECUTE,
            CliError::Entrypoint(L::NotFound { .. })
            | CliError::Boot(crate::boot::BootError::Launch(L::NotFound { .. })) => exit::NOT_FOUND,
            CliError::Entrypoint(L::NotExecutable { .. })
            | CliError::Boot(crate::boot::BootError::Launch(L::NotExecutable { .. })) => {
                exit::CANNOT_EXECUTE
            }
            _ => exit::FAILED,
        }
    }
}

/// Whether the command line names `run` (for a usage error clap found before a command
/// was parsed). Only `--quiet`/`-q` may come before the command, and it takes no value.
fn invoked_run() -> bool {
    std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .is_some_and(|a| a == "run")
}

/// Prints clap's message (help and version on stdout, errors on stderr) and picks the exit
/// status: 0 for help and version, [`exit::USAGE`] for an error ([`exit::FAILED`] under `run`).
fn parse_failed(e: &clap::Error) -> ExitCode {
    let _ = e.print();
    if !e.use_stderr() {
        return ExitCode::SUCCESS;
    }
    ExitCode::from(if invoked_run() {
        exit::FAILED
    } else {
        exit::USAGE
    })
}

/// Parses the command line, sets up logging and runs the command.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => return parse_failed(&e),
    };
    let json = match &cli.command {
        Command::Pack(a) => a.json,
        Command::Artifact(a) => a.json,
        Command::Check(a) => a.json,
        Command::Publish(a) => a.json,
        Command::Inspect(a) => a.json,
        Command::Pull(a) => a.json,
        Command::Run(a) => a.json,
        Command::Unpack(a) => a.json,
        Command::Verify(a) => a.json,
        Command::Expect(a) => a.json,
        #[cfg(feature = "dev-gateway")]
        Command::Gateway(_) => false,
        Command::Host(_) => false,
        Command::Seal(_) => false,
    };
    let daemon = match &cli.command {
        #[cfg(feature = "dev-gateway")]
        Command::Gateway(_) => true,
        Command::Host(_) => true,
        _ => false,
    };
    let is_run = matches!(&cli.command, Command::Run(_));
    progress::enable(!cli.quiet && !json && !daemon);
    // Every command logs to stderr; `host` writes the enclave's records to stdout.
    init_logging(
        matches!(&cli.command, Command::Host(h) if h.json),
        cli.quiet,
    );
    match run(cli) {
        Ok(code) => ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(u8::MAX)),
        Err(e) => {
            let code = e.exit_code(is_run);
            report(&e, code, json, is_run);
            ExitCode::from(code)
        }
    }
}

/// Says why a command failed: one `error:` line on stderr and, with `--json`, a last line on
/// stdout naming the exit status (and, for `run`, that cidboot rather than the workload ended
/// the run). A closed stdout ends the command with nothing more said; an interruption has
/// said its own last line already.
fn report(e: &CliError, code: u8, json: bool, run: bool) {
    if matches!(e, CliError::StdoutClosed) {
        return;
    }
    if json {
        /// Serialized directly, so that the keys keep this order (docs/json.md).
        #[derive(serde::Serialize)]
        struct Failed {
            exit_code: u8,
            error: String,
            #[serde(skip_serializing_if = "Option::is_none")]
            ended: Option<&'static str>,
        }
        let v = Failed {
            exit_code: code,
            error: e.to_string(),
            ended: run.then_some("cidboot"),
        };
        let _ = outln!("{}", serde_json::to_string(&v).unwrap_or_default());
    }
    if !matches!(e, CliError::Interrupted(_)) {
        errln!("error: {}", terminal_safe(&e.to_string()));
    }
}

/// An error's text for the terminal. It may quote what an image, a gateway or an endpoint
/// said, so every control character but the newlines and tabs of its own layout is shown as
/// a `\u{..}` escape, never acted on.
fn terminal_safe(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if (c.is_control() && c != '\n' && c != '\t') || c == '\u{2028}' || c == '\u{2029}' {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

fn init_logging(json: bool, quiet: bool) {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    // `--quiet` wins over the environment: warnings and errors only. Otherwise `CIDBOOT_LOG`
    // takes a level, or `target=level` directives, comma-separated; a value that does not
    // parse is reported and replaced by the default.
    let default = || Targets::new().with_default(LevelFilter::INFO);
    let filter = match std::env::var("CIDBOOT_LOG") {
        _ if quiet => Targets::new().with_default(LevelFilter::WARN),
        Ok(v) => match check_log_filter(&v)
            .and_then(|()| v.parse::<Targets>().map_err(|e| e.to_string()))
        {
            Ok(t) => t,
            Err(e) => {
                errln!("cidboot: ignoring CIDBOOT_LOG={v:?}: {e}; logging at info");
                default()
            }
        },
        Err(_) => default(),
    };
    if json {
        let _ = tracing_subscriber::registry()
            .with(JsonLog)
            .with(filter)
            .try_init();
        return;
    }
    let ansi = std::io::stderr().is_terminal();
    // Through the progress module, which keeps log lines and progress bars apart.
    let _ = tracing_subscriber::fmt()
        .with_target(false)
        .with_ansi(ansi)
        .with_writer(BoxMakeWriter::new(|| progress::LogWriter))
        .finish()
        .with(filter)
        .try_init();
}

/// One JSON object per event on stderr: `ts`, `level`, `message` and the event's fields.
struct JsonLog;

struct JsonFields(serde_json::Map<String, serde_json::Value>);

impl tracing::field::Visit for JsonFields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(
            field.name().to_string(),
            serde_json::Value::String(format!("{value:?}")),
        );
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(
            field.name().to_string(),
            serde_json::Value::String(value.into()),
        );
    }
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.0.insert(field.name().to_string(), value.into());
    }
    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.0.insert(field.name().to_string(), value.into());
    }
    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.0.insert(field.name().to_string(), value.into());
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for JsonLog {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        use std::io::Write;
        let mut f = JsonFields(serde_json::Map::new());
        event.record(&mut f);
        let ts = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        f.0.insert("ts".into(), ts.into());
        f.0.insert(
            "level".into(),
            event
                .metadata()
                .level()
                .as_str()
                .to_ascii_lowercase()
                .into(),
        );
        let mut line = serde_json::Value::Object(f.0).to_string();
        line.push('\n');
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}

/// A bare word in a `Targets` filter names a target, so a mistyped level (`verbose`) would
/// silently turn every other log off: each directive must be a level or `target=level`.
fn check_log_filter(v: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    for d in v.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let level = d.rsplit_once('=').map_or(d, |(_, l)| l);
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "{d:?} is not a level ({}) or target=level",
                LEVELS.join(", ")
            ));
        }
    }
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)
}

/// How long, after a signal, the command's remaining tasks get to stop before what they made
/// is removed under them.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs a command; the result is the process exit code.
fn run(cli: Cli) -> Result<i32, CliError> {
    match cli.command {
        #[cfg(feature = "dev-gateway")]
        Command::Gateway(a) => runtime()?.block_on(publish::gateway(a)).map(|()| 0),
        Command::Host(a) => host(&a),
        command => interruptible(command),
    }
}

/// `cidboot host`: the daemon handles its own signals (it shuts down cleanly on them).
fn host(a: &HostArgs) -> Result<i32, CliError> {
    let checked = match crate::host::load(&a.config) {
        Ok(c) => c,
        // `--check` answers whether the daemon would start: "no" is its answer, not a failure.
        Err(e) if a.check => return Err(CliError::Rejected(e.to_string())),
        Err(e) => return Err(e.into()),
    };
    if a.check {
        outln!("{}: ok", a.config.display())?;
        return Ok(0);
    }
    runtime()?.block_on(async {
        crate::host::run(checked, a.json)
            .await
            .map_err(CliError::from)
            .map(|()| 0)
    })
}

/// Runs a command that may stage files, under SIGINT, SIGTERM and SIGHUP: on the first of
/// them the command stops (`run` stops its workload first), its remaining tasks get
/// [`STOP_GRACE`] to end, everything it staged is removed (and a `run --rootfs` root emptied),
/// one log line says so, and the command ends with 128 + the signal's number.
fn interruptible(command: Command) -> Result<i32, CliError> {
    let rt = runtime()?;
    let (result, signal) = rt.block_on(async move {
        let mut sig = match signals::install() {
            Ok(s) => s,
            Err(source) => {
                let e = CliError::Io {
                    what: "watching SIGINT, SIGTERM and SIGHUP".into(),
                    source,
                };
                return (Err(e), None);
            }
        };
        let result = match command {
            // `run` stops its workload itself before it returns.
            Command::Run(a) => run::run(a, sig.clone()).await,
            // Packing stops at its next block once interrupted, and checks again just before
            // it commits: waiting for it (rather than ending at the signal while its thread
            // goes on) makes what it says, committed or stopped, what happened. (Not when it
            // copies to stdout, a device or a FIFO, which a reader may stall.)
            Command::Pack(a) if publish::commits_by_rename(&a) => dispatch(Command::Pack(a)).await,
            other => {
                tokio::select! {
                    r = dispatch(other) => r,
                    s = sig.first() => Err(CliError::Interrupted(s)),
                }
            }
        };
        (result, sig.received())
    });
    let Some(signal) = signal else {
        return result;
    };
    rt.shutdown_timeout(STOP_GRACE);
    let (removed, failed) = crate::scratch::clean_up_interrupted();
    let code = match &result {
        // The work was done (committed) before the signal took effect.
        Ok(c) => {
            tracing::warn!(
                "{} came after the command had finished; exit status {c}",
                signal.as_str()
            );
            return Ok(*c);
        }
        Err(CliError::StdoutClosed) => exit::STDOUT_CLOSED,
        Err(_) => exit::signaled(signal as i32),
    };
    let what = if removed.is_empty() {
        "nothing to remove".to_string()
    } else {
        removed.join(", ")
    };
    if failed.is_empty() {
        tracing::warn!(
            "interrupted by {}: {what}; exit status {code}",
            signal.as_str()
        );
    } else {
        tracing::error!(
            "interrupted by {}: {what}; could not remove {}; exit status {code}",
            signal.as_str(),
            failed.join(", ")
        );
    }
    match result {
        Err(CliError::StdoutClosed) => Err(CliError::StdoutClosed),
        _ => Err(CliError::Interrupted(signal)),
    }
}

async fn dispatch(command: Command) -> Result<i32, CliError> {
    let ok = |r: Result<(), CliError>| r.map(|()| 0);
    match command {
        // Packing is synchronous: on a thread of its own, so that a signal is seen at once.
        Command::Pack(a) => ok(tokio::task::spawn_blocking(move || publish::pack(a))
            .await
            .map_err(|e| CliError::Io {
                what: "packing".into(),
                source: std::io::Error::other(e.to_string()),
            })?),
        Command::Artifact(a) => ok(publish::artifact(a)),
        Command::Check(a) => check::check(a).await,
        Command::Publish(a) => publish::publish(a).await,
        Command::Inspect(a) => ok(image::inspect(a).await),
        Command::Pull(a) => ok(image::pull(a).await),
        Command::Unpack(a) => ok(image::unpack(a).await),
        Command::Verify(a) => attest::verify(a).await,
        Command::Expect(a) => ok(attest::expect(a).await),
        Command::Seal(a) => ok(seal::seal(a).await),
        Command::Run(_) | Command::Host(_) => Err(not_here()),
        #[cfg(feature = "dev-gateway")]
        Command::Gateway(_) => Err(not_here()),
    }
}

fn not_here() -> CliError {
    CliError::Io {
        what: "internal".into(),
        source: std::io::Error::other("this command is not dispatched here"),
    }
}
