//! Connection reuse against real loopback servers that count the connections they accept:
//! sequential requests share one connection, a connection the server closed is replaced
//! transparently, and `Connection: close`, a body left unread or an error end reuse.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cidboot::transport::http::{HttpClient, Origin, Timeouts};
use cidboot::transport::{tls, TcpConnector};

/// What the server does on each connection.
#[derive(Clone, Copy)]
enum Mode {
    /// Answers every request, keeping the connection open.
    KeepAlive,
    /// Answers the first request as keep-alive, then closes on receiving the second without
    /// answering it: the request lost to a close racing it.
    CloseOnSecond,
    /// Answers the first request as keep-alive, then closes the connection 50 ms later.
    CloseWhenIdle,
    /// Answers every request with `Connection: close` but leaves the connection open.
    SaysClose,
}

struct Server {
    url: String,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
}

const BODY: &[u8] = b"0123456789abcdef";

fn server(mode: Mode) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let (c, r) = (connections.clone(), requests.clone());
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(s) = s else { return };
            c.fetch_add(1, Ordering::SeqCst);
            let r = r.clone();
            std::thread::spawn(move || serve(s, mode, &r));
        }
    });
    Server {
        url,
        connections,
        requests,
    }
}

/// Reads one request head; false at end of stream.
fn read_request(r: &mut BufReader<TcpStream>) -> bool {
    let mut first = true;
    loop {
        let mut line = String::new();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
        if line == "\r\n" && !first {
            return true;
        }
        first = false;
    }
}

fn serve(s: TcpStream, mode: Mode, requests: &AtomicUsize) {
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let mut answered = 0;
    while read_request(&mut r) {
        requests.fetch_add(1, Ordering::SeqCst);
        if matches!(mode, Mode::CloseOnSecond) && answered == 1 {
            return;
        }
        let close = if matches!(mode, Mode::SaysClose) {
            "Connection: close\r\n"
        } else {
            ""
        };
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n{close}\r\n",
            BODY.len()
        );
        w.write_all(head.as_bytes()).unwrap();
        w.write_all(BODY).unwrap();
        answered += 1;
        if matches!(mode, Mode::CloseWhenIdle) {
            std::thread::sleep(Duration::from_millis(50));
            return;
        }
    }
}

fn client() -> HttpClient {
    let timeouts = Timeouts {
        first_byte: Duration::from_secs(5),
        ..Timeouts::default()
    };
    HttpClient::new(
        Arc::new(TcpConnector),
        tls::client_config(None).unwrap(),
        timeouts,
    )
}

/// One GET, its body read to the end and checked.
async fn fetch(c: &HttpClient, url: &str) {
    let (origin, _) = Origin::parse(url).unwrap();
    let resp = c.get(&origin, "/x", &[]).await.unwrap();
    assert_eq!(resp.status, 200);
    let body = resp.bytes_limited(1024).await.unwrap().unwrap();
    assert_eq!(&body[..], BODY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_requests_share_one_connection() {
    let s = server(Mode::KeepAlive);
    let c = client();
    for _ in 0..6 {
        fetch(&c, &s.url).await;
    }
    // A clone shares the pool.
    fetch(&c.clone(), &s.url).await;
    assert_eq!(s.requests.load(Ordering::SeqCst), 7);
    assert_eq!(s.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_closed_under_a_request_is_retried_on_a_fresh_one() {
    let s = server(Mode::CloseOnSecond);
    let c = client();
    fetch(&c, &s.url).await;
    fetch(&c, &s.url).await;
    fetch(&c, &s.url).await;
    // Each connection took two requests and answered one; the lost ones were sent again.
    assert_eq!(s.connections.load(Ordering::SeqCst), 3);
    assert_eq!(s.requests.load(Ordering::SeqCst), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_closed_while_idle_is_not_used() {
    let s = server(Mode::CloseWhenIdle);
    let c = client();
    fetch(&c, &s.url).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    fetch(&c, &s.url).await;
    assert_eq!(s.connections.load(Ordering::SeqCst), 2);
    // Nothing was sent on the closed connection.
    assert_eq!(s.requests.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_is_honoured() {
    let s = server(Mode::SaysClose);
    let c = client();
    for _ in 0..3 {
        fetch(&c, &s.url).await;
    }
    assert_eq!(s.connections.load(Ordering::SeqCst), 3);
    assert_eq!(s.requests.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_left_unread_is_not_reused() {
    let s = server(Mode::KeepAlive);
    let c = client();
    let (origin, _) = Origin::parse(&s.url).unwrap();
    let resp = c.get(&origin, "/x", &[]).await.unwrap();
    drop(resp);
    fetch(&c, &s.url).await;
    fetch(&c, &s.url).await;
    // The abandoned response's connection was dropped; the next two share a new one.
    assert_eq!(s.connections.load(Ordering::SeqCst), 2);
    assert_eq!(s.requests.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origins_do_not_share_connections() {
    let a = server(Mode::KeepAlive);
    let b = server(Mode::KeepAlive);
    let c = client();
    for _ in 0..3 {
        fetch(&c, &a.url).await;
        fetch(&c, &b.url).await;
    }
    assert_eq!(a.connections.load(Ordering::SeqCst), 1);
    assert_eq!(b.connections.load(Ordering::SeqCst), 1);
    assert_eq!(a.requests.load(Ordering::SeqCst), 3);
    assert_eq!(b.requests.load(Ordering::SeqCst), 3);
}
