//! A request body streamed from a file, so that an upload of any size holds only a chunk (and
//! hyper's write buffer) in memory: an in-memory head, then exactly `len` bytes of the file,
//! then an in-memory tail (a multipart form's boundaries around a CAR, or nothing).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, ReadBuf};

/// Largest piece of the file read and handed to hyper at once.
pub const CHUNK: usize = 256 << 10;

/// How far a streamed body has gone, for the client's wait on the answer: when a chunk last
/// left, and whether the last one has.
#[derive(Debug)]
pub struct Progress {
    start: Instant,
    last_ms: AtomicU64,
    done: AtomicBool,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            done: AtomicBool::new(false),
        }
    }

    fn tick(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// How long since a chunk last went to hyper (or since the body was opened).
    pub fn silent(&self) -> std::time::Duration {
        let last = std::time::Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }

    /// Whether the whole body went to hyper.
    pub fn done(&self) -> bool {
        self.done.load(Ordering::Relaxed)
    }
}

/// `head`, the first `len` bytes of a file, then `tail`.
pub struct FileBody {
    head: Option<Bytes>,
    file: tokio::fs::File,
    left: u64,
    tail: Option<Bytes>,
    buf: Vec<u8>,
    progress: Arc<Progress>,
}

impl FileBody {
    /// Opens `path`, whose first `len` bytes are sent between `head` and `tail`. A file that
    /// turns out shorter fails the body (and so the request) rather than sending less.
    pub async fn open(
        head: Bytes,
        path: &std::path::Path,
        len: u64,
        tail: Bytes,
    ) -> io::Result<FileBody> {
        let file = tokio::fs::File::open(path).await?;
        Ok(FileBody {
            head: Some(head).filter(|h| !h.is_empty()),
            file,
            left: len,
            tail: Some(tail).filter(|t| !t.is_empty()),
            buf: vec![0; CHUNK],
            progress: Arc::new(Progress::new()),
        })
    }

    /// The whole body's length, as `Content-Length` says it.
    pub fn len(&self) -> u64 {
        self.head.as_ref().map_or(0, |h| h.len() as u64)
            + self.left
            + self.tail.as_ref().map_or(0, |t| t.len() as u64)
    }

    /// True when nothing is left to send.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What the client watches while the body goes out.
    pub fn progress(&self) -> Arc<Progress> {
        self.progress.clone()
    }
}

impl Body for FileBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if let Some(h) = this.head.take() {
            this.progress.tick();
            return Poll::Ready(Some(Ok(Frame::data(h))));
        }
        if this.left > 0 {
            let want = usize::try_from(this.left).unwrap_or(CHUNK).min(CHUNK);
            let Some(space) = this.buf.get_mut(..want) else {
                return Poll::Ready(Some(Err(io::Error::other("chunk buffer too small"))));
            };
            let mut rb = ReadBuf::new(space);
            ready!(Pin::new(&mut this.file).poll_read(cx, &mut rb))?;
            let got = rb.filled();
            if got.is_empty() {
                return Poll::Ready(Some(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "the file ended {} bytes early: it changed while it was sent",
                        this.left
                    ),
                ))));
            }
            let chunk = Bytes::copy_from_slice(got);
            this.left -= chunk.len() as u64;
            this.progress.tick();
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if let Some(t) = this.tail.take() {
            this.progress.tick();
            return Poll::Ready(Some(Ok(Frame::data(t))));
        }
        this.progress.done.store(true, Ordering::Relaxed);
        this.progress.tick();
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn sends_head_file_and_tail_and_refuses_a_file_that_shrank() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("car");
        let data: Vec<u8> = (0..(CHUNK * 2 + 17))
            .map(|i| u8::try_from(i % 251).unwrap())
            .collect();
        std::fs::write(&f, &data).unwrap();
        let len = data.len() as u64;
        let b = FileBody::open(
            Bytes::from_static(b"<<"),
            &f,
            len,
            Bytes::from_static(b">>"),
        )
        .await
        .unwrap();
        assert_eq!(b.len(), len + 4);
        let p = b.progress();
        let got = b.collect().await.unwrap().to_bytes();
        assert_eq!(&got[..2], b"<<");
        assert_eq!(&got[2..got.len() - 2], &data[..]);
        assert_eq!(&got[got.len() - 2..], b">>");
        assert!(p.done());
        let b = FileBody::open(Bytes::new(), &f, len + 5, Bytes::new())
            .await
            .unwrap();
        let e = b.collect().await.err().unwrap();
        assert!(e.to_string().contains("ended 5 bytes early"), "{e}");
    }
}
