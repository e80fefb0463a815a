use std::path::PathBuf;

use clap::Args;

use super::CliError;
use crate::publish::artifact;
use crate::publish::pack as packer;
#[cfg(feature = "dev-gateway")]
use crate::publish::serve;
use crate::publish::upload;
#[cfg(feature = "dev-gateway")]
use crate::transport::tls;

#[derive(Args, Debug)]
pub struct PackArgs {
    /// The OCI image layout directory (holding `oci-layout` and `index.json`).
    pub dir: PathBuf,
    /// Where to write the CAR; `-` writes it to stdout (the CID then goes to stderr). A device,
    /// a FIFO or a symlink (/dev/stdout) is written in place, never replaced. Without --car,
    /// only the CID is printed and no CAR is written.
    #[arg(long, value_name = "FILE")]
    pub car: Option<PathBuf>,
    /// Pack any directory, not only an OCI image layout (as `ipfs-car pack` would).
    #[arg(long)]
    pub any_dir: bool,
    /// The UnixFS CID profile, which decides the CID: `ipfs-car` (the default) is byte for
    /// byte what `ipfs-car pack` writes; `unixfs-v1-2025` is IPIP-0499's profile (the same
    /// files give the same CID in any implementation that has it, kubo 0.40+ and Helia
    /// among them); `unixfs-v0-2015` gives the CIDv0 (`Qm…`) kubo made by default until 0.39
    /// (docs/image-reference.md, "CID profiles").
    #[arg(long, value_enum, default_value_t = packer::Profile::IpfsCar, value_name = "NAME")]
    pub profile: packer::Profile,
    /// Print JSON (docs/json.md): the CID, the CAR written, its blocks and bytes.
    #[arg(long)]
    pub json: bool,
}

pub fn pack(a: PackArgs) -> Result<(), CliError> {
    if !a.any_dir && a.dir.is_dir() {
        let missing: Vec<&str> = ["oci-layout", "index.json"]
            .into_iter()
            .filter(|f| !a.dir.join(f).is_file())
            .collect();
        if !missing.is_empty() {
            return Err(CliError::Usage(format!(
                "{} is not an OCI image layout (no {}): write one with `skopeo copy docker://IMAGE oci:DIR:TAG`, `docker buildx build --output type=oci,tar=false,dest=DIR` or `umoci init`, or pass --any-dir to pack it anyway",
                a.dir.display(),
                missing.join(", no ")
            )));
        }
    }
    let Some(car_arg) = &a.car else {
        let packed = packer::pack_cid_as(&a.dir, a.profile)?;
        outln!("{}", line(&a, &packed))?;
        tracing::info!(
            blocks = packed.blocks,
            bytes = packed.bytes,
            "packed (no CAR written)"
        );
        return Ok(());
    };
    let to_stdout = car_arg.as_os_str() == "-";
    let staged = if to_stdout {
        Some(crate::scratch::PrivateDir::create(
            &std::env::temp_dir(),
            "cidboot-pack-",
        )?)
    } else {
        None
    };
    let car = match &staged {
        Some(t) => t.path().join("out.car"),
        None => car_arg.clone(),
    };
    let packed = packer::pack_dir_as(&a.dir, &car, a.profile)?;
    let line = line(&a, &packed);
    if to_stdout {
        // The CAR is built in a file first: its header is rewritten once the root is known.
        let mut f = std::fs::File::open(&car).map_err(|source| CliError::Io {
            what: car.display().to_string(),
            source,
        })?;
        let mut out = std::io::stdout().lock();
        std::io::copy(&mut f, &mut out)
            .and_then(|_| std::io::Write::flush(&mut out))
            .map_err(super::out::stdout_error)?;
        errln!("{line}");
    } else {
        outln!("{line}")?;
    }
    tracing::info!(blocks = packed.blocks, bytes = packed.bytes, car = %car_arg.display(), "packed");
    Ok(())
}

/// True when `pack` writes no CAR or one it renames into place, and so never waits on a
/// reader.
pub fn commits_by_rename(a: &PackArgs) -> bool {
    a.car.as_ref().is_none_or(|c| {
        c.as_os_str() != "-"
            && !std::fs::symlink_metadata(c).is_ok_and(|m| !m.is_file() && !m.is_dir())
    })
}

/// What `pack` prints: the CID, or its JSON.
fn line(a: &PackArgs, packed: &packer::Packed) -> String {
    /// Serialized directly, so that the keys keep this order (docs/json.md).
    #[derive(serde::Serialize)]
    struct PackOut<'a> {
        cid: &'a str,
        car: Option<String>,
        blocks: u64,
        bytes: u64,
        profile: &'static str,
    }
    if a.json {
        serde_json::to_string(&PackOut {
            cid: &packed.root_cid,
            car: a.car.as_ref().map(|c| c.display().to_string()),
            blocks: packed.blocks,
            bytes: packed.bytes,
            profile: a.profile.name(),
        })
        .unwrap_or_default()
    } else {
        packed.root_cid.clone()
    }
}

#[derive(Args, Debug)]
pub struct ArtifactArgs {
    /// The EigenRuntime specification (YAML), the artifact's one layer, titled with this
    /// file's name.
    pub spec: PathBuf,
    /// The AVS's name (`avsName` of the config, and the description).
    #[arg(long)]
    pub name: String,
    /// The release (`releaseVersion` of the config), also the layout's tag.
    #[arg(long)]
    pub release: String,
    /// The EigenRuntime kind (`kind` of the config, and the `validationSchema` it names).
    #[arg(long, default_value = "Hourglass")]
    pub kind: String,
    /// `org.opencontainers.image.source` of the manifest (DevKit writes its own repository).
    #[arg(long, default_value = artifact::DEVKIT_SOURCE, value_name = "URL")]
    pub source: String,
    /// Directory to create as an OCI image layout (must not exist, or be empty), ready for
    /// `cidboot pack`. Its creation time is now, or SOURCE_DATE_EPOCH when set, so that the
    /// same inputs give the same digests and the same CID.
    #[arg(long, value_name = "DIR")]
    pub oci_layout: PathBuf,
    /// Print JSON (docs/json.md): the layout written and the digests of its manifest, config
    /// and specification.
    #[arg(long)]
    pub json: bool,
}

pub fn artifact(a: ArtifactArgs) -> Result<(), CliError> {
    let created = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v.trim().parse::<i64>().map_err(|_| {
            CliError::Usage(format!(
                "SOURCE_DATE_EPOCH={v:?} is not a number of seconds since the epoch"
            ))
        })?,
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
    };
    let o = artifact::Options {
        name: a.name,
        release: a.release,
        kind: a.kind,
        source: a.source,
        created,
    };
    let made = artifact::make(&a.spec, &o, &a.oci_layout)?;
    if a.json {
        outln!("{}", serde_json::to_string(&made).unwrap_or_default())?;
    } else {
        outln!(
            "wrote EigenRuntime artifact {} (specification {}) into {}",
            made.manifest_digest,
            made.spec_digest,
            made.oci_layout
        )?;
    }
    Ok(())
}

#[cfg(feature = "dev-gateway")]
#[derive(Args, Debug)]
pub struct GatewayArgs {
    /// CAR files whose blocks are served (repeatable).
    #[arg(long = "car", required = true)]
    pub cars: Vec<PathBuf>,
    /// Address to listen on: tcp:HOST:PORT or HOST:PORT, e.g. 127.0.0.1:8080 (port 0 picks
    /// one; the URL is printed).
    #[arg(long)]
    pub listen: String,
    /// TLS certificate chain (PEM); with --tls-key, serves HTTPS.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve HTTPS for localhost with a development CA kept in this PEM file (clients' --ca),
    /// its key beside it (CA_OUT.key), both 0600: made at the first start, reused after.
    #[arg(long, value_name = "CA_OUT", conflicts_with = "tls_cert")]
    pub tls_self_signed: Option<PathBuf>,
    /// Serve the CARs' blocks exactly as they are, without checking them against their CIDs:
    /// a tampering gateway, for testing verifiers. Never for anything else.
    #[arg(long)]
    pub insecure_serve_unverified: bool,
}

#[cfg(feature = "dev-gateway")]
pub async fn gateway(a: GatewayArgs) -> Result<(), CliError> {
    let tls = match (&a.tls_cert, &a.tls_key) {
        (Some(c), Some(k)) => Some(tls::server_config(c, k)?),
        _ => match &a.tls_self_signed {
            Some(ca_out) => Some(tls::self_signed(ca_out)?),
            None => None,
        },
    };
    if a.insecure_serve_unverified {
        tracing::warn!(
            "serving blocks WITHOUT verifying them: this gateway may serve tampered content"
        );
    }
    serve::run(&a.cars, &a.listen, tls, !a.insecure_serve_unverified).await?;
    Ok(())
}

#[derive(Args, Debug)]
pub struct PublishArgs {
    /// The OCI image layout directory (holding `oci-layout` and `index.json`).
    pub dir: PathBuf,
    /// Where to upload (repeatable, in order): s3://BUCKET[/PREFIX] (a bucket that imports
    /// CARs: Filebase's `import: car`), rpc:https://HOST (kubo-compatible `dag/import`) or
    /// pins:https://HOST (a Pinning Service API: pin by CID).
    #[arg(long = "to", value_name = "DEST")]
    pub to: Vec<upload::Destination>,
    /// A publisher configuration (TOML: `to`, `origins`, `name`, `pin_timeout_secs`, and
    /// `[check]` with `gateways` and `min`); the flags given win over it.
    #[arg(long, value_name = "PUBLISH.TOML")]
    pub config: Option<PathBuf>,
    /// A multiaddr of a node that has the content, handed to pinning services (repeatable).
    #[arg(long = "origin", value_name = "MULTIADDR")]
    pub origins: Vec<String>,
    /// The pin's name on pinning services [default: the CID].
    #[arg(long)]
    pub name: Option<String>,
    /// Seconds a pin may stay queued or pinning before publish gives up on it [default: 600].
    #[arg(long, value_name = "SECS")]
    pub pin_timeout: Option<u64>,
    /// Keep the CAR in this file (it is otherwise removed once uploaded).
    #[arg(long, value_name = "FILE")]
    pub car: Option<PathBuf>,
    /// Then check the published image on the --gateway URLs, as `cidboot check` does; exit 1
    /// when fewer than --min serve it.
    #[arg(long)]
    pub check: bool,
    /// With --check: how many gateways must serve it [default: all].
    #[arg(long, value_name = "N")]
    pub min: Option<usize>,
    #[command(flatten)]
    pub fetch: super::FetchArgs,
    /// Print JSON (docs/json.md).
    #[arg(long)]
    pub json: bool,
}

/// Refuses a directory that is not an OCI image layout, naming what is missing.
fn check_layout(dir: &std::path::Path) -> Result<(), CliError> {
    if !dir.is_dir() {
        return Ok(());
    }
    let missing: Vec<&str> = ["oci-layout", "index.json"]
        .into_iter()
        .filter(|f| !dir.join(f).is_file())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(CliError::Usage(format!(
        "{} is not an OCI image layout (no {}): write one with `skopeo copy docker://IMAGE oci:DIR:TAG`, `docker buildx build --output type=oci,tar=false,dest=DIR` or `umoci init`",
        dir.display(),
        missing.join(", no ")
    )))
}

/// `cidboot publish`: pack, upload to each destination in order (stopping at the first that
/// fails), then, with --check, check the gateways.
pub async fn publish(mut a: PublishArgs) -> Result<i32, CliError> {
    check_layout(&a.dir)?;
    if let Some(path) = &a.config {
        let (c, dests) = upload::config::load(path).map_err(CliError::Usage)?;
        if a.to.is_empty() {
            a.to = dests;
        }
        if a.origins.is_empty() {
            a.origins = c.origins;
        }
        a.name = a.name.or(c.name);
        a.pin_timeout = a.pin_timeout.or(c.pin_timeout_secs);
        if let Some(ch) = c.check {
            a.check = true;
            if a.fetch.gateways.is_empty() {
                a.fetch.gateways = ch.gateways;
            }
            a.min = a.min.or(ch.min);
        }
    }
    if a.to.is_empty() {
        return Err(CliError::Usage(
            "nowhere to publish: give --to DEST (repeatable), or `to` in --config".into(),
        ));
    }
    if a.check && a.fetch.gateways.is_empty() {
        return Err(CliError::Usage(
            "--check needs the gateways to check: give --gateway URL (repeatable), or [check] gateways in --config".into(),
        ));
    }
    if a.min.is_some() && !a.check {
        return Err(CliError::Usage("--min goes with --check".into()));
    }
    let ca_bundle = match std::env::var_os("AWS_CA_BUNDLE").filter(|v| !v.is_empty()) {
        Some(p) => Some(std::fs::read_to_string(&p).map_err(|source| CliError::Io {
            what: format!("AWS_CA_BUNDLE={}", PathBuf::from(&p).display()),
            source,
        })?),
        None => None,
    };
    let tls =
        crate::transport::tls::client_config_with(a.fetch.ca.as_deref(), ca_bundle.as_deref())?;
    let http = crate::transport::http::HttpClient::new(
        std::sync::Arc::new(crate::transport::TcpConnector),
        tls,
        crate::transport::http::Timeouts::default(),
    );
    let staged = crate::scratch::PrivateDir::create(&std::env::temp_dir(), "cidboot-publish-")?;
    let car = match &a.car {
        Some(c) => c.clone(),
        None => staged.path().join("image.car"),
    };
    let packed = {
        let _s = super::progress::Spinner::new(format!("packing {}", a.dir.display()));
        let (dir, out) = (a.dir.clone(), car.clone());
        tokio::task::spawn_blocking(move || packer::pack_dir(&dir, &out))
            .await
            .map_err(|e| CliError::Io {
                what: "packing".into(),
                source: std::io::Error::other(e.to_string()),
            })??
    };
    let cid = packed.root_cid.clone();
    tracing::info!(%cid, blocks = packed.blocks, bytes = packed.bytes, "packed");
    let mut up = upload::Uploader::new(http);
    up.origins = a.origins.clone();
    up.name = Some(a.name.clone().unwrap_or_else(|| cid.clone()));
    up.pin_timeout = std::time::Duration::from_secs(a.pin_timeout.unwrap_or(600));
    let mut done = Vec::new();
    for dest in &a.to {
        let _s = super::progress::Spinner::new(format!("publishing {cid} to {dest}"));
        let u = up.upload(dest, &car, &cid).await?;
        tracing::info!(to = %dest, location = %u.location, "published");
        if !a.json {
            outln!("{dest}: {}", u.location)?;
        }
        done.push(u);
    }
    let report = if a.check {
        Some(super::check::check_gateways(&format!("ipfs://{cid}"), &a.fetch, a.min).await?)
    } else {
        None
    };
    /// Serialized directly, so that the keys keep this order (docs/json.md).
    #[derive(serde::Serialize)]
    struct PublishOut<'a> {
        cid: &'a str,
        blocks: u64,
        bytes: u64,
        uploads: &'a [upload::Uploaded],
        check: Option<&'a super::check::Report>,
    }
    if a.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&PublishOut {
                cid: &cid,
                blocks: packed.blocks,
                bytes: packed.bytes,
                uploads: &done,
                check: report.as_ref(),
            })
            .unwrap_or_default()
        )?;
    } else {
        if let Some(r) = &report {
            super::check::print(r, false)?;
        }
        outln!("{cid}")?;
    }
    Ok(match report {
        Some(r) if !r.ok => i32::from(super::exit::NO),
        _ => 0,
    })
}
