//! Staging an encrypted (ocicrypt) layer: authenticate, then decrypt, then inflate.
//!
//! The layer cipher is encrypt-then-MAC: AES-256-CTR, and HMAC-SHA256 over the whole
//! ciphertext. Decrypting before the HMAC has matched would hand unauthenticated plaintext to
//! the inflater and the applier, which apply entries as they arrive. So the verified
//! ciphertext (every block checked against the CID, the blob against the manifest's digest,
//! as for any layer) is first written to a private file beside the layer's spill file, its
//! HMAC computed as it arrives; only when the blob's digest and its HMAC have both matched is
//! it decrypted, inflated and checked against the config's diff_id like a clear layer. A
//! tampered ciphertext or tag is therefore refused before a byte of the layer is decrypted,
//! let alone applied. The file costs the blob's size in scratch space, which the manifest's
//! blob limit already bounds; it is removed as soon as the layer is staged or has failed.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aws_lc_rs::cipher::{DecryptionContext, StreamingDecryptingKey, UnboundCipherKey, AES_256};
use aws_lc_rs::hmac;

use super::{inflate, spill, ApplyError, Observer};
use crate::fetch::{BlobSink, Gateways};
use crate::oci::Resolved;
use crate::ocicrypt::{LayerKey, LayerKeys};

/// Receives the verified ciphertext into the private file, computing its HMAC.
struct CipherSink {
    file: io::BufWriter<File>,
    mac: hmac::Context,
    observer: Arc<dyn Observer>,
    index: usize,
}

impl BlobSink for CipherSink {
    async fn write(&mut self, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.mac.update(data);
        // A local file in scratch space: short blocking writes, as the spill files make.
        self.file.write_all(data)?;
        self.observer.fetched(self.index, data.len() as u64);
        Ok(())
    }
}

/// Removes the ciphertext file however staging ends.
struct Remove(PathBuf);
impl Drop for Remove {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Fetches, verifies, authenticates, decrypts, inflates and checks encrypted layer `index`
/// into `spill`; returns its uncompressed size.
#[allow(clippy::too_many_arguments)] // stage_layer's arguments, and the key and file
pub(super) async fn stage_encrypted(
    gw: Arc<Gateways>,
    resolved: Arc<Resolved>,
    index: usize,
    spill: spill::SpillWriter,
    budget: inflate::Budget,
    observer: Arc<dyn Observer>,
    keys: Arc<LayerKeys>,
    path: PathBuf,
) -> Result<u64, ApplyError> {
    let result = fetch_and_open(gw, &resolved, index, budget, observer, keys, &path, spill).await;
    result.map(|(size, spill)| {
        spill.finish();
        size
    })
}

#[allow(clippy::too_many_arguments)]
async fn fetch_and_open(
    gw: Arc<Gateways>,
    resolved: &Arc<Resolved>,
    index: usize,
    budget: inflate::Budget,
    observer: Arc<dyn Observer>,
    keys: Arc<LayerKeys>,
    path: &Path,
    spill: spill::SpillWriter,
) -> Result<(u64, spill::SpillWriter), ApplyError> {
    let fail = |spill: spill::SpillWriter, e: ApplyError| {
        spill.fail(e.to_string());
        Err(e)
    };
    if keys.get(index).is_none() {
        return fail(spill, ApplyError::NoLayerKey);
    }
    let file = match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(f) => f,
        Err(source) => {
            return fail(
                spill,
                ApplyError::Io {
                    what: format!("creating {}", path.display()),
                    source,
                },
            )
        }
    };
    let _remove = Remove(path.to_path_buf());
    let blob = resolved.layers[index].clone();
    let (mac, expected_mac) = match keys.get(index) {
        Some(k) => (
            hmac::Context::with_key(&hmac::Key::new(hmac::HMAC_SHA256, &k.symkey[..])),
            k.hmac,
        ),
        None => return fail(spill, ApplyError::NoLayerKey),
    };
    let mut sink = CipherSink {
        file: io::BufWriter::with_capacity(1 << 20, file),
        mac,
        observer,
        index,
    };
    let fetched = Resolved::fetch_blob(&gw, &blob, &mut sink).await;
    if let Err(e) = fetched {
        return fail(spill, ApplyError::from(e));
    }
    if let Err(source) = sink.file.flush() {
        return fail(
            spill,
            ApplyError::Io {
                what: format!("writing {}", path.display()),
                source,
            },
        );
    }
    let tag = sink.mac.sign();
    if aws_lc_rs::constant_time::verify_slices_are_equal(tag.as_ref(), &expected_mac).is_err() {
        return fail(spill, ApplyError::LayerAuth);
    }
    let compression = resolved.layer_compression(index)?;
    let expected = resolved.image_config.rootfs().diff_ids()[index].clone();
    let digest = blob.desc.digest().to_string();
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let result = keys
            .get(index)
            .ok_or(ApplyError::NoLayerKey)
            .and_then(|key| decrypt_inflate(key, &path, compression, &budget, spill));
        match result {
            Ok((size, diff, spill)) if format!("sha256:{diff}") == expected => Ok((size, spill)),
            Ok((_, diff, spill)) => {
                let e = ApplyError::DiffId {
                    index,
                    digest,
                    expected,
                    actual: diff,
                };
                spill.fail(e.to_string());
                Err(e)
            }
            Err(e) => Err(e),
        }
    })
    .await
    .map_err(|e| ApplyError::Internal(format!("decrypting inflater: {e}")))
    .and_then(|r| r)
}

/// Decrypts the authenticated ciphertext at `path` through the inflater into `spill`.
/// Returns the uncompressed size and sha256, and the spill still open (the caller checks the
/// diff_id before declaring it good); on error the spill is failed.
fn decrypt_inflate(
    key: &LayerKey,
    path: &Path,
    compression: crate::oci::Compression,
    budget: &inflate::Budget,
    spill: spill::SpillWriter,
) -> Result<(u64, String, spill::SpillWriter), ApplyError> {
    let opened = File::open(path)
        .map_err(|source| ApplyError::Io {
            what: format!("opening {}", path.display()),
            source,
        })
        .and_then(|f| CtrReader::new(f, key));
    let mut reader = match opened {
        Ok(r) => r,
        Err(e) => {
            spill.fail(e.to_string());
            return Err(e);
        }
    };
    let mut out = io::BufWriter::with_capacity(1 << 20, spill);
    // The private options also carry a digest, but of the blob the encrypter was handed,
    // which a recompressing copy (skopeo --dest-compress-format) changes afterwards: the
    // config's diff_id, checked by the caller, is what binds the layer.
    let result = inflate::inflate(&mut reader, compression, budget, &mut out);
    let (spill, _) = out.into_parts();
    match result {
        Ok((size, diff)) => Ok((size, diff, spill)),
        Err(e) => {
            spill.fail(e.to_string());
            Err(e)
        }
    }
}

/// AES-256-CTR over a file.
struct CtrReader {
    file: File,
    ctr: Option<StreamingDecryptingKey>,
    input: Vec<u8>,
    output: Vec<u8>,
    pos: usize,
    len: usize,
}

const CHUNK: usize = 64 << 10;

impl CtrReader {
    fn new(file: File, key: &LayerKey) -> Result<Self, ApplyError> {
        let err = |_| ApplyError::Decrypt("AES-256-CTR could not be set up".into());
        let unbound = UnboundCipherKey::new(&AES_256, &key.symkey[..]).map_err(err)?;
        let ctr = StreamingDecryptingKey::ctr(unbound, DecryptionContext::Iv128(key.nonce.into()))
            .map_err(err)?;
        Ok(CtrReader {
            file,
            ctr: Some(ctr),
            input: vec![0; CHUNK],
            output: vec![0; CHUNK + 16],
            pos: 0,
            len: 0,
        })
    }
}

impl Read for CtrReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.len {
            let Some(ctr) = self.ctr.as_mut() else {
                return Ok(0);
            };
            let n = self.file.read(&mut self.input)?;
            let written = if n == 0 {
                let ctr = self.ctr.take().ok_or_else(|| io::Error::other("ctr"))?;
                ctr.finish(&mut self.output)
                    .map_err(|_| io::Error::other("AES-256-CTR failed"))?
                    .written()
                    .len()
            } else {
                ctr.update(&self.input[..n], &mut self.output)
                    .map_err(|_| io::Error::other("AES-256-CTR failed"))?
                    .written()
                    .len()
            };
            self.pos = 0;
            self.len = written;
        }
        let n = buf.len().min(self.len - self.pos);
        buf[..n].copy_from_slice(&self.output[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
