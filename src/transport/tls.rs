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
/// A development CA and a certificate it signs for `localhost`, `127.0.0.1` and `::1`, for
/// the dev gateway. The CA is kept: its certificate at `ca_out`, for clients to pass as
/// `--ca`, and its key beside it (`ca_out` + `.key`), both `0600` (a directory made for them
/// is `0700`). A later start with the same `ca_out` signs with the same CA, so clients keep
/// trusting the gateway across restarts; a fresh leaf is made at each start.
pub fn self_signed(ca_out: &Path) -> Result<Arc<ServerConfig>, TransportError> {
    use rcgen::{CertificateParams, KeyPair};
    let e = |e: rcgen::Error| TransportError::TlsConfig(format!("generating a certificate: {e}"));
    let (ca, ca_key) = dev_ca(ca_out)?;
    let leaf_key = KeyPair::generate().map_err(e)?;
    let leaf_params = CertificateParams::new(vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ])
    .map_err(e)?;
    let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key).map_err(e)?;
    let key = PrivateKeyDer::try_from(leaf_key.serialize_der())
        .map_err(|e| TransportError::TlsConfig(e.to_string()))?;
    server_config_for(vec![leaf.der().clone()], key)
}

/// The development CA at `ca_out`: the one kept there, or a new one written there.
#[cfg(feature = "dev-gateway")]
fn dev_ca(ca_out: &Path) -> Result<(rcgen::Certificate, rcgen::KeyPair), TransportError> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose};
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let e = |e: rcgen::Error| TransportError::TlsConfig(format!("generating a certificate: {e}"));
    let bad = |path: &Path, reason: String| TransportError::BadCa {
        path: path.display().to_string(),
        reason,
    };
    let mut key_path = ca_out.as_os_str().to_owned();
    key_path.push(".key");
    let key_path = std::path::PathBuf::from(key_path);
    // The CA certificate is the same subject and key each time: what a client trusts in it.
    let params = || -> Result<CertificateParams, TransportError> {
        let mut p = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "cidboot dev gateway CA");
        Ok(p)
    };
    let kept = match std::fs::symlink_metadata(&key_path) {
        Ok(m) if !m.is_file() => return Err(bad(&key_path, "not a regular file".into())),
        Ok(m) if m.permissions().mode() & 0o077 != 0 => {
            return Err(bad(
                &key_path,
                format!(
                    "the CA's key is mode {:o}: others could sign for localhost; chmod 600 it",
                    m.permissions().mode() & 0o777
                ),
            ))
        }
        Ok(_) => {
            let pem =
                std::fs::read_to_string(&key_path).map_err(|e| bad(&key_path, e.to_string()))?;
            Some(
                KeyPair::from_pem(&pem)
                    .map_err(|e| bad(&key_path, format!("not the CA's key: {e}")))?,
            )
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(bad(&key_path, e.to_string())),
    };
    if let Some(key) = kept {
        let ca = params()?.self_signed(&key).map_err(e)?;
        match std::fs::read(ca_out) {
            Ok(pem) => {
                let der = CertificateDer::from_pem_slice(&pem)
                    .map_err(|e| bad(ca_out, format!("no certificate: {e}")))?;
                let (_, cert) = x509_parser::parse_x509_certificate(&der)
                    .map_err(|e| bad(ca_out, e.to_string()))?;
                if cert.public_key().raw != key.public_key_der().as_slice() {
                    return Err(bad(
                        ca_out,
                        format!(
                            "not the certificate of the CA key {}; remove both to make a new CA",
                            key_path.display()
                        ),
                    ));
                }
                tracing::info!(ca = %ca_out.display(), "signing with the kept development CA");
            }
            // The key alone: its certificate is written again (the same subject and key).
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                write_private(ca_out, ca.pem().as_bytes(), false)?;
                tracing::info!(ca = %ca_out.display(), "wrote the kept development CA's certificate again");
            }
            Err(err) => return Err(bad(ca_out, err.to_string())),
        }
        return Ok((ca, key));
    }
    if let Some(dir) = ca_out.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|err| bad(ca_out, format!("creating {}: {err}", dir.display())))?;
        }
    }
    let key = KeyPair::generate().map_err(e)?;
    let ca = params()?.self_signed(&key).map_err(e)?;
    // The key first, private from its first instant: a certificate without its key is
    // replaced at the next start, a key without its certificate is kept.
    write_private(&key_path, key.serialize_pem().as_bytes(), true)?;
    write_private(ca_out, ca.pem().as_bytes(), false)?;
    tracing::info!(ca = %ca_out.display(), key = %key_path.display(), "made a development CA; later starts sign with it");
    Ok((ca, key))
}

/// Writes `bytes` to `path` with mode `0600` from its creation: a new file (`new`), or a
/// file put in place by a rename.
#[cfg(feature = "dev-gateway")]
fn write_private(path: &Path, bytes: &[u8], new: bool) -> Result<(), TransportError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let bad = |reason: String| TransportError::BadCa {
        path: path.display().to_string(),
        reason,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    let target = if new { path } else { tmp.as_path() };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(target)
        .map_err(|e| bad(e.to_string()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| bad(e.to_string()))?;
    if !new {
        std::fs::rename(&tmp, path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            bad(e.to_string())
        })?;
    }
    Ok(())
}
