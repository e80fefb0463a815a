//! rustls configuration. TLS always terminates inside cidboot: the parent, a proxy or the
//! network only ever see ciphertext.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use super::TransportError;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate in a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let bad = |reason: String| TransportError::BadCa {
        path: path.display().to_string(),
        reason,
    };
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no certificates found".into()));
    }
    Ok(certs)
}

/// A client config trusting the built-in web PKI roots plus an optional extra CA file.
pub fn client_config(extra_ca: Option<&Path>) -> Result<Arc<ClientConfig>, TransportError> {
    client_config_with(extra_ca, None)
}

/// The same, also trusting the CA certificates of `pem` (the configuration's `[tls] extra_ca`).
pub fn client_config_with(
    extra_ca: Option<&Path>,
    pem: Option<&str>,
) -> Result<Arc<ClientConfig>, TransportError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let mut extra = Vec::new();
    if let Some(path) = extra_ca {
        extra.push((path.display().to_string(), load_certs(path)?));
    }
    if let Some(pem) = pem {
        let bad = |reason: String| TransportError::BadCa {
            path: "[tls] extra_ca".into(),
            reason,
        };
        let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| bad(e.to_string()))?;
        if certs.is_empty() {
            return Err(bad("no certificates found".into()));
        }
        extra.push(("[tls] extra_ca".into(), certs));
    }
    for (origin, certs) in extra {
        for cert in certs {
            roots.add(cert).map_err(|e| TransportError::BadCa {
                path: origin.clone(),
                reason: e.to_string(),
            })?;
        }
    }
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TransportError::TlsConfig(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// A server config from PEM certificate chain and key files.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TransportError> {
    let certs = load_certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TransportError::BadCa {
        path: key.display().to_string(),
        reason: format!("no usable private key: {e}"),
    })?;
    server_config_for(certs, key)
}

/// Every server configuration cidboot makes: the safe default protocol versions of the ring
/// provider, no client authentication, one certificate chain, HTTP/1.1 by ALPN.
fn server_config_for(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, TransportError> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TransportError::TlsConfig(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TransportError::TlsConfig(e.to_string()))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

#[cfg(feature = "dev-gateway")]
/// A throwaway CA and a certificate for `localhost`, `127.0.0.1` and `::1`, for the dev
/// gateway. The CA certificate is written to `ca_out` for clients to pass as `--ca`.
pub fn self_signed(ca_out: &Path) -> Result<Arc<ServerConfig>, TransportError> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose};
    let e = |e: rcgen::Error| TransportError::TlsConfig(format!("generating a certificate: {e}"));
    let ca_key = KeyPair::generate().map_err(e)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "cidboot dev gateway CA");
    let ca = ca_params.self_signed(&ca_key).map_err(e)?;
    let leaf_key = KeyPair::generate().map_err(e)?;
    let leaf_params = CertificateParams::new(vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ])
    .map_err(e)?;
    let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key).map_err(e)?;
    std::fs::write(ca_out, ca.pem()).map_err(|source| TransportError::BadCa {
        path: ca_out.display().to_string(),
        reason: source.to_string(),
    })?;
    let key = PrivateKeyDer::try_from(leaf_key.serialize_der())
        .map_err(|e| TransportError::TlsConfig(e.to_string()))?;
    server_config_for(vec![leaf.der().clone()], key)
}
