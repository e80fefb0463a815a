//! The attestation API that cidboot serves to the workload on loopback:
//! `POST /v1/attestation` and `GET /v1/measurements`.
//!
//! Trust boundary: the workload is untrusted here. Its requests are bounded in size, count
//! and time, and it can only ask for documents with its own nonce, user_data and public_key;
//! PCRs stay cidboot's.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::measure::EventLog;
use crate::nsm::{Nsm, MAX_ATTESTATION_FIELD};
use crate::transport::addr::accept_retrying;

/// The documented default address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9393";
/// Largest request body.
pub const MAX_BODY: usize = 8 * 1024;
/// Requests served at once.
pub const MAX_CONCURRENT: usize = 32;
/// Connections held at once, idle keep-alive ones included: each costs cidboot some memory
/// (its buffers and task) that is not the workload's, so their number is bounded too.
pub const MAX_CONNECTIONS: usize = 128;
/// Time a client gets to send a request's headers (slowloris bound).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the attestation API cannot listen.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each variant's #[error] message is its documentation
pub enum ApiError {
    #[error("attestation API: listening on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("attestation API: [attestation] listen / --attestation-listen: {0}")]
    Addr(#[from] crate::transport::addr::AddrError),
    #[error("attestation API: cannot listen on {addr}: {source}; free the port or choose another with --attestation-listen (or [attestation] listen)")]
    Busy {
        addr: String,
        source: std::io::Error,
    },
}

/// Checks, before anything is fetched, that the API will be able to listen on `listen`: a
/// busy port should fail the boot at once, not after the whole image has been fetched.
pub async fn check_listen(listen: &str) -> Result<(), ApiError> {
    let listen = &crate::transport::addr::Addr::tcp_only(listen)?;
    TcpListener::bind(listen)
        .await
        .map(drop)
        .map_err(|source| ApiError::Busy {
            addr: listen.into(),
            source,
        })
}

/// A request for a document; every field optional.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AttestationRequest {
    /// The document's `nonce`: the verifier's challenge, which shows the document is fresh.
    pub nonce: Option<String>,
    /// The document's `user_data`: whatever the workload wants signed along with the PCRs.
    pub user_data: Option<String>,
    /// The document's `public_key`: a key of the workload's, for a verifier to encrypt to.
    pub public_key: Option<String>,
    /// `base64` (the default, standard alphabet) or `hex`: how the three fields are encoded.
    pub encoding: Option<String>,
}

struct State {
    nsm: Arc<dyn Nsm>,
    log: EventLog,
    permits: Semaphore,
}

fn reply(status: StatusCode, ct: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(ct),
    );
    r
}

fn error(status: StatusCode, msg: impl std::fmt::Display) -> Response<Full<Bytes>> {
    reply(
        status,
        "application/json",
        serde_json::json!({ "error": msg.to_string() }).to_string(),
    )
}

fn decode_field(name: &str, v: &Option<String>, hex_enc: bool) -> Result<Option<Vec<u8>>, String> {
    let Some(v) = v else { return Ok(None) };
    let b = if hex_enc {
        hex::decode(v).map_err(|e| format!("{name}: not hex: {e}"))?
    } else {
        base64::engine::general_purpose::STANDARD
            .decode(v)
            .map_err(|e| format!("{name}: not base64: {e}"))?
    };
    if b.len() > MAX_ATTESTATION_FIELD {
        return Err(format!(
            "{name} is {} bytes, over the {MAX_ATTESTATION_FIELD}-byte limit",
            b.len()
        ));
    }
    Ok(Some(b))
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let Ok(_permit) = state.permits.try_acquire() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "too many requests at once");
    };
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/v1/measurements") => reply(
            StatusCode::OK,
            "application/json",
            serde_json::to_string_pretty(&state.log).unwrap_or_default(),
        ),
        (&Method::POST, "/v1/attestation") => {
            let wants_json = req
                .headers()
                .get(http::header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|a| a.contains("application/json"));
            let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => {
                    return error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("the body is over {MAX_BODY} bytes"),
                    )
                }
            };
            let ar: AttestationRequest = if body.is_empty() {
                AttestationRequest::default()
            } else {
                match serde_json::from_slice(&body) {
                    Ok(r) => r,
                    Err(e) => return error(StatusCode::BAD_REQUEST, format!("the body must be a JSON object of nonce, user_data, public_key, encoding: {e}")),
                }
            };
            let hex_enc = match ar.encoding.as_deref() {
                None | Some("base64") => false,
                Some("hex") => true,
                Some(other) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("encoding {other:?}: use base64 or hex"),
                    )
                }
            };
            let fields = (|| {
                Ok::<_, String>((
                    decode_field("nonce", &ar.nonce, hex_enc)?,
                    decode_field("user_data", &ar.user_data, hex_enc)?,
                    decode_field("public_key", &ar.public_key, hex_enc)?,
                ))
            })();
            let (nonce, user_data, public_key) = match fields {
                Ok(f) => f,
                Err(e) => return error(StatusCode::BAD_REQUEST, e),
            };
            let nsm = state.nsm.clone();
            let doc = tokio::task::spawn_blocking(move || {
                nsm.attestation(
                    user_data.as_deref(),
                    nonce.as_deref(),
                    public_key.as_deref(),
                )
            })
            .await;
            match doc {
                Ok(Ok(doc)) if wants_json => reply(
                    StatusCode::OK,
                    "application/json",
                    serde_json::json!({ "document": base64::engine::general_purpose::STANDARD.encode(&doc) }).to_string(),
                ),
                Ok(Ok(doc)) => reply(StatusCode::OK, "application/cbor", doc),
                Ok(Err(e)) => {
                    warn!(error = %e, "attestation failed");
                    error(StatusCode::INTERNAL_SERVER_ERROR, e)
                }
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
            }
        }
        (_, "/v1/measurements") | (_, "/v1/attestation") => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "use GET /v1/measurements or POST /v1/attestation",
        ),
        (_, p) => error(StatusCode::NOT_FOUND, format!("no such endpoint {p}")),
    }
}

/// Binds the API; returns the bound address and the serving future.
pub async fn bind(
    listen: &str,
    nsm: Arc<dyn Nsm>,
    log: EventLog,
) -> Result<(std::net::SocketAddr, impl std::future::Future<Output = ()>), ApiError> {
    let listen = &crate::transport::addr::Addr::tcp_only(listen)?;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| ApiError::Listen {
            addr: listen.into(),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ApiError::Listen {
        addr: listen.into(),
        source,
    })?;
    if !addr.ip().is_loopback() {
        warn!(%addr, "the attestation API listens beyond loopback");
    }
    info!(%addr, "attestation API listening");
    let state = Arc::new(State {
        nsm,
        log,
        permits: Semaphore::new(MAX_CONCURRENT),
    });
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let serve = async move {
        loop {
            let (stream, peer) = accept_retrying(&listener, "attestation API").await;
            let Ok(permit) = connections.clone().try_acquire_owned() else {
                // Closed at once: nothing is kept for it (an idle connection goes after
                // HEADER_TIMEOUT, which makes room).
                drop(stream);
                debug!(%peer, "attestation API: {MAX_CONNECTIONS} connections already; closing this one");
                continue;
            };
            let state = state.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let svc = service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(handle(state, req).await) }
                });
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .max_buf_size(16 * 1024)
                    .serve_connection(TokioIo::new(stream), svc)
                    .await
                {
                    debug!(%peer, error = %e, "attestation API connection ended");
                }
            });
        }
    };
    Ok((addr, serve))
}
