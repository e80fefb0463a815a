use std::path::PathBuf;

use clap::Args;

use super::CliError;
use crate::publish::artifact;
use crate::publish::pack as packer;
#[cfg(feature = "dev-gateway")]
use crate::publish::serve;
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
