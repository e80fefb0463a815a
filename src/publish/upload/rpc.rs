//! A kubo-compatible RPC endpoint (kubo, IPFS Cluster's proxy, Filebase's RPC):
//! `POST /api/v0/dag/import?pin-roots=true` with the CAR as a multipart file, the token as a
//! bearer token, the CAR streamed from its file. Its answer names each root and whether
//! pinning it failed.

use std::path::Path;

use bytes::Bytes;
use http::Method;

use super::{
    body, car_body, refused, said, token, transport, Destination, UploadError, Uploaded, Uploader,
};
use crate::transport::http::Origin;

/// The environment variable holding the endpoint's token (or `…_FILE`, a file holding it).
pub const TOKEN_VAR: &str = "CIDBOOT_RPC_TOKEN";

const BOUNDARY: &str = "cidboot-car-boundary-7f3c9a1e";

pub(super) async fn import(
    up: &Uploader,
    dest: &Destination,
    url: &str,
    car: &Path,
    size: u64,
    cid: &str,
) -> Result<Uploaded, UploadError> {
    let token = token(dest, TOKEN_VAR)?;
    let (origin, base) = Origin::parse(url).map_err(transport(dest))?;
    let path = format!("{base}/api/v0/dag/import?pin-roots=true");
    let head = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{cid}.car\"\r\nContent-Type: application/vnd.ipld.car\r\n\r\n"
    );
    let tail = format!("\r\n--{BOUNDARY}--\r\n");
    let form = car_body(car, size, Bytes::from(head), Bytes::from(tail)).await?;
    let auth = format!("Bearer {}", token.as_str());
    let ctype = format!("multipart/form-data; boundary={BOUNDARY}");
    let resp = up
        .http
        .send_file(
            Method::POST,
            &origin,
            &path,
            &[("authorization", &auth), ("content-type", &ctype)],
            form,
        )
        .await
        .map_err(transport(dest))?;
    let status = resp.status.as_u16();
    let answer = body(dest, resp).await?;
    let text = String::from_utf8_lossy(&answer);
    if !(200..300).contains(&status) {
        // kubo's errors: {"Message": "...", "Code": 0, "Type": "error"}.
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["Message"].as_str().map(str::to_string))
            .unwrap_or_else(|| text.trim().chars().take(300).collect());
        return Err(refused(dest, status, message));
    }
    // One JSON object per line: {"Root": {"Cid": {"/": CID}, "PinErrorMsg": ""}}, and Stats.
    let mut pinned = false;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| UploadError::Answer {
            dest: dest.to_string(),
            reason: format!("an answer line that is not JSON ({e}): {}", said(line)),
        })?;
        let Some(root) = v.get("Root") else { continue };
        let got = root["Cid"]["/"].as_str().unwrap_or_default();
        if got != cid {
            return Err(UploadError::Answer {
                dest: dest.to_string(),
                reason: format!("it imported root {:?}, not {cid}", said(got)),
            });
        }
        if let Some(e) = root["PinErrorMsg"].as_str().filter(|e| !e.is_empty()) {
            return Err(UploadError::Answer {
                dest: dest.to_string(),
                reason: format!("it imported {cid} but could not pin it: {}", said(e)),
            });
        }
        pinned = true;
    }
    if !pinned {
        return Err(UploadError::Answer {
            dest: dest.to_string(),
            reason: format!(
                "its answer names no pinned root (is it a dag/import endpoint?): {}",
                said(text.trim())
            ),
        });
    }
    Ok(Uploaded {
        to: dest.to_string(),
        location: format!("{origin}{base}"),
        cid: Some(cid.to_string()),
    })
}
