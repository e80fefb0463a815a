//! The command line: one binary for the enclave, the operator, the publisher and the verifier.

mod attest;
mod image;
mod publish;
mod run;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::writer::BoxMakeWriter;

use crate::oci::{OciError, Platform, Selector};

#[derive(Parser, Debug)]
#[command(
    name = "cidboot",
    version,
    about = "Run a content-addressed (IPFS CID) OCI image, verified end to end"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Pack an OCI image layout directory into a CARv1 and print its root CID.
    Pack(publish::PackArgs),
    /// Serve the blocks of CAR files as a trustless gateway (development, tests, air-gapped).
    Gateway(publish::GatewayArgs),
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
}

/// How to reach content: gateways, trust anchors, platform.
#[derive(Args, Debug, Clone)]
pub struct FetchArgs {
    /// Gateway base URL (repeatable; tried in order, with failover).
    #[arg(long = "gateway", value_name = "URL")]
    pub gateways: Vec<String>,
    /// Extra CA certificate(s), PEM, trusted beside the built-in web PKI roots: what a private
    /// gateway (or an intercepting proxy) needs.
    #[arg(long, value_name = "PEM", env = "CIDBOOT_CA")]
    pub ca: Option<PathBuf>,
    /// Platform to select from an image index.
    #[arg(long, default_value = "linux/amd64", value_name = "OS/ARCH[/VARIANT]")]
    pub platform: String,
    /// Take the index.json entry with this tag (`org.opencontainers.image.ref.name`).
    #[arg(long, value_name = "NAME", conflicts_with = "digest")]
    pub tag: Option<String>,
    /// Take the index.json entry with this digest.
    #[arg(long, value_name = "sha256:HEX")]
    pub digest: Option<String>,
    /// Seconds to connect (TCP or tunnel, and TLS).
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    pub connect_timeout: u64,
    /// Seconds from a request to its response headers.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    pub first_byte_timeout: u64,
    /// Longest silence, in seconds, inside a response body.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    pub idle_timeout: u64,
    /// Least bytes per second a response body must average over each --rate-window (0: off).
    #[arg(long, default_value_t = 16 * 1024, value_name = "BYTES")]
    pub min_rate: u64,
    /// Seconds of waiting on a gateway after which its throughput is compared with --min-rate.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    pub rate_window: u64,
    /// Tries per gateway for one object before failing over.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub tries: u32,
    /// Longest time, in seconds, spent on one object across all gateways.
    #[arg(long, default_value_t = 1800, value_name = "SECS")]
    pub object_deadline: u64,
    /// Parallel ranges, from a runtime configuration's `[fetch]` (defaults otherwise).
    #[arg(skip)]
    pub parallel: Option<crate::fetch::parallel::ParallelPolicy>,
}

impl FetchArgs {
    pub fn platform(&self) -> Result<Platform, OciError> {
        self.platform.parse()
    }

    /// What to take from an index: these options, each falling back to the runtime
    /// configuration's `platform`, `tag` and `digest` when not given on the command line.
    pub fn selector(&self, cfg: &crate::config::RuntimeConfig) -> Result<Selector, OciError> {
        let platform = match &cfg.platform {
            Some(p) if self.platform == "linux/amd64" => p.parse()?,
            _ => self.platform()?,
        };
        let (tag, digest) = if self.tag.is_some() || self.digest.is_some() {
            (self.tag.clone(), self.digest.clone())
        } else {
            (cfg.tag.clone(), cfg.digest.clone())
        };
        Selector::new(platform, tag, digest)
    }

    pub fn timeouts(&self) -> crate::transport::http::Timeouts {
        use std::time::Duration;
        crate::transport::http::Timeouts {
            connect: Duration::from_secs(self.connect_timeout.max(1)),
            first_byte: Duration::from_secs(self.first_byte_timeout.max(1)),
            idle: Duration::from_secs(self.idle_timeout.max(1)),
            min_rate: self.min_rate,
            rate_window: Duration::from_secs(self.rate_window.max(1)),
        }
    }

    pub fn policy(&self) -> crate::fetch::GatewayPolicy {
        crate::fetch::GatewayPolicy {
            attempts_per_gateway: self.tries.max(1),
            object_deadline: std::time::Duration::from_secs(self.object_deadline.max(1)),
            parallel: self.parallel.clone().unwrap_or_default(),
            ..Default::default()
        }
    }
}

#[derive(Args, Debug)]
#[command(after_help = HOST_SECTIONS)]
pub struct HostArgs {
    /// The host configuration (TOML); its sections are listed below.
    #[arg(long, value_name = "HOST.TOML")]
    pub config: PathBuf,
}

/// What `cidboot host --help` says about host.toml (see crate::host::HostConfig).
const HOST_SECTIONS: &str = "\
host.toml sections (each optional, at least one needed; addresses are vsock:CID:PORT, with
`any` to listen on every CID, unix:PATH or tcp:HOST:PORT):
  [egress]       listen, allow = [\"host:port\", ...]: the HTTP CONNECT proxy the enclave fetches
                 and connects through; everything not allowed is denied
  [boot]         listen, config = PATH: serves the enclave's runtime configuration byte for byte
  [logs]         listen, file = PATH: receives the workload's output and the boot's final status
  [[ingress]]    listen, target: forwards connections from the network into the enclave
  [heartbeat]    listen: answers the enclave's boot heartbeat (emulated enclaves only: on
                 Nitro, nitro-cli answers it)
  [cache]        listen, dir, gateways = [URL, ...], max_bytes, ca, prefetch = [\"ipfs://CID\"]:
                 a verified block cache served to the enclave as a trustless gateway

See docs/operating.md for a complete example, limits and systemd setup.";

#[derive(Debug, thiserror::Error)]
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
    Pack(#[from] crate::publish::pack::PackError),
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
    #[error("starting the async runtime: {0}")]
    Runtime(std::io::Error),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The parent daemon logs to stdout, for systemd; every other command to stderr.
    init_logging(matches!(cli.command, Command::Host(_)));
    let json = match &cli.command {
        Command::Pack(a) => a.json,
        Command::Inspect(a) => a.json,
        Command::Pull(a) => a.json,
        Command::Run(a) => a.json,
        Command::Unpack(a) => a.json,
        Command::Verify(a) => a.json,
        Command::Expect(a) => a.json,
        Command::Gateway(_) | Command::Host(_) => false,
    };
    match run(cli) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            if json {
                let v = serde_json::json!({ "error": e.to_string() });
                println!("{v}");
            }
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(stdout: bool) {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    // `CIDBOOT_LOG` takes a level, or `target=level` directives, comma-separated. A value that
    // does not parse is reported and replaced by the default.
    let default = || Targets::new().with_default(LevelFilter::INFO);
    let filter = match std::env::var("CIDBOOT_LOG") {
        Ok(v) => match check_log_filter(&v)
            .and_then(|()| v.parse::<Targets>().map_err(|e| e.to_string()))
        {
            Ok(t) => t,
            Err(e) => {
                eprintln!("cidboot: ignoring CIDBOOT_LOG={v:?}: {e}; logging at info");
                default()
            }
        },
        Err(_) => default(),
    };
    let (writer, ansi) = if stdout {
        (
            BoxMakeWriter::new(std::io::stdout),
            std::io::stdout().is_terminal(),
        )
    } else {
        (
            BoxMakeWriter::new(std::io::stderr),
            std::io::stderr().is_terminal(),
        )
    };
    let _ = tracing_subscriber::fmt()
        .with_target(false)
        .with_ansi(ansi)
        .with_writer(writer)
        .finish()
        .with(filter)
        .try_init();
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

/// Runs a command; the result is the process exit code.
fn run(cli: Cli) -> Result<i32, CliError> {
    let ok = |r: Result<(), CliError>| r.map(|()| 0);
    match cli.command {
        Command::Pack(a) => ok(publish::pack(a)),
        Command::Gateway(a) => ok(runtime()?.block_on(publish::gateway(a))),
        Command::Inspect(a) => ok(runtime()?.block_on(image::inspect(a))),
        Command::Pull(a) => ok(runtime()?.block_on(image::pull(a))),
        Command::Run(a) => runtime()?.block_on(run::run(a)),
        Command::Unpack(a) => ok(runtime()?.block_on(image::unpack(a))),
        Command::Verify(a) => runtime()?.block_on(attest::verify(a)),
        Command::Expect(a) => ok(runtime()?.block_on(attest::expect(a))),
        Command::Host(a) => {
            let (cfg, boot) = crate::host::load(&a.config)?;
            ok(runtime()?
                .block_on(async { crate::host::run(cfg, boot).await.map_err(CliError::from) }))
        }
    }
}
