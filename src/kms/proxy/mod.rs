//! The KMS proxy: the AWS KMS JSON API on loopback for the workload (`[kms_proxy]`), so that
//! `aws kms decrypt --endpoint-url …` and the AWS SDKs work in the enclave unchanged.
//!
//! The workload sends `TrentService.Decrypt`, `GenerateDataKey` or `GenerateRandom` as it would
//! to KMS, signed with whatever credentials it has: the proxy ignores the signature. cidboot
//! makes the call itself with its own credentials and a `Recipient` (a fresh key, its public
//! half in an NSM attestation document), opens the `CiphertextForRecipient`, and answers as
//! KMS answers a call without a `Recipient`: with the `Plaintext`. So KMS's key policy decides
//! by the enclave's PCRs, and the plaintext exists only in the enclave, where it travels on
//! loopback to the workload.
//!
//! Trust: the workload is untrusted. Every other operation is refused by name without reaching
//! KMS; each request is read as strictly as KMS reads it ([`request`]) and rebuilt from the
//! checked values; its size, the calls in flight, the connections and every phase's time are
//! bounded ([`Limits`]), before the memory or time is spent.
//!
//! HTTP is hyper's, one request per connection. The head is read first here, within the read
//! deadline and [`MAX_HEAD`], and checked with `httparse` (hyper's own parser), so that a
//! client too slow, too large or too garbled even for a head still gets an answer in KMS's
//! shape; hyper then parses that head and the rest.

pub mod reply;
pub mod request;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request as HttpRequest, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{Call, KmsClient};
use crate::nsm::Nsm;
use crate::transport::addr::accept_retrying;
use crate::transport::head::{read_head, HeadError};
use reply::Refusal;
use request::Op;

/// The documented default address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9394";
/// The environment variable that tells the workload where the proxy is: the AWS SDKs' and the
/// AWS CLI's own service-specific endpoint variable.
pub const ENDPOINT_VAR: &str = "AWS_ENDPOINT_URL_KMS";
/// Largest request head (request line and headers; a session token is a few KiB).
pub const MAX_HEAD: usize = 16 * 1024;
/// Most headers in a request head (an SDK sends about ten).
pub const MAX_HEADERS: usize = 64;

/// The proxy's bounds; [`Limits::default`] is what the boot uses (docs/limits.md).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body: above the largest request KMS's own field limits allow (ten 8192-
    /// character grant tokens, a 6144-byte ciphertext, a 2048-character key id, the context).
    pub max_body: usize,
    /// Calls to KMS in flight at once; a request beyond them is answered
    /// `ThrottlingException` at once, as KMS throttles, and the SDKs retry it.
    pub max_in_flight: usize,
    /// Connections open at once; beyond them, clients wait in the listen backlog.
    pub max_connections: usize,
    /// Time from the connection to the end of the request's body.
    pub read_timeout: Duration,
    /// Time for the call itself: the key, the document, KMS's answer (whose own limit is
    /// [`crate::kms::DEFAULT_TIMEOUT`]) and opening it.
    pub call_deadline: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_body: 128 * 1024,
            max_in_flight: 4,
            max_connections: 64,
            read_timeout: Duration::from_secs(10),
            call_deadline: Duration::from_secs(60),
        }
    }
}

/// Why the KMS proxy cannot listen.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each variant's #[error] message is its documentation
pub enum ProxyError {
    #[error("[kms_proxy] listen: {0}")]
    Addr(#[from] crate::transport::addr::AddrError),
    #[error(
        "cannot listen on {addr}: {source}; free the port or choose another [kms_proxy] listen"
    )]
    Listen {
        addr: String,
        source: std::io::Error,
    },
}

struct State {
    client: KmsClient,
    nsm: Arc<dyn Nsm>,
    limits: Limits,
    in_flight: Semaphore,
}

/// Binds the proxy on `listen` (a loopback `HOST:PORT`); returns the bound address and the
/// serving future. Calls go to `client`'s KMS with documents from `nsm`.
pub async fn bind(
    listen: &str,
    client: KmsClient,
    nsm: Arc<dyn Nsm>,
    limits: Limits,
) -> Result<(SocketAddr, impl std::future::Future<Output = ()>), ProxyError> {
    let listen = crate::transport::addr::Addr::tcp_only(listen)?;
    let err = |source| ProxyError::Listen {
        addr: listen.clone(),
        source,
    };
    let listener = TcpListener::bind(&listen).await.map_err(err)?;
    let addr = listener.local_addr().map_err(err)?;
    if !addr.ip().is_loopback() {
        // The configuration refuses this; a caller of the library is told too.
        warn!(%addr, "the KMS proxy listens beyond loopback: its answers are plaintexts");
    }
    info!(%addr, kms = %client.endpoint(), "KMS proxy listening");
    let connections = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let state = Arc::new(State {
        client,
        nsm,
        in_flight: Semaphore::new(limits.max_in_flight.max(1)),
        limits,
    });
    let serve = async move {
        loop {
            // At the limit, the next client waits in the backlog until a connection ends.
            let Ok(slot) = connections.clone().acquire_owned().await else {
                return;
            };
            let (stream, peer) = accept_retrying(&listener, "KMS proxy").await;
            let state = state.clone();
            tokio::spawn(async move {
                connection(state, stream, peer).await;
                drop(slot);
            });
        }
    };
    Ok((addr, serve))
}

/// One connection: its head read here within the read deadline, then one request served by
/// hyper, the whole bounded in time.
async fn connection(state: Arc<State>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let read_by = Instant::now() + state.limits.read_timeout;
    let (mut rd, mut wr) = stream.into_split();
    let head = match tokio::time::timeout_at(read_by, read_head(&mut rd, MAX_HEAD)).await {
        Ok(Ok(h)) => h,
        Ok(Err(HeadError::TooLarge(max))) => {
            let r = Refusal::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "ValidationException",
                format!("the request head is over {max} bytes"),
            );
            return refuse_raw(&mut wr, &r, peer).await;
        }
        Ok(Err(e)) => return debug!(%peer, error = %e, "KMS proxy connection ended"),
        Err(_) => {
            let r = Refusal::new(
                StatusCode::REQUEST_TIMEOUT,
                "RequestTimeoutException",
                format!(
                    "no complete request head within {}s",
                    state.limits.read_timeout.as_secs()
                ),
            );
            return refuse_raw(&mut wr, &r, peer).await;
        }
    };
    // hyper would answer a head it cannot parse with a bare 400; this one says why, in KMS's
    // shape.
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    if let Err(e) = httparse::Request::new(&mut headers).parse(&head.head) {
        let status = match e {
            httparse::Error::TooManyHeaders => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        };
        let r = Refusal::new(
            status,
            "SerializationException",
            format!("the request head is not HTTP/1.1 (at most {MAX_HEADERS} headers): {e}"),
        );
        return refuse_raw(&mut wr, &r, peer).await;
    }
    let mut first = head.head;
    first.extend_from_slice(&head.rest);
    let io = tokio::io::join(std::io::Cursor::new(first).chain(rd), wr);
    // Past the read deadline and the call's, only writing a small answer is left.
    let end_by = read_by + state.limits.call_deadline + Duration::from_secs(5);
    let svc = service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(handle(&state, req, read_by).await) }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .keep_alive(false)
        .max_buf_size(MAX_HEAD + 8192)
        .serve_connection(TokioIo::new(io), svc);
    match tokio::time::timeout_at(end_by, served).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!(%peer, error = %e, "KMS proxy connection ended"),
        Err(_) => debug!(%peer, "KMS proxy connection timed out"),
    }
}

/// Answers a connection that sent no usable head, and closes it.
async fn refuse_raw(wr: &mut tokio::net::tcp::OwnedWriteHalf, r: &Refusal, peer: SocketAddr) {
    info!(%peer, code = %r.code, "KMS proxy: {}", r.message);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = wr.write_all(&r.raw()).await;
        let _ = wr.shutdown().await;
    })
    .await;
}

/// One request, answered in KMS's shape whatever happens.
async fn handle(
    state: &State,
    req: HttpRequest<Incoming>,
    read_by: Instant,
) -> Response<Full<Bytes>> {
    let started = Instant::now();
    match serve(state, req, read_by).await {
        Ok((op, key, r)) => {
            info!(
                op = op.name(),
                key = key.as_deref().unwrap_or("-"),
                ms = started.elapsed().as_millis(),
                "KMS proxy: answered"
            );
            r
        }
        Err((op, key, refusal)) => {
            info!(
                op = op.map_or("-", Op::name),
                key = key.as_deref().unwrap_or("-"),
                status = refusal.status.as_u16(),
                code = %refusal.code,
                "KMS proxy: {}",
                refusal.message
            );
            refusal.response()
        }
    }
}

type Served = (Op, Option<String>, Response<Full<Bytes>>);
type Refused = (Option<Op>, Option<String>, Refusal);

async fn serve(
    state: &State,
    req: HttpRequest<Incoming>,
    read_by: Instant,
) -> Result<Served, Refused> {
    let bare = |r: Refusal| (None, None, r);
    if req.method() != Method::POST || req.uri().path() != "/" {
        return Err(bare(Refusal::new(
            StatusCode::NOT_FOUND,
            "UnknownOperationException",
            format!(
                "{} {} is not served: the KMS proxy serves the AWS KMS JSON API, POST /",
                req.method(),
                req.uri().path().chars().take(128).collect::<String>()
            ),
        )));
    }
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let op = Op::from_target(header("x-amz-target")).map_err(bare)?;
    let named = |r: Refusal| (Some(op), None, r);
    let media = header("content-type")
        .and_then(|c| c.split(';').next())
        .map(|c| c.trim().to_ascii_lowercase());
    if media.as_deref() != Some(reply::CONTENT_TYPE) {
        return Err(named(Refusal::new(
            StatusCode::BAD_REQUEST,
            "SerializationException",
            format!("Content-Type must be {}", reply::CONTENT_TYPE),
        )));
    }
    let max = state.limits.max_body;
    let too_large = || {
        Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "ValidationException",
            format!("the request body is over {max} bytes"),
        )
    };
    if header("content-length")
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > max as u64)
    {
        return Err(named(too_large()));
    }
    let body = match tokio::time::timeout_at(read_by, Limited::new(req.into_body(), max).collect())
        .await
    {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return Err(named(too_large()))
        }
        Ok(Err(e)) => {
            return Err(named(Refusal::new(
                StatusCode::BAD_REQUEST,
                "SerializationException",
                format!("reading the request body: {e}"),
            )))
        }
        Err(_) => {
            return Err(named(Refusal::new(
                StatusCode::REQUEST_TIMEOUT,
                "RequestTimeoutException",
                format!(
                    "the request did not arrive within {}s",
                    state.limits.read_timeout.as_secs()
                ),
            )))
        }
    };
    let request = request::parse(op, &body).map_err(named)?;
    let key = request.key.clone();
    let Ok(_permit) = state.in_flight.try_acquire() else {
        return Err((
            Some(op),
            key,
            Refusal::new(
                StatusCode::BAD_REQUEST,
                "ThrottlingException",
                format!(
                    "Rate exceeded: the KMS proxy makes at most {} calls at once",
                    state.limits.max_in_flight
                ),
            ),
        ));
    };
    let secs = state.limits.call_deadline.as_secs();
    match tokio::time::timeout(state.limits.call_deadline, forward(state, request)).await {
        // The key KMS names (its ARN) says more than the one asked for, if any.
        Ok(Ok((r, answered))) => Ok((op, answered.or(key), r)),
        Ok(Err(r)) => Err((Some(op), key, r)),
        Err(_) => Err((
            Some(op),
            key,
            Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "DependencyTimeoutException",
                format!("cidboot's KMS proxy: the call did not complete within {secs}s"),
            ),
        )),
    }
}

/// The call to KMS with the enclave's `Recipient`, and KMS's answer without one.
async fn forward(
    state: &State,
    r: request::Request,
) -> Result<(Response<Full<Bytes>>, Option<String>), Refusal> {
    let call = Call::new(r.op.name(), r.key.as_deref());
    let (v, plaintext) = state
        .client
        .call_opened(state.nsm.as_ref(), &call, r.fields)
        .await
        .map_err(|e| Refusal::from_kms(&e))?;
    if let Some(n) = r.length {
        super::ops::check_length(&call, &plaintext, n).map_err(|e| Refusal::from_kms(&e))?;
    }
    // The answer's own fields, as KMS sends them to a call without a Recipient.
    let mut others = Map::new();
    let copy = |others: &mut Map<String, Value>, fields: &[&str]| {
        for f in fields {
            if let Some(s) = v.get(*f).and_then(Value::as_str) {
                others.insert((*f).to_string(), Value::String(s.to_string()));
            }
        }
    };
    match r.op {
        Op::Decrypt => copy(
            &mut others,
            &["KeyId", "EncryptionAlgorithm", "KeyMaterialId"],
        ),
        Op::GenerateDataKey => {
            let blob = super::ops::required(&call, &v, "CiphertextBlob")
                .map_err(|e| Refusal::from_kms(&e))?;
            others.insert(
                "CiphertextBlob".into(),
                Value::String(super::ops::b64(&blob)),
            );
            copy(&mut others, &["KeyId", "KeyMaterialId"]);
        }
        Op::GenerateRandom => {}
    }
    let key = others
        .get("KeyId")
        .and_then(Value::as_str)
        .map(str::to_string);
    Ok((reply::answer(&plaintext, &others), key))
}
