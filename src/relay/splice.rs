//! Copying both ways between two streams, with a connection-wide idle timeout and a lifetime.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes moved each way.
#[derive(Debug, Default, Clone, Copy)]
pub struct Moved {
    /// Bytes copied from [`splice`]'s `a` to its `b`.
    pub a_to_b: u64,
    /// Bytes copied from `b` back to `a`.
    pub b_to_a: u64,
}

async fn pump<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    mut r: R,
    mut w: W,
    idle: Duration,
    start: Instant,
    last: Arc<AtomicU64>,
) -> io::Result<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match tokio::time::timeout(idle, r.read(&mut buf)).await {
            Ok(r) => r?,
            Err(_) => {
                // Idle only if the other direction was idle too.
                let quiet = u64::try_from(start.elapsed().as_millis())
                    .unwrap_or(u64::MAX)
                    .saturating_sub(last.load(Ordering::Relaxed));
                if quiet >= u64::try_from(idle.as_millis()).unwrap_or(u64::MAX) {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("idle for {}s", idle.as_secs()),
                    ));
                }
                continue;
            }
        };
        if n == 0 {
            let _ = w.shutdown().await;
            return Ok(total);
        }
        w.write_all(&buf[..n]).await?;
        total += n as u64;
        last.store(
            u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }
}

/// Copies until both directions end, an error, `idle` without traffic either way, or
/// `lifetime` in all.
pub async fn splice<A, B>(a: A, b: B, idle: Duration, lifetime: Duration) -> io::Result<Moved>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (ar, aw) = tokio::io::split(a);
    let (br, bw) = tokio::io::split(b);
    let start = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let both = async {
        let (x, y) = tokio::join!(
            pump(ar, bw, idle, start, last.clone()),
            pump(br, aw, idle, start, last.clone())
        );
        Ok::<_, io::Error>(Moved {
            a_to_b: x?,
            b_to_a: y?,
        })
    };
    match tokio::time::timeout(lifetime, both).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("open longer than {}s", lifetime.as_secs()),
        )),
    }
}
