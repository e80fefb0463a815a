//! A queue from a layer's inflater to the applier that spills to a file when the applier lags.
//!
//! Layers must be applied in order, but inflating them one after another would leave a core
//! idle. So every layer is inflated as soon as its turn to fetch comes, into one of these. While
//! the applier keeps up, the tar stream passes through a few megabytes of memory; when it falls
//! behind (or is still busy with an earlier layer), the rest goes to a file, which the applier
//! reads back while it is still being written and releases behind itself (a punched hole). So the
//! layer being applied costs scratch space only for how far the applier lags; layers further
//! ahead are held whole until their turn.
//!
//! Every byte written here came out of blocks already verified against the CID; the reader sees
//! the end of the stream only once the writer has declared the layer good (diff_id matched), and
//! an error otherwise.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use nix::fcntl::{fallocate, FallocateFlags};

/// Bytes held in memory before the stream goes to the file.
const MEMORY: usize = 4 << 20;
/// Bytes read from the file before the reader gives them back to the filesystem.
const RELEASE_EVERY: u64 = 8 << 20;

#[derive(Debug)]
enum End {
    /// Still being written.
    Open,
    /// Complete and verified.
    Good,
    /// The writer failed or gave up: the reader fails with this.
    Failed(String),
}

/// Order invariant: whenever the file holds unread bytes, everything queued in memory is older,
/// because the writer goes back to memory only once the reader has drained the file.
#[derive(Debug)]
struct State {
    memory: VecDeque<Vec<u8>>,
    memory_bytes: usize,
    /// Bytes appended to the file, and read back from it.
    file_written: u64,
    file_read: u64,
    end: End,
    /// The reader stopped (the applier failed): the writer stops too.
    reader_gone: bool,
}

#[derive(Debug)]
struct Shared {
    file: File,
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock means the other side panicked; the state itself is still coherent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Creates the spill file at `path` (removed from the directory at once: only the two handles
/// keep it) and returns the queue's two ends.
pub fn create(path: &Path) -> io::Result<(SpillWriter, SpillReader)> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)?;
    std::fs::remove_file(path)?;
    let shared = Arc::new(Shared {
        file,
        state: Mutex::new(State {
            memory: VecDeque::new(),
            memory_bytes: 0,
            file_written: 0,
            file_read: 0,
            end: End::Open,
            reader_gone: false,
        }),
        changed: Condvar::new(),
    });
    Ok((
        SpillWriter {
            shared: shared.clone(),
        },
        SpillReader {
            shared,
            chunk: Vec::new(),
            at: 0,
            released: 0,
        },
    ))
}

/// The writing end. Dropping it without [`SpillWriter::finish`] fails the reader.
#[derive(Debug)]
pub struct SpillWriter {
    shared: Arc<Shared>,
}

impl SpillWriter {
    /// Declares the stream complete and verified: the reader may now see its end.
    pub fn finish(self) {
        self.close(End::Good);
    }

    /// Fails the reader with `why`.
    pub fn fail(self, why: String) {
        self.close(End::Failed(why));
    }

    fn close(&self, end: End) {
        let mut st = self.shared.lock();
        if matches!(st.end, End::Open) {
            st.end = end;
        }
        drop(st);
        self.shared.changed.notify_all();
    }
}

impl Write for SpillWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut st = self.shared.lock();
        if st.reader_gone {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the applier stopped",
            ));
        }
        if st.file_read == st.file_written && st.memory_bytes + buf.len() <= MEMORY {
            st.memory.push_back(buf.to_vec());
            st.memory_bytes += buf.len();
        } else {
            // Only this writer appends, so the offset cannot move while the lock is released.
            let at = st.file_written;
            drop(st);
            self.shared.file.write_all_at(buf, at)?;
            st = self.shared.lock();
            st.file_written = at + buf.len() as u64;
        }
        drop(st);
        self.shared.changed.notify_all();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for SpillWriter {
    fn drop(&mut self) {
        self.close(End::Failed("the layer's fetch stopped".into()));
    }
}

/// The reading end: blocks until data is written, the stream is declared good (end of stream)
/// or failed (an error).
#[derive(Debug)]
pub struct SpillReader {
    shared: Arc<Shared>,
    /// The memory chunk being read, and how far.
    chunk: Vec<u8>,
    at: usize,
    /// File bytes already given back.
    released: u64,
}

enum Next {
    File { offset: u64, available: u64 },
    Chunk(Vec<u8>),
}

impl Read for SpillReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.at < self.chunk.len() {
            return Ok(self.copy_chunk(buf));
        }
        let next = {
            let mut st = self.shared.lock();
            loop {
                if let Some(chunk) = st.memory.pop_front() {
                    st.memory_bytes -= chunk.len();
                    break Next::Chunk(chunk);
                }
                if st.file_written > st.file_read {
                    break Next::File {
                        offset: st.file_read,
                        available: st.file_written - st.file_read,
                    };
                }
                match &st.end {
                    End::Open => {}
                    End::Good => return Ok(0),
                    End::Failed(why) => return Err(io::Error::other(why.clone())),
                }
                st = self
                    .shared
                    .changed
                    .wait(st)
                    .unwrap_or_else(|p| p.into_inner());
            }
        };
        match next {
            Next::Chunk(chunk) => {
                self.chunk = chunk;
                self.at = 0;
                Ok(self.copy_chunk(buf))
            }
            Next::File { offset, available } => {
                let want = buf
                    .len()
                    .min(usize::try_from(available).unwrap_or(usize::MAX));
                let n = self.shared.file.read_at(&mut buf[..want], offset)?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the spill file is shorter than written",
                    ));
                }
                let read = offset + n as u64;
                self.shared.lock().file_read = read;
                if read - self.released >= RELEASE_EVERY {
                    self.release(read);
                }
                Ok(n)
            }
        }
    }
}

impl SpillReader {
    fn copy_chunk(&mut self, buf: &mut [u8]) -> usize {
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        n
    }

    /// Gives file bytes read up to `upto` back to the filesystem. Best effort: a filesystem
    /// without hole punching keeps them until the file is closed.
    fn release(&mut self, upto: u64) {
        let (Ok(from), Ok(len)) = (
            i64::try_from(self.released),
            i64::try_from(upto - self.released),
        ) else {
            return;
        };
        let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
        if fallocate(&self.shared.file, flags, from, len).is_ok() {
            self.released = upto;
        }
    }
}

impl Drop for SpillReader {
    fn drop(&mut self) {
        self.shared.lock().reader_gone = true;
        self.shared.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(from: usize, len: usize) -> Vec<u8> {
        (from..from + len)
            .map(|i| u8::try_from(i * 7 % 251).unwrap())
            .collect()
    }

    fn allocated(r: &SpillReader) -> u64 {
        use std::os::unix::fs::MetadataExt;
        r.shared.file.metadata().unwrap().blocks() * 512
    }

    #[test]
    fn order_holds_across_memory_and_file_and_read_bytes_are_released() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, mut r) = create(&dir.path().join("s")).unwrap();
        let mut expect = Vec::new();
        let mut put = |w: &mut SpillWriter, len: usize| {
            let chunk = pattern(expect.len(), len);
            w.write_all(&chunk).unwrap();
            expect.extend_from_slice(&chunk);
        };
        // Nobody reads: memory fills, then the rest goes to the file.
        for _ in 0..40 {
            put(&mut w, 1 << 20);
        }
        assert_eq!(r.shared.lock().memory_bytes, MEMORY);
        assert_eq!(r.shared.lock().file_written, (40 << 20) - MEMORY as u64);
        let mut got = vec![0u8; 40 << 20];
        r.read_exact(&mut got).unwrap();
        // The file was read back and given back to the filesystem as it went.
        assert!(allocated(&r) <= RELEASE_EVERY, "{}", allocated(&r));
        // Drained: the writer is back in memory.
        put(&mut w, 3 << 20);
        assert_eq!(r.shared.lock().file_written, (40 << 20) - MEMORY as u64);
        w.finish();
        r.read_to_end(&mut got).unwrap();
        assert!(got == expect, "bytes differ or are out of order");
    }

    #[test]
    fn a_reader_and_writer_at_random_speeds_agree() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, mut r) = create(&dir.path().join("r")).unwrap();
        let total = 48 << 20;
        let writer = std::thread::spawn(move || {
            let mut done = 0;
            let mut rng = fastrand::Rng::with_seed(1);
            while done < total {
                let n = rng.usize(1..(3 << 20)).min(total - done);
                w.write_all(&pattern(done, n)).unwrap();
                done += n;
                if rng.u8(..) < 20 {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
            }
            w.finish();
        });
        let mut got = Vec::with_capacity(total);
        let mut rng = fastrand::Rng::with_seed(2);
        let mut buf = vec![0u8; 4 << 20];
        loop {
            let want = rng.usize(1..buf.len());
            let n = r.read(&mut buf[..want]).unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            if rng.u8(..) < 20 {
                std::thread::sleep(std::time::Duration::from_millis(3));
            }
        }
        writer.join().unwrap();
        assert!(got == pattern(0, total), "bytes differ or are out of order");
    }

    #[test]
    fn a_failed_or_abandoned_writer_fails_the_reader() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, mut r) = create(&dir.path().join("a")).unwrap();
        w.write_all(b"partial").unwrap();
        w.fail("diff_id mismatch".into());
        let mut got = Vec::new();
        let err = r.read_to_end(&mut got).unwrap_err();
        assert_eq!(err.to_string(), "diff_id mismatch");
        assert_eq!(got, b"partial");

        let (w, mut r) = create(&dir.path().join("b")).unwrap();
        drop(w);
        assert!(r.read(&mut [0u8; 4]).is_err());
    }

    #[test]
    fn a_gone_reader_stops_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, r) = create(&dir.path().join("c")).unwrap();
        drop(r);
        let err = w.write_all(b"x").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }
}
