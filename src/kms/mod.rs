//! An AWS KMS client for the enclave and the operator: the KMS JSON API (`POST /` with
//! `X-Amz-Target: TrentService.<Op>`), requests signed with SigV4 by AWS's `aws-sigv4` crate,
//! sent over HTTPS that ends in this process through any [`Connector`] (TCP, or the parent's
//! CONNECT proxy in an enclave).
//!
//! What it trusts, and why:
//! - **Only HTTPS, only the web PKI roots or the measured `[tls] extra_ca`.** A
//!   `CiphertextForRecipient` is AES-256-CBC without a MAC, encrypted to a public key that is in
//!   the attestation document for anyone to read: whoever can rewrite KMS's answer can encrypt
//!   a value of their own choosing to it. Over `http://` that would be the parent, so an
//!   `http://` endpoint is refused when the configuration is read ([`Endpoint::new`]).
//! - **Credentials authorize the call, not the secret.** They come from a [`Credentials`]
//!   source (the environment and profile files here; the parent later). What releases a
//!   secret to an enclave is the key policy's `kms:RecipientAttestation:*` conditions, checked
//!   by KMS against the attestation document sent as the `Recipient`; the plaintext then
//!   exists only inside the enclave, which holds the document's private key.
//! - **Every answer is bounded**: [`MAX_RESPONSE`] bytes and [`DEFAULT_TIMEOUT`] for the whole
//!   exchange, and each failure names the operation, the key and KMS's own error code.

pub mod credentials;
mod ops;
pub mod proxy;
mod recipient;
pub mod sealed;
pub mod sign;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

pub use credentials::{AwsCredentials, Credentials};
pub use ops::{DataKey, Encrypted, EncryptionContext, Secret, MAX_CIPHERTEXT, MAX_KEY_ID};

use crate::transport::http::{HttpClient, Origin, Timeouts};
use crate::transport::{Connector, TransportError};

/// Largest KMS response read. The largest real one, a `CiphertextForRecipient` of a
/// 4096-byte plaintext, is under 8 KiB in base64.
pub const MAX_RESPONSE: usize = 64 * 1024;
/// The longest one KMS call may take, from connecting to the end of the answer.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest plaintext `Encrypt` takes (KMS's own limit).
pub const MAX_PLAINTEXT: usize = 4096;
/// Most bytes `GenerateRandom` and `GenerateDataKey` make in one call (KMS's own limit).
pub const MAX_GENERATED: u32 = 1024;
/// The signing name of the service, and its JSON API's target prefix.
const SERVICE: &str = "kms";
const TARGET_PREFIX: &str = "TrentService.";
const CONTENT_TYPE: &str = "application/x-amz-json-1.1";

/// Why a KMS call, or the client's configuration, failed.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each variant's #[error] message is its documentation
pub enum KmsError {
    #[error("KMS endpoint {endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error("AWS region {region:?}: {reason}")]
    Region { region: String, reason: String },
    #[error("AWS credentials: {0}")]
    Credentials(String),
    #[error("{call}: {reason}")]
    Input { call: Call, reason: String },
    #[error("{call}: signing the request: {reason}")]
    Sign { call: Call, reason: String },
    #[error("{call}: {source}")]
    Transport { call: Call, source: TransportError },
    #[error("{call}: TLS with {endpoint} failed: {reason}; KMS is trusted only through the web PKI roots, or a CA given with --ca or AWS_CA_BUNDLE (cidboot seal; in an enclave and under cidboot run, the configuration's [tls] extra_ca)")]
    Certificate {
        call: Call,
        endpoint: String,
        reason: String,
    },
    #[error("{call}: reading the answer from {endpoint}: {source}")]
    Read {
        call: Call,
        endpoint: String,
        source: std::io::Error,
    },
    #[error("{call}: no complete answer from {endpoint} within {secs}s")]
    Timeout {
        call: Call,
        endpoint: String,
        secs: u64,
    },
    #[error("{call}: the answer from {endpoint} is over the {max}-byte limit")]
    TooLarge {
        call: Call,
        endpoint: String,
        max: usize,
    },
    #[error("{call}: KMS answered HTTP {status} {code}: {message}")]
    Kms {
        call: Call,
        status: u16,
        code: String,
        message: String,
    },
    #[error("{call}: KMS answered HTTP {status} AccessDeniedException: {message}; the attestation document sent carried {pcrs}: compare them with the key policy's kms:RecipientAttestation conditions (cidboot expect --kms-policy prints them)")]
    AccessDenied {
        call: Call,
        status: u16,
        message: String,
        pcrs: String,
    },
    #[error("{call}: the answer is not what KMS sends: {reason}")]
    Response { call: Call, reason: String },
    #[error("{call}: making the attestation document: {reason}")]
    Attestation { call: Call, reason: String },
    #[error("{call}: opening CiphertextForRecipient: {reason}")]
    Recipient { call: Call, reason: String },
}

impl KmsError {
    /// KMS's error code (`__type`) when KMS itself refused the call.
    pub fn code(&self) -> Option<&str> {
        match self {
            KmsError::Kms { code, .. } => Some(code),
            KmsError::AccessDenied { .. } => Some("AccessDeniedException"),
            _ => None,
        }
    }
}

/// Which call failed: the operation and the key, as every error names them.
#[derive(Debug, Clone)]
pub struct Call {
    /// `Decrypt`, `GenerateDataKey`, …
    pub op: &'static str,
    /// The key asked for, as given (none for `GenerateRandom`, or a `Decrypt` without one).
    pub key: Option<String>,
}

impl Call {
    fn new(op: &'static str, key: Option<&str>) -> Call {
        Call {
            op,
            key: key.map(str::to_string),
        }
    }
}

impl std::fmt::Display for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.key {
            Some(k) => write!(f, "KMS {} with key {k}", self.op),
            None => write!(f, "KMS {}", self.op),
        }
    }
}

/// Where KMS is: an HTTPS origin and the region requests are signed for.
#[derive(Debug, Clone)]
pub struct Endpoint {
    origin: Origin,
    region: String,
}

impl Endpoint {
    /// `endpoint` (`https://host[:port]`), or `https://kms.<region>.amazonaws.com` without one.
    /// Anything but `https` is refused, with the reason: see the module documentation.
    pub fn new(region: &str, endpoint: Option<&str>) -> Result<Endpoint, KmsError> {
        check_region(region)?;
        let url = match endpoint {
            Some(e) => e.to_string(),
            None => format!("https://kms.{region}.amazonaws.com"),
        };
        let bad = |reason: String| KmsError::Endpoint {
            endpoint: url.clone(),
            reason,
        };
        let lower = url.to_ascii_lowercase();
        if lower.starts_with("http://") {
            return Err(bad("only https:// is accepted: KMS's CiphertextForRecipient is AES-CBC without a MAC, so whoever can rewrite the answer chooses the secret, and over http that is anyone on the path, the parent included".into()));
        }
        if !lower.starts_with("https://") {
            return Err(bad("not an https:// URL".into()));
        }
        let (origin, path) = Origin::parse(&url).map_err(|e| bad(e.to_string()))?;
        if !path.is_empty() || url.contains('?') || url.contains('#') {
            return Err(bad(
                "give the origin only (https://host[:port]): KMS is served at /".into(),
            ));
        }
        Ok(Endpoint {
            origin,
            region: region.to_string(),
        })
    }

    /// The region requests are signed for.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// The origin requests go to.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.origin)
    }
}

/// An AWS region name: lowercase letters, digits and dashes, as AWS names them.
pub fn check_region(region: &str) -> Result<(), KmsError> {
    let ok = !region.is_empty()
        && region.len() <= 32
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !region.starts_with('-')
        && !region.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(KmsError::Region {
            region: region.to_string(),
            reason: "not a region name (like us-east-1: lowercase letters, digits and dashes)"
                .into(),
        })
    }
}

/// A KMS client: one endpoint, one source of credentials, one HTTPS client.
#[derive(Clone)]
pub struct KmsClient {
    endpoint: Endpoint,
    http: HttpClient,
    credentials: Arc<dyn Credentials>,
    timeout: Duration,
}

impl KmsClient {
    /// A client of `endpoint` that connects through `connector`, trusts the servers `tls`
    /// trusts (build it with [`crate::transport::tls::client_config_with`] from the web PKI
    /// roots and the measured `[tls] extra_ca`), and signs with `credentials`.
    pub fn new(
        endpoint: Endpoint,
        connector: Arc<dyn Connector>,
        tls: Arc<rustls::ClientConfig>,
        credentials: Arc<dyn Credentials>,
    ) -> KmsClient {
        KmsClient {
            endpoint,
            http: HttpClient::new(connector, tls, http_timeouts(DEFAULT_TIMEOUT)),
            credentials,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The same client with another limit on each whole call (at least one second).
    pub fn with_timeout(mut self, timeout: Duration) -> KmsClient {
        self.timeout = timeout.max(Duration::from_secs(1));
        self.http.timeouts = http_timeouts(self.timeout);
        self
    }

    /// Where this client sends its calls.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// One JSON call: signs `body`, posts it, and returns the answer's JSON, or KMS's error.
    async fn call(&self, call: &Call, body: Vec<u8>) -> Result<serde_json::Value, KmsError> {
        let endpoint = self.endpoint.to_string();
        let secs = self.timeout.as_secs();
        match tokio::time::timeout(self.timeout, self.exchange(call, body)).await {
            Ok(r) => r,
            Err(_) => Err(KmsError::Timeout {
                call: call.clone(),
                endpoint,
                secs,
            }),
        }
    }

    async fn exchange(&self, call: &Call, body: Vec<u8>) -> Result<serde_json::Value, KmsError> {
        let endpoint = self.endpoint.to_string();
        let creds = self.credentials.credentials().await?;
        let target = format!("{TARGET_PREFIX}{}", call.op);
        let host = self.endpoint.origin.authority();
        let url = format!("https://{host}/");
        let unsigned = [
            ("content-type", CONTENT_TYPE),
            ("host", host.as_str()),
            ("x-amz-target", target.as_str()),
        ];
        let signed = sign::sign(
            &sign::Request {
                method: "POST",
                url: &url,
                headers: &unsigned,
                body: &body,
            },
            &creds,
            &self.endpoint.region,
            SERVICE,
            std::time::SystemTime::now(),
        )
        .map_err(|reason| KmsError::Sign {
            call: call.clone(),
            reason,
        })?;
        let mut headers: Vec<(&str, &str)> = vec![
            ("content-type", CONTENT_TYPE),
            ("x-amz-target", target.as_str()),
        ];
        headers.extend(signed.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let resp = self
            .http
            .post(&self.endpoint.origin, "/", &headers, Bytes::from(body))
            .await
            .map_err(|source| match source {
                TransportError::Certificate { source, .. } => KmsError::Certificate {
                    call: call.clone(),
                    endpoint: endpoint.clone(),
                    reason: source.to_string(),
                },
                source => KmsError::Transport {
                    call: call.clone(),
                    source,
                },
            })?;
        let status = resp.status;
        let header_type = resp.header("x-amzn-errortype").map(str::to_string);
        let too_large = || KmsError::TooLarge {
            call: call.clone(),
            endpoint: endpoint.clone(),
            max: MAX_RESPONSE,
        };
        if resp
            .header("content-length")
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n > MAX_RESPONSE as u64)
        {
            return Err(too_large());
        }
        let bytes = resp
            .bytes_limited(MAX_RESPONSE)
            .await
            .map_err(|source| KmsError::Read {
                call: call.clone(),
                endpoint: endpoint.clone(),
                source,
            })?
            .map_err(|_| too_large())?;
        let json: Option<serde_json::Value> = serde_json::from_slice(&bytes).ok();
        if status.is_success() {
            return json.ok_or_else(|| KmsError::Response {
                call: call.clone(),
                reason: format!(
                    "HTTP {} with a body that is not JSON ({} bytes)",
                    status.as_u16(),
                    bytes.len()
                ),
            });
        }
        let (code, message) = error_of(json.as_ref(), header_type.as_deref(), &bytes);
        Err(KmsError::Kms {
            call: call.clone(),
            status: status.as_u16(),
            code,
            message,
        })
    }
}

/// The HTTP client's own limits under a whole-call limit of `call`: connecting may take 10 s of
/// it; waiting for the answer is bounded by the call's limit alone, which always ends first.
fn http_timeouts(call: Duration) -> Timeouts {
    Timeouts {
        connect: Duration::from_secs(10).min(call),
        first_byte: call + Duration::from_secs(1),
        idle: call + Duration::from_secs(1),
        // Answers are a few KiB: the whole-call limit bounds them, not a rate.
        min_rate: 0,
        rate_window: call + Duration::from_secs(1),
    }
}

/// KMS's error code and message: `__type` (or the `x-amzn-ErrorType` header) without its
/// namespace (`com.amazonaws.kms#`) or suffix (`:http://…`), and `message` (or `Message`). An
/// answer in the XML error format of AWS's front ends gives its `<Code>` and `<Message>`.
fn error_of(
    json: Option<&serde_json::Value>,
    header: Option<&str>,
    body: &[u8],
) -> (String, String) {
    let field = |k: &str| json.and_then(|j| j.get(k)).and_then(|v| v.as_str());
    let text = String::from_utf8_lossy(body);
    let xml = |tag: &str| {
        let open = format!("<{tag}>");
        let start = text.find(&open)? + open.len();
        let len = text[start..].find(&format!("</{tag}>"))?;
        Some(text[start..start + len].to_string())
    };
    let raw = field("__type")
        .or(field("code"))
        .map(str::to_string)
        .or(header.map(str::to_string))
        .or_else(|| xml("Code"))
        .unwrap_or_else(|| "UnknownError".into());
    let code = raw.rsplit('#').next().unwrap_or(&raw);
    let code = code.split(':').next().unwrap_or(code);
    let code: String = code
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '_')
        .take(128)
        .collect();
    let message = match field("message").or(field("Message")) {
        Some(m) => m.to_string(),
        None => match xml("Message") {
            Some(m) => m,
            None if json.is_none() => format!(
                "(not JSON: {:?})",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ),
            None => "(no message)".into(),
        },
    };
    let message: String = message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(1024)
        .collect();
    (code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_endpoints_and_real_region_names_are_taken() {
        let e = Endpoint::new("eu-west-1", None).unwrap();
        assert_eq!(e.to_string(), "https://kms.eu-west-1.amazonaws.com");
        let e = Endpoint::new("us-east-1", Some("https://127.0.0.1:8443/")).unwrap();
        assert_eq!(e.origin().authority(), "127.0.0.1:8443");
        let http = Endpoint::new("us-east-1", Some("http://kms.internal"))
            .unwrap_err()
            .to_string();
        assert!(http.contains("only https:// is accepted"), "{http}");
        assert!(http.contains("the parent"), "{http}");
        for bad in [
            "HTTP://kms",
            "ftp://kms",
            "kms.us-east-1.amazonaws.com",
            "https://kms/v1",
            "https://kms/?x=1",
        ] {
            assert!(Endpoint::new("us-east-1", Some(bad)).is_err(), "{bad}");
        }
        for bad in ["", "US-EAST-1", "us_east_1", "-x", "a/b"] {
            assert!(Endpoint::new(bad, None).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn kms_error_codes_are_read_as_aws_sends_them() {
        let j = serde_json::json!({"__type": "com.amazonaws.kms#NotFoundException", "message": "Key 'x' does not exist"});
        assert_eq!(
            error_of(Some(&j), None, b""),
            ("NotFoundException".into(), "Key 'x' does not exist".into())
        );
        let j = serde_json::json!({"__type": "AccessDeniedException", "Message": "no"});
        assert_eq!(error_of(Some(&j), None, b"").0, "AccessDeniedException");
        assert_eq!(
            error_of(
                None,
                Some("ThrottlingException:http://internal.amazon.com/"),
                b"<html>"
            ),
            (
                "ThrottlingException".into(),
                "(not JSON: \"<html>\")".into()
            )
        );
        let xml = b"<?xml version=\"1.0\"?><ErrorResponse><Errors><Error><Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated does not match</Message></Error></Errors></ErrorResponse>";
        assert_eq!(
            error_of(None, None, xml),
            (
                "SignatureDoesNotMatch".into(),
                "The request signature we calculated does not match".into()
            )
        );
    }
}
