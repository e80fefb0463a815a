use std::path::PathBuf;

use clap::Args;

use super::CliError;
use crate::publish::{pack as packer, serve};
use crate::transport::tls;

#[derive(Args, Debug)]
pub struct PackArgs {
    /// The OCI image layout directory.
    pub dir: PathBuf,
    /// Where to write the CAR.
    #[arg(long)]
    pub car: PathBuf,
    /// Print {"root_cid": "..."} instead of the bare CID.
    #[arg(long)]
    pub json: bool,
}

pub fn pack(a: PackArgs) -> Result<(), CliError> {
    let packed = packer::pack_dir(&a.dir, &a.car)?;
    if a.json {
        println!("{}", serde_json::json!({ "root_cid": packed.root_cid }));
    } else {
        println!("{}", packed.root_cid);
    }
    tracing::info!(blocks = packed.blocks, bytes = packed.bytes, car = %a.car.display(), "packed");
    Ok(())
}

#[derive(Args, Debug)]
pub struct GatewayArgs {
    /// CAR files whose blocks are served (repeatable).
    #[arg(long = "car", required = true)]
    pub cars: Vec<PathBuf>,
    /// Address to listen on, e.g. 127.0.0.1:8080 (port 0 picks one; the URL is printed).
    #[arg(long)]
    pub listen: String,
    /// TLS certificate chain (PEM); with --tls-key, serves HTTPS.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve HTTPS with a fresh certificate for localhost; its CA goes to this PEM file.
    #[arg(long, value_name = "CA_OUT", conflicts_with = "tls_cert")]
    pub tls_self_signed: Option<PathBuf>,
    /// Serve the CARs' blocks exactly as they are, without checking them against their CIDs:
    /// a tampering gateway, for testing verifiers. Never for anything else.
    #[arg(long)]
    pub insecure_serve_unverified: bool,
}

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
