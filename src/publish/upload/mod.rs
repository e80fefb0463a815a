//! Uploading a packed CAR where the field keeps content: an S3-compatible bucket that imports
//! CARs (Filebase's convention), a kubo-compatible RPC endpoint (`dag/import`), and pins by CID
//! on an IPFS Pinning Service API provider. Every answer is read with a cap, and every
//! failure names the destination and what it said.

pub mod config;
pub mod pins;
pub mod rpc;
pub mod s3;

use std::path::PathBuf;
use std::time::Duration;

use zeroize::Zeroizing;

use crate::transport::http::{HttpClient, Origin, Response};
use crate::transport::TransportError;

/// Largest answer read from a destination (the CAR is what is large, and it goes the other way).
pub const MAX_ANSWER: usize = 1 << 20;
/// Largest CAR uploaded. It is streamed from its file, never held in memory; the limit keeps
/// one request within what a single S3 `PutObject` takes (5 GiB) and a pinning service's
/// single import.
pub const MAX_CAR: u64 = 4 << 30;
/// Largest token file read.
pub const MAX_TOKEN_FILE: u64 = 64 << 10;
/// Most characters of a destination's own words shown in an error.
pub const MAX_SAID: usize = 1024;

/// Where a CAR goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// `s3://BUCKET[/PREFIX]`: `PutObject` of `PREFIX<CID>.car` with `x-amz-meta-import: car`.
    S3 {
        /// The bucket.
        bucket: String,
        /// Prepended to the object's key (`<CID>.car`).
        prefix: String,
    },
    /// `rpc:https://HOST[:PORT][/PATH]`: `POST /api/v0/dag/import?pin-roots=true`.
    Rpc {
        /// The endpoint's base URL.
        url: String,
    },
    /// `pins:https://HOST[/PATH]`: `POST /pins` with the CID and origins, then polled.
    Pins {
        /// The Pinning Service API's base URL.
        url: String,
    },
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            Destination::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
            Destination::Rpc { url } => write!(f, "rpc:{url}"),
            Destination::Pins { url } => write!(f, "pins:{url}"),
        }
    }
}

impl std::str::FromStr for Destination {
    type Err = String;

    fn from_str(s: &str) -> Result<Destination, String> {
        let url = |u: &str| -> Result<String, String> {
            let lower = u.to_ascii_lowercase();
            if !(lower.starts_with("https://") || lower.starts_with("http://")) {
                return Err(format!("{s:?}: the URL must be http(s)://"));
            }
            Origin::parse(u).map_err(|e| format!("{s:?}: {e}"))?;
            Ok(u.trim_end_matches('/').to_string())
        };
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let ok_bucket = (3..=63).contains(&bucket.len())
                && bucket.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'
                });
            if !ok_bucket {
                return Err(format!(
                    "{s:?}: a bucket name is 3 to 63 of a-z, 0-9, '-' and '.'"
                ));
            }
            if !prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/._-".contains(&b))
            {
                return Err(format!(
                    "{s:?}: a key prefix is made of A-Z, a-z, 0-9 and / . _ -"
                ));
            }
            return Ok(Destination::S3 {
                bucket: bucket.into(),
                prefix: prefix.into(),
            });
        }
        if let Some(u) = s.strip_prefix("rpc:") {
            return Ok(Destination::Rpc { url: url(u)? });
        }
        if let Some(u) = s.strip_prefix("pins:") {
            return Ok(Destination::Pins { url: url(u)? });
        }
        Err(format!(
            "{s:?}: give s3://BUCKET[/PREFIX], rpc:https://HOST (a kubo-compatible RPC endpoint) or pins:https://HOST (a Pinning Service API)"
        ))
    }
}

/// Why an upload failed.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each variant's #[error] message is its documentation
pub enum UploadError {
    #[error("{dest}: {source}")]
    Transport {
        dest: String,
        source: TransportError,
    },
    #[error("{dest}: HTTP {status}: {message}")]
    Refused {
        dest: String,
        status: u16,
        message: String,
    },
    #[error("{dest}: {0}", .reason)]
    Answer { dest: String, reason: String },
    #[error("{dest}: {reason}")]
    Credentials { dest: String, reason: String },
    #[error("{dest}: the pin ended `failed`: {answer}")]
    PinFailed { dest: String, answer: String },
    #[error("{dest}: the pin was still `{status}` after {secs}s (--pin-timeout)")]
    PinTimeout {
        dest: String,
        status: String,
        secs: u64,
    },
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the CAR is {size} bytes, over the {max}-byte limit of an upload")]
    TooLarge { size: u64, max: u64 },
}

/// What one destination did with the CAR.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Uploaded {
    /// The destination, as given.
    pub to: String,
    /// Where the content now is: the object's URL, the endpoint, or the pin's request id.
    pub location: String,
    /// The CID the destination reported for what it stored, when it reports one.
    pub cid: Option<String>,
}

/// What every destination shares: the HTTP client, and where tokens come from.
pub struct Uploader {
    pub(crate) http: HttpClient,
    /// How long a pin may stay `queued` or `pinning`.
    pub pin_timeout: Duration,
    /// The origins handed to a Pinning Service (multiaddrs of nodes that have the content).
    pub origins: Vec<String>,
    /// The pin's name.
    pub name: Option<String>,
}

impl Uploader {
    /// A client over `http`.
    pub fn new(http: HttpClient) -> Uploader {
        Uploader {
            http,
            pin_timeout: Duration::from_secs(600),
            origins: Vec::new(),
            name: None,
        }
    }

    /// Sends the CAR (whose root is `cid`) to `dest`.
    pub async fn upload(
        &self,
        dest: &Destination,
        car: &std::path::Path,
        cid: &str,
    ) -> Result<Uploaded, UploadError> {
        if let Destination::Rpc { url } | Destination::Pins { url } = dest {
            if url.to_ascii_lowercase().starts_with("http://") {
                tracing::warn!(to = %dest, "plain HTTP: the token is visible to anyone on the path");
            }
        }
        match dest {
            Destination::S3 { bucket, prefix } => {
                s3::put(self, dest, bucket, prefix, car, car_size(car)?, cid).await
            }
            Destination::Rpc { url } => {
                rpc::import(self, dest, url, car, car_size(car)?, cid).await
            }
            Destination::Pins { url } => pins::pin(self, dest, url, cid).await,
        }
    }
}

/// The CAR's size, checked against [`MAX_CAR`] before anything is read or sent.
fn car_size(car: &std::path::Path) -> Result<u64, UploadError> {
    let size = std::fs::metadata(car)
        .map_err(|source| read_error(car, source))?
        .len();
    if size > MAX_CAR {
        return Err(UploadError::TooLarge { size, max: MAX_CAR });
    }
    Ok(size)
}

pub(crate) fn read_error(car: &std::path::Path, source: std::io::Error) -> UploadError {
    UploadError::Read {
        path: car.display().to_string(),
        source,
    }
}

/// The CAR streamed from its file between `head` and `tail`.
pub(crate) async fn car_body(
    car: &std::path::Path,
    size: u64,
    head: bytes::Bytes,
    tail: bytes::Bytes,
) -> Result<crate::transport::body::FileBody, UploadError> {
    crate::transport::body::FileBody::open(head, car, size, tail)
        .await
        .map_err(|source| read_error(car, source))
}

/// A token from `VAR`, or from the file `VAR_FILE` names (its whitespace trimmed): never from
/// the command line, where other users and shell histories see it.
pub fn token(dest: &Destination, var: &str) -> Result<Zeroizing<String>, UploadError> {
    let file_var = format!("{var}_FILE");
    if let Some(t) = std::env::var(var).ok().filter(|t| !t.is_empty()) {
        return Ok(Zeroizing::new(t));
    }
    let Some(path) = std::env::var_os(&file_var).map(PathBuf::from) else {
        return Err(UploadError::Credentials {
            dest: dest.to_string(),
            reason: format!("no token: set {var}, or {file_var} to a file holding it"),
        });
    };
    let err = |source| UploadError::Read {
        path: path.display().to_string(),
        source,
    };
    let size = std::fs::metadata(&path).map_err(err)?.len();
    if size > MAX_TOKEN_FILE {
        return Err(UploadError::Credentials {
            dest: dest.to_string(),
            reason: format!(
                "{file_var}={}: {size} bytes, over the {MAX_TOKEN_FILE}-byte limit of a token file",
                path.display()
            ),
        });
    }
    let text = Zeroizing::new(std::fs::read_to_string(&path).map_err(err)?);
    let t = text.trim();
    if t.is_empty() {
        return Err(UploadError::Credentials {
            dest: dest.to_string(),
            reason: format!("{file_var}={} is empty", path.display()),
        });
    }
    Ok(Zeroizing::new(t.to_string()))
}

/// The body of an answer, capped.
pub(crate) async fn body(dest: &Destination, resp: Response) -> Result<Vec<u8>, UploadError> {
    resp.bytes_limited(MAX_ANSWER)
        .await
        .map_err(|e| UploadError::Answer {
            dest: dest.to_string(),
            reason: format!("reading the answer: {e}"),
        })?
        .map(|b| b.to_vec())
        .map_err(|_| UploadError::Answer {
            dest: dest.to_string(),
            reason: format!("an answer over {MAX_ANSWER} bytes"),
        })
}

/// What a destination said, fit for an error on a terminal: its control characters (which a
/// terminal acts on: titles, colours, clearing the screen, the one-byte CSI) and line
/// separators as spaces, cut after [`MAX_SAID`] characters (marked with `…`).
pub(crate) fn said(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(MAX_SAID)
        .map(|c| {
            if c.is_control() || c == '\u{2028}' || c == '\u{2029}' {
                ' '
            } else {
                c
            }
        })
        .collect();
    if text.chars().nth(MAX_SAID).is_some() {
        out.push('…');
    }
    out
}

/// What a status says, in words, beside the destination's own message.
pub(crate) fn refused(dest: &Destination, status: u16, message: String) -> UploadError {
    let hint = match status {
        401 | 403 => {
            " (the credentials were refused: check the token or keys, and what they may do)"
        }
        413 => " (the CAR is larger than this destination accepts in one request)",
        _ => "",
    };
    UploadError::Refused {
        dest: dest.to_string(),
        status,
        message: format!("{}{hint}", said(&message)),
    }
}

pub(crate) fn transport(dest: &Destination) -> impl Fn(TransportError) -> UploadError + '_ {
    move |source| UploadError::Transport {
        dest: dest.to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_parse_and_wrong_ones_say_what_is_expected() {
        assert_eq!(
            "s3://my-images/releases/".parse::<Destination>(),
            Ok(Destination::S3 {
                bucket: "my-images".into(),
                prefix: "releases/".into()
            })
        );
        assert_eq!(
            "rpc:https://rpc.filebase.io/".parse::<Destination>(),
            Ok(Destination::Rpc {
                url: "https://rpc.filebase.io".into()
            })
        );
        let d: Destination = "pins:https://api.pinata.cloud/psa".parse().unwrap();
        assert_eq!(d.to_string(), "pins:https://api.pinata.cloud/psa");
        for (bad, says) in [
            ("s3://UPPER", "bucket name"),
            ("s3://ok-bucket/a b", "key prefix"),
            ("rpc:ftp://x", "http(s)://"),
            ("ipfs://bafy", "give s3://BUCKET"),
        ] {
            let e = bad.parse::<Destination>().unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn what_a_destination_said_is_shown_without_controls_and_cut() {
        assert_eq!(
            said("Access\u{1b}[2JDenied\u{9b}1m\n"),
            "Access [2JDenied 1m "
        );
        let long = said(&"é".repeat(MAX_SAID + 1));
        assert_eq!(long.chars().count(), MAX_SAID + 1);
        assert!(long.ends_with("é…"));
        assert_eq!(said(&"é".repeat(MAX_SAID)), "é".repeat(MAX_SAID));
    }

    #[test]
    fn the_configuration_names_its_destinations_and_refuses_tokens() {
        let (c, to) = config::parse(
            "to = [\"s3://b-1\", \"pins:https://p.example\"]\n[check]\ngateways = [\"https://g.example\"]\nmin = 1\n",
        )
        .unwrap();
        assert_eq!(to.len(), 2);
        assert_eq!(c.check.unwrap().min, Some(1));
        let e = config::parse("token = \"x\"\n").unwrap_err();
        assert!(e.contains("tokens are never kept"), "{e}");
        let e = config::parse("[check]\ngateways = [\"https://g\"]\nmin = 2\n").unwrap_err();
        assert!(e.contains("from 1 to the 1"), "{e}");
        assert!(config::parse("to = [\"nowhere\"]\n").is_err());
    }
}
