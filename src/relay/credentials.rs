//! AWS credentials from the parent, for the enclave's KMS calls.
//!
//! Credentials authorize a call, not a secret (the key policy's attestation conditions do), so
//! the parent may hand them over: `cidboot host` serves the instance role's credentials, read
//! from the instance metadata service (`host::imds`), or for development its own AWS
//! environment and profile. The enclave asks for them on [`super::CREDENTIALS_PORT`] before
//! its KMS calls ([`FromParent`]) and keeps them until shortly before they expire.
//!
//! One frame per connection, parent to enclave, then the parent closes: `length (u32 BE) ||
//! JSON`, the JSON with the fields of the instance metadata service's answer (`AccessKeyId`,
//! `SecretAccessKey`, `Token`, `Expiration` in RFC 3339), or `{"Error": "…"}` when the parent
//! has none to give.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{info, warn};
use zeroize::Zeroizing;

use crate::kms::{AwsCredentials, Credentials, KmsError};
use crate::transport::addr::{Addr, Listener};
use crate::transport::BoxFuture;

/// Largest frame either side reads or sends.
pub const MAX_FRAME: usize = 16 * 1024;
/// Time to hand over one set of credentials, on either side.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// Credentials are taken again this long before they expire (AWS makes an instance role's
/// new credentials available at least five minutes before the old ones expire).
pub const REFRESH_BEFORE: Duration = Duration::from_secs(5 * 60);
/// How long credentials without an expiration (long-term keys) are kept before asking again.
pub const KEEP_STATIC: Duration = Duration::from_secs(5 * 60);
/// Credential requests served at once.
pub const MAX_CONNECTIONS: usize = 16;

/// Credentials and when they expire (none for long-term keys).
#[derive(Clone, Debug)]
pub struct Expiring {
    /// The keys.
    pub creds: AwsCredentials,
    /// When they stop working.
    pub expiration: Option<SystemTime>,
}

/// The frame's JSON: the instance metadata service's own field names.
#[derive(Serialize, Deserialize)]
struct Wire {
    #[serde(
        rename = "AccessKeyId",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    access_key_id: Option<String>,
    #[serde(
        rename = "SecretAccessKey",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    secret_access_key: Option<String>,
    #[serde(rename = "Token", default, skip_serializing_if = "Option::is_none")]
    token: Option<String>,
    #[serde(
        rename = "Expiration",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    expiration: Option<String>,
    #[serde(rename = "Error", default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// `2024-05-01T12:00:00Z` and the other RFC 3339 forms AWS writes.
pub fn parse_time(s: &str) -> Result<SystemTime, String> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map(SystemTime::from)
        .map_err(|e| format!("Expiration {s:?} is not an RFC 3339 time: {e}"))
}

fn format_time(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Checks what a source or the parent gave: the fields AWS's signer needs, each bounded.
pub fn credentials_from(
    id: Option<String>,
    secret: Option<String>,
    token: Option<String>,
    expiration: Option<&str>,
) -> Result<Expiring, String> {
    let secret = secret.map(Zeroizing::new);
    let token = token.map(Zeroizing::new);
    let (Some(id), Some(secret)) = (id, secret) else {
        return Err("no AccessKeyId and SecretAccessKey".into());
    };
    let printable =
        |s: &str| !s.is_empty() && s.len() <= 4096 && s.bytes().all(|b| b.is_ascii_graphic());
    if !printable(&id) || id.len() > 128 || !printable(&secret) {
        return Err("AccessKeyId or SecretAccessKey is empty, too long or not printable".into());
    }
    if token.as_ref().is_some_and(|t| !printable(t)) {
        return Err("Token is empty, over 4096 bytes or not printable".into());
    }
    Ok(Expiring {
        creds: AwsCredentials {
            access_key_id: id,
            secret_access_key: secret,
            session_token: token,
        },
        expiration: expiration.map(parse_time).transpose()?,
    })
}

/// Where the parent gets the credentials it serves.
pub trait Source: Send + Sync {
    /// The credentials to hand over now (a source refreshes them itself).
    fn get(&self) -> BoxFuture<'_, Result<Expiring, String>>;
    /// What it is, for the log.
    fn describe(&self) -> String;
}

/// The parent's own AWS environment variables and profile, read again at every request (the
/// development source: on an instance, the role's credentials come from `host::imds`).
pub struct HostEnvironment;

impl Source for HostEnvironment {
    fn get(&self) -> BoxFuture<'_, Result<Expiring, String>> {
        Box::pin(async move {
            let env = crate::kms::credentials::Environment::process();
            let c = crate::kms::credentials::from_environment(&env).map_err(|e| e.to_string())?;
            let creds = c.credentials().await.map_err(|e| e.to_string())?;
            Ok(Expiring {
                creds,
                expiration: None,
            })
        })
    }

    fn describe(&self) -> String {
        "the host's AWS environment and profile".into()
    }
}

/// Serves credentials from `source` to every enclave that asks.
pub async fn serve(listener: Listener, source: Arc<dyn Source>) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (mut io, peer) = listener.accept_retrying("credentials").await;
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            warn!(client = %peer, "credentials: {MAX_CONNECTIONS} requests already; closing this one");
            continue;
        };
        let source = source.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let r = tokio::time::timeout(TIMEOUT, async {
                let got = source.get().await;
                let wire = match &got {
                    Ok(e) => Wire {
                        access_key_id: Some(e.creds.access_key_id.clone()),
                        secret_access_key: Some(e.creds.secret_access_key.to_string()),
                        token: e.creds.session_token.as_ref().map(|t| t.to_string()),
                        expiration: e.expiration.map(format_time),
                        error: None,
                    },
                    Err(reason) => Wire {
                        access_key_id: None,
                        secret_access_key: None,
                        token: None,
                        expiration: None,
                        error: Some(reason.clone()),
                    },
                };
                let body =
                    Zeroizing::new(serde_json::to_vec(&wire).map_err(std::io::Error::other)?);
                let mut frame = Zeroizing::new(Vec::with_capacity(4 + body.len()));
                frame.extend_from_slice(
                    &u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes(),
                );
                frame.extend_from_slice(&body);
                io.write_all(&frame).await?;
                io.shutdown().await?;
                Ok::<_, std::io::Error>(got.map(|e| (e.creds.access_key_id, e.expiration)))
            })
            .await;
            match r {
                Ok(Ok(Ok((id, exp)))) => {
                    info!(client = %peer, access_key_id = %id, expiration = exp.map(format_time).unwrap_or_else(|| "-".into()), "credentials served")
                }
                Ok(Ok(Err(e))) => warn!(client = %peer, "no credentials to serve: {e}"),
                Ok(Err(e)) => warn!(client = %peer, error = %e, "serving credentials failed"),
                Err(_) => warn!(client = %peer, "serving credentials timed out"),
            }
        });
    }
}

/// Asks the parent at `addr` for credentials, once.
pub async fn fetch(addr: &Addr) -> Result<Expiring, String> {
    let got = tokio::time::timeout(TIMEOUT, async {
        let mut io = addr.connect().await.map_err(|e| e.to_string())?;
        let len = io.read_u32().await.map_err(|e| e.to_string())? as usize;
        if len > MAX_FRAME {
            return Err(format!("an answer of {len} bytes (at most {MAX_FRAME})"));
        }
        let mut buf = Zeroizing::new(vec![0u8; len]);
        io.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        Ok(buf)
    })
    .await
    .map_err(|_| format!("no answer within {}s", TIMEOUT.as_secs()))??;
    let w: Wire = serde_json::from_slice(&got)
        .map_err(|e| format!("the answer is not the credentials' JSON: {e}"))?;
    if let Some(e) = w.error {
        let e: String = e
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(1024)
            .collect();
        return Err(format!("the parent has none to give: {e}"));
    }
    credentials_from(
        w.access_key_id,
        w.secret_access_key,
        w.token,
        w.expiration.as_deref(),
    )
}

/// The enclave's credentials: the parent's, asked for at most once per [`TIMEOUT`] and kept
/// until [`REFRESH_BEFORE`] their expiration ([`KEEP_STATIC`] without one).
pub struct FromParent {
    addr: Addr,
    cached: tokio::sync::Mutex<Option<(Expiring, Instant)>>,
}

impl FromParent {
    /// Credentials from the parent's service at `addr`.
    pub fn new(addr: Addr) -> FromParent {
        FromParent {
            addr,
            cached: tokio::sync::Mutex::new(None),
        }
    }
}

/// Whether credentials taken at `taken` are still to be used at `now`.
fn fresh(e: &Expiring, taken: Instant, now: SystemTime) -> bool {
    match e.expiration {
        Some(exp) => now + REFRESH_BEFORE < exp,
        None => taken.elapsed() < KEEP_STATIC,
    }
}

impl Credentials for FromParent {
    fn credentials(&self) -> BoxFuture<'_, Result<AwsCredentials, KmsError>> {
        Box::pin(async move {
            let mut cached = self.cached.lock().await;
            if let Some((e, taken)) = cached.as_ref() {
                if fresh(e, *taken, SystemTime::now()) {
                    return Ok(e.creds.clone());
                }
            }
            let e = fetch(&self.addr).await.map_err(|e| {
                KmsError::Credentials(format!(
                    "from the parent ({}): {e} (the parent's cidboot host serves them with [credentials])",
                    self.addr
                ))
            })?;
            if e.expiration.is_some_and(|exp| exp <= SystemTime::now()) {
                return Err(KmsError::Credentials(format!(
                    "from the parent ({}): they expired at {} (is the clock right?)",
                    self.addr,
                    e.expiration.map(format_time).unwrap_or_default()
                )));
            }
            let creds = e.creds.clone();
            *cached = Some((e, Instant::now()));
            Ok(creds)
        })
    }

    fn source(&self) -> String {
        format!("the parent ({})", self.addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_checked_and_kept_until_shortly_before_they_expire() {
        let ok = credentials_from(
            Some("ASIAX".into()),
            Some("s".into()),
            Some("t".into()),
            Some("2030-01-02T03:04:05Z"),
        )
        .unwrap();
        assert_eq!(ok.creds.access_key_id, "ASIAX");
        let exp = ok.expiration.unwrap();
        assert_eq!(format_time(exp), "2030-01-02T03:04:05Z");
        let now = Instant::now();
        assert!(fresh(
            &ok,
            now,
            exp - REFRESH_BEFORE - Duration::from_secs(1)
        ));
        assert!(!fresh(
            &ok,
            now,
            exp - REFRESH_BEFORE + Duration::from_secs(1)
        ));
        let long_term =
            credentials_from(Some("AKIA".into()), Some("s".into()), None, None).unwrap();
        assert!(fresh(&long_term, now, SystemTime::now()));
        assert!(!fresh(&long_term, now - KEEP_STATIC, SystemTime::now()));
        for (id, secret, token, exp) in [
            (None, Some("s"), None, None),
            (Some("A"), None, None, None),
            (Some(""), Some("s"), None, None),
            (Some("A B"), Some("s"), None, None),
            (Some("A"), Some("s"), Some(""), None),
            (Some("A"), Some("s"), None, Some("tomorrow")),
        ] {
            assert!(
                credentials_from(
                    id.map(String::from),
                    secret.map(String::from),
                    token.map(String::from),
                    exp
                )
                .is_err(),
                "{id:?} {secret:?} {token:?} {exp:?}"
            );
        }
    }
}
