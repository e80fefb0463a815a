//! An S3-compatible bucket that imports CARs: `PutObject` with the metadata `import: car`,
//! Filebase's convention (the object then stands for the CAR's root, which Filebase pins and
//! answers in `x-amz-meta-cid`). Signed with SigV4 by AWS's crate, with the credentials,
//! region and endpoint the AWS CLI would use (`AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`;
//! path-style requests, which every S3-compatible service takes). The CAR is read twice from
//! its file, never held: once for the SHA-256 the signature covers, then as the body.

use std::path::Path;

use bytes::Bytes;
use http::Method;

use super::{
    body, car_body, read_error, refused, transport, Destination, UploadError, Uploaded, Uploader,
};
use crate::kms::credentials::{self, Credentials, Environment};
use crate::kms::sign;
use crate::transport::http::Origin;

/// The region signed for when none is configured: what S3-compatible services expect.
const DEFAULT_REGION: &str = "us-east-1";

fn endpoint(region: &str) -> String {
    ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"))
}

/// The text of `<tag>…</tag>` in an S3 error document.
fn xml_field<'a>(doc: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = doc.find(&open)? + open.len();
    let len = doc.get(start..)?.find(&format!("</{tag}>"))?;
    doc.get(start..start + len)
}

/// The file's SHA-256 (lowercase hex), read in chunks: the first of the two passes over a
/// CAR too large to hold, whose signature covers its hash.
fn sha256_file(car: &Path, size: u64) -> Result<String, UploadError> {
    use sha2::Digest;
    use std::io::Read;
    let f = std::fs::File::open(car).map_err(|e| read_error(car, e))?;
    let mut r = f.take(size);
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut seen = 0u64;
    loop {
        let n = r.read(&mut buf).map_err(|e| read_error(car, e))?;
        let Some(chunk) = buf.get(..n).filter(|c| !c.is_empty()) else {
            break;
        };
        h.update(chunk);
        seen += n as u64;
    }
    if seen != size {
        return Err(read_error(
            car,
            std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("{seen} bytes, not {size}: it changed while it was read"),
            ),
        ));
    }
    Ok(hex::encode(h.finalize()))
}

pub(super) async fn put(
    up: &Uploader,
    dest: &Destination,
    bucket: &str,
    prefix: &str,
    car: &Path,
    size: u64,
    cid: &str,
) -> Result<Uploaded, UploadError> {
    let cred_err = |e: crate::kms::KmsError| UploadError::Credentials {
        dest: dest.to_string(),
        reason: format!("AWS credentials: {e}"),
    };
    let env = Environment::process();
    let creds = credentials::from_environment(&env)
        .map_err(cred_err)?
        .credentials()
        .await
        .map_err(cred_err)?;
    let region = credentials::region_from_environment(&env)
        .map_err(cred_err)?
        .unwrap_or_else(|| DEFAULT_REGION.into());
    let url = endpoint(&region);
    let (origin, base) = Origin::parse(&url).map_err(transport(dest))?;
    let path = format!("{base}/{bucket}/{prefix}{cid}.car");
    let host = origin.authority();
    let full = format!("{origin}{path}");
    let owned = car.to_path_buf();
    let sha = tokio::task::spawn_blocking(move || sha256_file(&owned, size))
        .await
        .map_err(|e| read_error(car, std::io::Error::other(e.to_string())))??;
    let unsigned = [
        ("content-type", "application/vnd.ipld.car"),
        ("host", host.as_str()),
        ("x-amz-meta-import", "car"),
    ];
    let signed = sign::sign_s3_hashed(
        &sign::Hashed {
            req: sign::Request {
                method: "PUT",
                url: &full,
                headers: &unsigned,
                body: &[],
            },
            sha256_hex: &sha,
        },
        &creds,
        &region,
        std::time::SystemTime::now(),
    )
    .map_err(|reason| UploadError::Credentials {
        dest: dest.to_string(),
        reason: format!("signing the request: {reason}"),
    })?;
    let mut headers: Vec<(&str, &str)> = vec![
        ("content-type", "application/vnd.ipld.car"),
        ("x-amz-meta-import", "car"),
    ];
    headers.extend(signed.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let object = car_body(car, size, Bytes::new(), Bytes::new()).await?;
    let resp = up
        .http
        .send_file(Method::PUT, &origin, &path, &headers, object)
        .await
        .map_err(transport(dest))?;
    let status = resp.status.as_u16();
    let stored = resp.header("x-amz-meta-cid").map(str::to_string);
    let answer = body(dest, resp).await?;
    if !(200..300).contains(&status) {
        let doc = String::from_utf8_lossy(&answer);
        let message = match (xml_field(&doc, "Code"), xml_field(&doc, "Message")) {
            (Some(c), Some(m)) => format!("{c}: {m}"),
            (Some(c), None) => c.to_string(),
            _ => format!("{} bytes of answer", answer.len()),
        };
        return Err(refused(dest, status, message));
    }
    if let Some(s) = &stored {
        if s != cid {
            return Err(UploadError::Answer {
                dest: dest.to_string(),
                reason: format!("the bucket imported the CAR as {s}, not {cid}"),
            });
        }
    }
    Ok(Uploaded {
        to: dest.to_string(),
        location: full,
        cid: stored,
    })
}
