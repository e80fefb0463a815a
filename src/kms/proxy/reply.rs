//! What the proxy answers: KMS's own answer shapes, and errors shaped as AWS's JSON protocol
//! shapes them (`{"__type": CODE, "message": TEXT}` and the `x-amzn-ErrorType` header), so
//! that an AWS SDK surfaces each as the exception of that name.

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use crate::kms::KmsError;

/// The content type of the AWS KMS JSON API.
pub const CONTENT_TYPE: &str = "application/x-amz-json-1.1";

/// A request the proxy (or KMS) refused: the HTTP status, the AWS error code, the message.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The status KMS uses for it.
    pub status: StatusCode,
    /// The AWS error code (`ValidationException`, …): what an SDK raises.
    pub code: String,
    /// What was wrong.
    pub message: String,
}

impl Refusal {
    /// A refusal with this status, code and message.
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            code: code.to_string(),
            message: message.into(),
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Vec<u8> {
        serde_json::json!({ "__type": self.code, "message": self.message })
            .to_string()
            .into_bytes()
    }

    /// As an HTTP response.
    pub fn response(&self) -> Response<Full<Bytes>> {
        let mut r = response(self.status, Bytes::from(self.body()));
        if let Ok(v) = HeaderValue::from_str(&self.code) {
            r.headers_mut().insert("x-amzn-errortype", v);
        }
        r
    }

    /// The whole HTTP/1.1 response, for a connection that never got as far as a request
    /// (a head too slow or too large): written as is, and the connection closed.
    pub fn raw(&self) -> Vec<u8> {
        let body = self.body();
        let mut out = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: {CONTENT_TYPE}\r\nx-amzn-errortype: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            self.status.as_u16(),
            self.status.canonical_reason().unwrap_or(""),
            self.code,
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(&body);
        out
    }

    /// What the workload is told when the call to KMS failed: KMS's own refusal as KMS
    /// sent it (its status, code and message; an `AccessDeniedException` with the PCRs the
    /// document carried), or, for what failed on the way (the connection, TLS, the answer's
    /// shape, opening it), `KMSInternalException` or `DependencyTimeoutException` as KMS
    /// reports its own failures, with the reason.
    pub fn from_kms(e: &KmsError) -> Refusal {
        match e {
            KmsError::Kms {
                status,
                code,
                message,
                ..
            } => Refusal::new(
                StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_REQUEST),
                code,
                message.clone(),
            ),
            KmsError::AccessDenied {
                status,
                message,
                pcrs,
                ..
            } => Refusal::new(
                StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_REQUEST),
                "AccessDeniedException",
                format!("{message} (the enclave's attestation document carried {pcrs})"),
            ),
            KmsError::Input { .. } => Refusal::new(
                StatusCode::BAD_REQUEST,
                "ValidationException",
                e.to_string(),
            ),
            KmsError::Timeout { .. } => Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "DependencyTimeoutException",
                format!("cidboot's KMS proxy: {e}"),
            ),
            _ => Refusal::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "KMSInternalException",
                format!("cidboot's KMS proxy: {e}"),
            ),
        }
    }
}

/// A response with the KMS content type.
pub fn response(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(CONTENT_TYPE),
    );
    r
}

/// KMS's answer to a call without a `Recipient`: `Plaintext` (base64) and `others`. The body
/// is built in one buffer that is wiped when the response has been sent.
pub fn answer(plaintext: &[u8], others: &Map<String, Value>) -> Response<Full<Bytes>> {
    let rest = serde_json::to_vec(others).unwrap_or_else(|_| b"{}".to_vec());
    let encoded = base64::encoded_len(plaintext.len(), true).unwrap_or(0);
    let mut out = Zeroizing::new(Vec::with_capacity(rest.len() + encoded + 16));
    out.extend_from_slice(b"{\"Plaintext\":\"");
    let start = out.len();
    out.resize(start + encoded, 0);
    let written = base64::engine::general_purpose::STANDARD
        .encode_slice(plaintext, out.get_mut(start..).unwrap_or_default())
        .unwrap_or(0);
    out.truncate(start + written);
    out.push(b'"');
    match rest.get(1..) {
        // `rest` is `{…}`: its members follow the plaintext's.
        Some(members) if rest.len() > 2 => {
            out.push(b',');
            out.extend_from_slice(members);
        }
        _ => out.push(b'}'),
    }
    response(StatusCode::OK, Bytes::from_owner(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body(r: Response<Full<Bytes>>) -> Value {
        let b = r.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&b).unwrap()
    }

    #[tokio::test]
    async fn answers_are_kms_shaped() {
        let mut others = Map::new();
        others.insert("KeyId".into(), Value::String("arn:k".into()));
        let v = body(answer(b"\x00secret\xff", &others)).await;
        assert_eq!(
            v,
            serde_json::json!({"Plaintext": "AHNlY3JldP8=", "KeyId": "arn:k"})
        );
        let v = body(answer(b"x", &Map::new())).await;
        assert_eq!(v, serde_json::json!({"Plaintext": "eA=="}));

        let r = Refusal::new(StatusCode::BAD_REQUEST, "ValidationException", "no \"x\"");
        let resp = r.response();
        assert_eq!(resp.headers()["x-amzn-errortype"], "ValidationException");
        assert_eq!(
            body(resp).await,
            serde_json::json!({"__type": "ValidationException", "message": "no \"x\""})
        );
        let raw = String::from_utf8(r.raw()).unwrap();
        assert!(raw.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{raw}");
        assert!(raw.ends_with(r#"{"__type":"ValidationException","message":"no \"x\""}"#));
    }
}
