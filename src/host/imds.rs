//! The instance role's credentials from the EC2 instance metadata service, IMDSv2, as AWS
//! documents it: `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds` for a
//! session token, then, with the token in `X-aws-ec2-metadata-token`, the role's name from
//! `/latest/meta-data/iam/security-credentials/` and its credentials (`AccessKeyId`,
//! `SecretAccessKey`, `Token`, `Expiration`) from `…/security-credentials/ROLE`.
//!
//! The credentials are kept until [`REFRESH_BEFORE`] their expiration, then read again (AWS
//! makes the next ones available at least five minutes before); the token is kept for its
//! lifetime less a minute, and taken again when the service answers 401.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::relay::credentials::{credentials_from, Expiring, Source, REFRESH_BEFORE};
use crate::transport::http::{HttpClient, Origin, Timeouts};
use crate::transport::BoxFuture;

/// Where the instance metadata service is.
pub const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";
/// The session token's lifetime asked for (AWS's most: six hours).
pub const TOKEN_TTL_SECS: u64 = 21_600;
/// Largest answer read from the service.
pub const MAX_ANSWER: usize = 16 * 1024;
/// The longest one question to the service may take.
pub const TIMEOUT: Duration = Duration::from_secs(5);

const TOKEN_PATH: &str = "/latest/api/token";
const ROLES_PATH: &str = "/latest/meta-data/iam/security-credentials/";

/// The instance metadata service, as a source of the credentials `cidboot host` serves.
pub struct Imds {
    origin: Origin,
    http: HttpClient,
    token: tokio::sync::Mutex<Option<(Zeroizing<String>, Instant)>>,
    cached: tokio::sync::Mutex<Option<Expiring>>,
}

/// The role's credentials as the service writes them.
#[derive(Deserialize)]
struct Answer {
    #[serde(rename = "Code")]
    code: Option<String>,
    #[serde(rename = "AccessKeyId")]
    access_key_id: Option<String>,
    #[serde(rename = "SecretAccessKey")]
    secret_access_key: Option<String>,
    #[serde(rename = "Token")]
    token: Option<String>,
    #[serde(rename = "Expiration")]
    expiration: Option<String>,
}

impl Imds {
    /// The service at `endpoint` (`http://host[:port]`; [`DEFAULT_ENDPOINT`] on EC2).
    pub fn new(endpoint: &str) -> Result<Imds, String> {
        let (origin, path) = Origin::parse(endpoint).map_err(|e| e.to_string())?;
        if origin.tls || !path.is_empty() {
            return Err(format!(
                "imds_endpoint {endpoint:?}: give http://host[:port], as the instance metadata service is served"
            ));
        }
        let tls = crate::transport::tls::client_config(None).map_err(|e| e.to_string())?;
        let timeouts = Timeouts {
            connect: Duration::from_secs(2),
            first_byte: TIMEOUT,
            idle: TIMEOUT,
            min_rate: 0,
            rate_window: TIMEOUT,
        };
        Ok(Imds {
            origin,
            http: HttpClient::new(Arc::new(crate::transport::TcpConnector), tls, timeouts),
            token: tokio::sync::Mutex::new(None),
            cached: tokio::sync::Mutex::new(None),
        })
    }

    async fn read(
        resp: crate::transport::http::Response,
        what: &str,
    ) -> Result<Zeroizing<Vec<u8>>, String> {
        let status = resp.status.as_u16();
        let body = resp
            .bytes_limited(MAX_ANSWER)
            .await
            .map_err(|e| format!("{what}: {e}"))?
            .map_err(|_| format!("{what}: an answer over {MAX_ANSWER} bytes"))?;
        if status != 200 {
            return Err(format!("{what}: HTTP {status}"));
        }
        Ok(Zeroizing::new(body.to_vec()))
    }

    /// A session token: the one kept, or a new one.
    async fn token(&self, renew: bool) -> Result<Zeroizing<String>, String> {
        let mut kept = self.token.lock().await;
        if let Some((t, until)) = kept.as_ref() {
            if !renew && Instant::now() < *until {
                return Ok(t.clone());
            }
        }
        let ttl = TOKEN_TTL_SECS.to_string();
        let what = format!("PUT {}{TOKEN_PATH}", self.origin);
        let resp = self
            .http
            .put(
                &self.origin,
                TOKEN_PATH,
                &[("x-aws-ec2-metadata-token-ttl-seconds", &ttl)],
                Bytes::new(),
            )
            .await
            .map_err(|e| format!("{what}: {e}"))?;
        let body = Self::read(resp, &what).await?;
        let token = std::str::from_utf8(&body)
            .ok()
            .map(str::trim)
            .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or_else(|| format!("{what}: the token is not printable text"))?;
        let token = Zeroizing::new(token.to_string());
        *kept = Some((
            token.clone(),
            Instant::now() + Duration::from_secs(TOKEN_TTL_SECS - 60),
        ));
        Ok(token)
    }

    /// `GET path` with the token; a 401 (an expired token) takes a new token, once.
    async fn get(&self, path: &str) -> Result<Zeroizing<Vec<u8>>, String> {
        let what = format!("GET {}{path}", self.origin);
        let mut renew = false;
        loop {
            let token = self.token(renew).await?;
            let resp = self
                .http
                .get(
                    &self.origin,
                    path,
                    &[("x-aws-ec2-metadata-token", token.as_str())],
                )
                .await
                .map_err(|e| format!("{what}: {e}"))?;
            if resp.status.as_u16() == 401 && !renew {
                renew = true;
                continue;
            }
            return Self::read(resp, &what).await;
        }
    }

    /// The role's credentials, read now.
    async fn read_credentials(&self) -> Result<Expiring, String> {
        let roles = self.get(ROLES_PATH).await?;
        let role = std::str::from_utf8(&roles)
            .ok()
            .and_then(|t| t.lines().next())
            .map(str::trim)
            .filter(|r| {
                !r.is_empty()
                    && r.len() <= 128
                    && r.bytes().all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b))
            })
            .ok_or("the instance has no IAM role (no name under /latest/meta-data/iam/security-credentials/): attach an instance profile")?
            .to_string();
        let body = self.get(&format!("{ROLES_PATH}{role}")).await?;
        let a: Answer = serde_json::from_slice(&body)
            .map_err(|e| format!("the credentials of role {role} are not JSON: {e}"))?;
        if let Some(c) = a.code.as_deref().filter(|c| *c != "Success") {
            return Err(format!("the credentials of role {role}: Code {c:?}"));
        }
        let e = credentials_from(
            a.access_key_id,
            a.secret_access_key,
            a.token,
            a.expiration.as_deref(),
        )
        .map_err(|e| format!("the credentials of role {role}: {e}"))?;
        if e.expiration.is_none() {
            return Err(format!("the credentials of role {role} have no Expiration"));
        }
        Ok(e)
    }
}

impl Source for Imds {
    fn get(&self) -> BoxFuture<'_, Result<Expiring, String>> {
        Box::pin(async move {
            let mut cached = self.cached.lock().await;
            if let Some(e) = cached.as_ref() {
                if e.expiration
                    .is_some_and(|x| SystemTime::now() + REFRESH_BEFORE < x)
                {
                    return Ok(e.clone());
                }
            }
            match self.read_credentials().await {
                Ok(e) => {
                    *cached = Some(e.clone());
                    Ok(e)
                }
                // Credentials still valid are better than none while the service is away.
                Err(err) => match cached.as_ref() {
                    Some(e) if e.expiration.is_some_and(|x| SystemTime::now() < x) => {
                        tracing::warn!("refreshing the instance role's credentials: {err}; serving the current ones until they expire");
                        Ok(e.clone())
                    }
                    _ => Err(err),
                },
            }
        })
    }

    fn describe(&self) -> String {
        format!(
            "the instance role, from the instance metadata service at {}",
            self.origin
        )
    }
}
