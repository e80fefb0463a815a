//! Pin by CID on an IPFS Pinning Service API provider: `POST /pins` with the CID, a name and
//! the origins (multiaddrs of nodes that have the content), then `GET /pins/{requestid}` until
//! the status is `pinned` or `failed`, waiting longer between polls up to a limit.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{body, refused, said, token, transport, Destination, UploadError, Uploaded, Uploader};
use crate::transport::http::Origin;

/// The environment variable holding the provider's access token (or `…_FILE`).
pub const TOKEN_VAR: &str = "CIDBOOT_PINS_TOKEN";
/// First wait between polls; doubled each time up to [`POLL_MAX`].
pub const POLL_FIRST: Duration = Duration::from_millis(250);
/// Longest wait between polls.
pub const POLL_MAX: Duration = Duration::from_secs(10);

/// The provider's error document: `{"error": {"reason": …, "details": …}}`.
fn message(text: &str) -> String {
    let v: Option<serde_json::Value> = serde_json::from_str(text).ok();
    match v.as_ref().map(|v| &v["error"]) {
        Some(e) if e.is_object() => match (e["reason"].as_str(), e["details"].as_str()) {
            (Some(r), Some(d)) => format!("{r}: {d}"),
            (Some(r), None) => r.to_string(),
            _ => e.to_string(),
        },
        _ => text.trim().chars().take(300).collect(),
    }
}

async fn call(
    up: &Uploader,
    dest: &Destination,
    origin: &Origin,
    path: &str,
    auth: &str,
    post: Option<Vec<u8>>,
) -> Result<serde_json::Value, UploadError> {
    let resp = match post {
        Some(b) => {
            up.http
                .post(
                    origin,
                    path,
                    &[
                        ("authorization", auth),
                        ("content-type", "application/json"),
                    ],
                    Bytes::from(b),
                )
                .await
        }
        None => up.http.get(origin, path, &[("authorization", auth)]).await,
    }
    .map_err(transport(dest))?;
    let status = resp.status.as_u16();
    let text = String::from_utf8_lossy(&body(dest, resp).await?).into_owned();
    if !(200..300).contains(&status) {
        return Err(refused(dest, status, message(&text)));
    }
    serde_json::from_str(&text).map_err(|e| UploadError::Answer {
        dest: dest.to_string(),
        reason: format!("a pin status that is not JSON ({e}): {}", said(&text)),
    })
}

pub(super) async fn pin(
    up: &Uploader,
    dest: &Destination,
    url: &str,
    cid: &str,
) -> Result<Uploaded, UploadError> {
    let token = token(dest, TOKEN_VAR)?;
    let auth = format!("Bearer {}", token.as_str());
    let (origin, base) = Origin::parse(url).map_err(transport(dest))?;
    let mut req = serde_json::json!({ "cid": cid });
    if let Some(n) = &up.name {
        req["name"] = n.clone().into();
    }
    if !up.origins.is_empty() {
        req["origins"] = up.origins.clone().into();
    }
    let mut status = call(
        up,
        dest,
        &origin,
        &format!("{base}/pins"),
        &auth,
        Some(req.to_string().into_bytes()),
    )
    .await?;
    let id = status["requestid"]
        .as_str()
        .filter(|s| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        })
        .ok_or_else(|| UploadError::Answer {
            dest: dest.to_string(),
            reason: format!(
                "a pin status without a usable requestid: {}",
                said(&status.to_string())
            ),
        })?
        .to_string();
    let started = Instant::now();
    let mut wait = POLL_FIRST;
    loop {
        let now = status["status"].as_str().unwrap_or_default().to_string();
        match now.as_str() {
            "pinned" => break,
            "failed" => {
                let info = &status["info"];
                return Err(UploadError::PinFailed {
                    dest: dest.to_string(),
                    answer: if info.is_null() {
                        "the provider gave no details".into()
                    } else {
                        said(&info.to_string())
                    },
                });
            }
            "queued" | "pinning" => {}
            other => {
                return Err(UploadError::Answer {
                    dest: dest.to_string(),
                    reason: format!("an unknown pin status {:?}", said(other)),
                })
            }
        }
        if started.elapsed() + wait > up.pin_timeout {
            return Err(UploadError::PinTimeout {
                dest: dest.to_string(),
                status: now,
                secs: up.pin_timeout.as_secs(),
            });
        }
        tracing::info!(to = %dest, status = %now, "waiting for the pin");
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(POLL_MAX);
        status = call(up, dest, &origin, &format!("{base}/pins/{id}"), &auth, None).await?;
    }
    // The API's status always carries the pin it is about; without its CID, `pinned` says
    // nothing of this one.
    let Some(pinned) = status["pin"]["cid"].as_str().map(str::to_string) else {
        return Err(UploadError::Answer {
            dest: dest.to_string(),
            reason: "its pin status says `pinned` but names no CID (pin.cid)".into(),
        });
    };
    if pinned != cid {
        return Err(UploadError::Answer {
            dest: dest.to_string(),
            reason: format!("it pinned {}, not {cid}", said(&pinned)),
        });
    }
    Ok(Uploaded {
        to: dest.to_string(),
        location: format!("{origin}{base}/pins/{id}"),
        cid: Some(pinned),
    })
}
