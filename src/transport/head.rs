//! The one reader of HTTP heads for the code that parses them itself: the egress proxy and
//! `/metrics` read request heads, the CONNECT client its proxy's response head. The size is
//! capped here, before anything is parsed; every caller bounds the time.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt};

/// Bytes asked for per read by [`read_head`].
const READ_CHUNK: usize = 2048;

/// Why no complete HTTP head was read.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each variant's #[error] message is its documentation
pub enum HeadError {
    #[error("the peer closed before the end of the head")]
    Closed,
    #[error("head over {0} bytes")]
    TooLarge(usize),
    #[error("reading the head: {0}")]
    Io(#[from] io::Error),
}

/// A head through its blank line, and whatever arrived after it.
#[derive(Debug)]
pub struct Head {
    /// The head, its final CRLFCRLF included.
    pub head: Vec<u8>,
    /// Bytes that arrived after the head (the start of a body or of tunnelled data), for the
    /// caller to pass on.
    pub rest: Vec<u8>,
}

/// Reads a head of at most `max` bytes, its final CRLFCRLF included. Bytes read past the head
/// (a client's first data) come back in [`Head::rest`].
pub async fn read_head<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> Result<Head, HeadError> {
    read(r, max, READ_CHUNK).await
}

/// The same, one byte at a time so that nothing after the head is consumed: for a stream that
/// is handed on once its head is read (a CONNECT tunnel).
pub async fn read_head_exact<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Vec<u8>, HeadError> {
    Ok(read(r, max, 1).await?.head)
}

async fn read<R: AsyncRead + Unpin>(r: &mut R, max: usize, step: usize) -> Result<Head, HeadError> {
    let mut buf = Vec::with_capacity(max.min(1024));
    let mut chunk = [0u8; READ_CHUNK];
    let step = step.clamp(1, READ_CHUNK);
    loop {
        let n = r.read(&mut chunk[..step]).await?;
        if n == 0 {
            return Err(HeadError::Closed);
        }
        // The terminator may straddle two reads.
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(pos) = buf[from..].windows(4).position(|w| w == b"\r\n\r\n") {
            let end = from + pos + 4;
            if end > max {
                return Err(HeadError::TooLarge(max));
            }
            let rest = buf.split_off(end);
            return Ok(Head { head: buf, rest });
        }
        if buf.len() >= max {
            return Err(HeadError::TooLarge(max));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn heads_end_at_the_blank_line_and_are_capped() {
        let mut r: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nearly";
        let h = read_head(&mut r, 64).await.unwrap();
        assert_eq!(h.head, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(h.rest, b"early");

        // Exactly at the cap is a head; one byte over is not.
        let exact = b"GET / HTTP/1.1\r\n\r\n";
        let mut r: &[u8] = exact;
        assert!(read_head(&mut r, exact.len()).await.is_ok());
        let mut r: &[u8] = exact;
        let e = read_head(&mut r, exact.len() - 1).await.unwrap_err();
        assert!(matches!(e, HeadError::TooLarge(17)), "{e}");
        // A head that never ends stops at the cap, not at the end of the input.
        let endless = vec![b'a'; 10_000];
        let mut r: &[u8] = &endless;
        assert!(matches!(
            read_head(&mut r, 100).await,
            Err(HeadError::TooLarge(100))
        ));
        assert_eq!(r.len(), 10_000 - READ_CHUNK);
        let mut r: &[u8] = b"GET / HTTP/1.1\r\n";
        assert!(matches!(
            read_head(&mut r, 64).await,
            Err(HeadError::Closed)
        ));
    }

    #[tokio::test]
    async fn the_exact_reader_leaves_what_follows_and_finds_a_split_terminator() {
        let mut r: &[u8] = b"HTTP/1.1 200 OK\r\n\r\nserver data";
        let h = read_head_exact(&mut r, 64).await.unwrap();
        assert_eq!(h, b"HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(r, b"server data");

        // The terminator split across reads of a slow peer.
        let (mut w, mut rd) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for part in [&b"GET / HTTP/1.1\r"[..], b"\n\r", b"\nrest"] {
                w.write_all(part).await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        });
        let h = read_head(&mut rd, 64).await.unwrap();
        assert_eq!(h.head, b"GET / HTTP/1.1\r\n\r\n");
        writer.await.unwrap();
    }
}
