//! The boot configuration service: the parent hands the enclave its runtime configuration as
//! `length (4 bytes, big-endian) || bytes`. The enclave measures exactly what it receives.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{info, warn};

use crate::config::MAX_CONFIG_SIZE;
use crate::transport::addr::{Addr, Listener};

pub async fn serve(listener: Listener, config: Arc<Vec<u8>>) {
    loop {
        let (mut io, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "boot config accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let config = config.clone();
        tokio::spawn(async move {
            let mut frame = (config.len() as u32).to_be_bytes().to_vec();
            frame.extend_from_slice(&config);
            let r = tokio::time::timeout(Duration::from_secs(30), async {
                io.write_all(&frame).await?;
                io.shutdown().await
            })
            .await;
            match r {
                Ok(Ok(())) => {
                    info!(client = %peer, bytes = config.len(), "boot configuration served")
                }
                Ok(Err(e)) => {
                    warn!(client = %peer, error = %e, "serving the boot configuration failed")
                }
                Err(_) => warn!(client = %peer, "serving the boot configuration timed out"),
            }
        });
    }
}

/// Fetches the configuration from the parent.
pub async fn fetch(addr: &Addr, timeout: Duration) -> io::Result<Vec<u8>> {
    tokio::time::timeout(timeout, async {
        let mut io = addr.connect().await?;
        let len = io.read_u32().await? as usize;
        if len > MAX_CONFIG_SIZE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a configuration of {len} bytes (at most {MAX_CONFIG_SIZE})"),
            ));
        }
        let mut buf = vec![0u8; len];
        io.read_exact(&mut buf).await?;
        Ok(buf)
    })
    .await
    .map_err(|_| {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "no boot configuration from {addr} within {}s",
                timeout.as_secs()
            ),
        )
    })?
}
