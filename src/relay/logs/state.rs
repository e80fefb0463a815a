//! What the sink remembers per boot: the last record written, the hash of the boot's secret,
//! whether its status was written; persisted in the state file for exactly-once delivery
//! across restarts. In memory only: which boots have a live connection, and when each was last
//! active.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

use super::{LogError, FORGET_FINISHED, FORGET_IDLE, MAX_BOOTS};

fn now() -> Instant {
    Instant::now()
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct BootState {
    pub last: u64,
    pub enclave: String,
    /// The hash of the secret from the boot's first hello.
    #[serde(default)]
    pub secret: String,
    /// Its status has been written.
    #[serde(default)]
    pub finished: bool,
    /// Last active (connected, written, or disconnected); a sink that starts counts every
    /// boot as active then, so its own downtime never makes a boot look idle.
    #[serde(skip, default = "now")]
    pub seen: Instant,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StateFile {
    /// Keyed by [`super::boot_key`], a hash of the boot id, never the id itself.
    #[serde(default)]
    boots: HashMap<String, BootState>,
}

/// The connection that currently owns a boot.
pub(super) struct Live {
    pub conn: u64,
    /// Set to ask it to let go (a newer connection of the same sender).
    pub stop: watch::Sender<bool>,
    /// Held by the owning connection while it serves; the next one waits for it.
    pub turn: Arc<tokio::sync::Mutex<()>>,
}

pub(super) struct State {
    path: Option<PathBuf>,
    file: StateFile,
    pub live: HashMap<String, Live>,
    /// Entries of an older state file that were dropped at load.
    pub dropped: usize,
}

/// What a hello's claim on a boot came to.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Claim {
    /// A boot this sink knows, and the secret matched.
    Known,
    /// A new boot, now remembered.
    New,
    /// Refused, and why (no peer input in it).
    Refused(String),
}

impl State {
    pub fn load(path: Option<PathBuf>) -> Result<State, LogError> {
        let mut file = match &path {
            Some(p) => match std::fs::read(p) {
                Ok(b) => {
                    serde_json::from_slice::<StateFile>(&b).map_err(|e| LogError::StateFormat {
                        path: p.display().to_string(),
                        reason: e.to_string(),
                    })?
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    // Written now, so a directory that will not take it fails at start.
                    let s = StateFile::default();
                    write_state(p, &s)?;
                    s
                }
                Err(source) => {
                    return Err(LogError::State {
                        path: p.display().to_string(),
                        source,
                    })
                }
            },
            None => StateFile::default(),
        };
        // An older release kept boots by their full id and without a secret: such an entry
        // can be claimed by no sender of this release.
        let before = file.boots.len();
        file.boots
            .retain(|k, b| b.secret.len() == 64 && k.len() == 64);
        let dropped = before - file.boots.len();
        let s = State {
            path,
            file,
            live: HashMap::new(),
            dropped,
        };
        if dropped > 0 {
            s.persist()?;
        }
        Ok(s)
    }

    /// Claims boot `key` for a hello from `enclave` whose secret hashes to `secret`, at
    /// `now`: a known boot only with the same secret and from the same enclave; a new one only
    /// if there is room, made by forgetting a boot that is certainly over, never one that may
    /// still be live.
    pub fn claim(
        &mut self,
        key: &str,
        enclave: &str,
        secret: &str,
        now: Instant,
    ) -> Result<Claim, LogError> {
        if let Some(b) = self.file.boots.get_mut(key) {
            if b.secret != secret {
                return Ok(Claim::Refused(
                    "it names a boot this sink knows, with another secret: only that boot's sender can write to it".into(),
                ));
            }
            if b.enclave != enclave {
                return Ok(Claim::Refused(format!(
                    "it names a boot of {}, from another enclave",
                    b.enclave
                )));
            }
            b.seen = now;
            return Ok(Claim::Known);
        }
        if self.file.boots.len() >= MAX_BOOTS {
            let Some(old) = self.forgettable(now) else {
                return Ok(Claim::Refused(format!(
                    "the state holds {MAX_BOOTS} boots that may still be live (connected, active within {} min, or finished less than {} min ago); a new boot is refused rather than one of them forgotten",
                    FORGET_IDLE.as_secs() / 60,
                    FORGET_FINISHED.as_secs() / 60
                )));
            };
            self.file.boots.remove(&old);
        }
        self.file.boots.insert(
            key.to_string(),
            BootState {
                last: 0,
                enclave: enclave.to_string(),
                secret: secret.to_string(),
                finished: false,
                seen: now,
            },
        );
        self.persist()?;
        Ok(Claim::New)
    }

    /// The boot to forget for a new one: not connected, and finished [`FORGET_FINISHED`] ago
    /// or idle for [`FORGET_IDLE`]; finished ones first, then the longest idle.
    fn forgettable(&self, now: Instant) -> Option<String> {
        let idle = |b: &BootState| now.saturating_duration_since(b.seen);
        self.file
            .boots
            .iter()
            .filter(|(k, _)| !self.live.contains_key(*k))
            .filter(|(_, b)| (b.finished && idle(b) >= FORGET_FINISHED) || idle(b) >= FORGET_IDLE)
            .max_by_key(|(_, b)| (b.finished, idle(b)))
            .map(|(k, _)| k.clone())
    }

    pub fn last(&self, key: &str) -> u64 {
        self.file.boots.get(key).map_or(0, |b| b.last)
    }

    pub fn touch(&mut self, key: &str) {
        if let Some(b) = self.file.boots.get_mut(key) {
            b.seen = Instant::now();
        }
    }

    /// Records that everything up to `last` is written (and, with `finished`, the status).
    pub fn set(&mut self, key: &str, last: u64, finished: bool) -> Result<(), LogError> {
        if let Some(b) = self.file.boots.get_mut(key) {
            b.last = last;
            b.finished |= finished;
            b.seen = Instant::now();
        }
        self.persist()
    }

    pub fn len(&self) -> usize {
        self.file.boots.len()
    }

    fn persist(&self) -> Result<(), LogError> {
        match &self.path {
            Some(p) => write_state(p, &self.file),
            None => Ok(()),
        }
    }
}

/// Writes the state file whole, through a private temporary file renamed into place.
fn write_state(path: &Path, s: &StateFile) -> Result<(), LogError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| LogError::State {
        path: path.display().to_string(),
        source,
    };
    let bytes = serde_json::to_vec(s).map_err(|e| err(io::Error::other(e)))?;
    let tmp = path.with_extension("tmp");
    // Never through a symlink: the temporary copy is the daemon's own file.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(&bytes).map_err(err)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn key(i: usize) -> String {
        format!("{:064x}", i)
    }
    const SECRET: &str = "5ec4e75ec4e75ec4e75ec4e75ec4e75ec4e75ec4e75ec4e75ec4e75ec4e75ec4";

    fn full(dir: &Path) -> State {
        let mut s = State::load(Some(dir.join("state"))).unwrap();
        let t = Instant::now();
        for i in 0..MAX_BOOTS {
            assert_eq!(s.claim(&key(i), "web", SECRET, t).unwrap(), Claim::New);
        }
        s
    }

    #[test]
    fn a_known_boot_is_claimed_only_with_its_secret() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = State::load(Some(dir.path().join("state"))).unwrap();
        let t = Instant::now();
        assert_eq!(s.claim(&key(1), "web", SECRET, t).unwrap(), Claim::New);
        s.set(&key(1), 5, false).unwrap();
        assert_eq!(s.claim(&key(1), "web", SECRET, t).unwrap(), Claim::Known);
        let other = "0".repeat(64);
        assert!(matches!(
            s.claim(&key(1), "web", &other, t).unwrap(),
            Claim::Refused(_)
        ));
        assert!(matches!(
            s.claim(&key(1), "cid:16", SECRET, t).unwrap(),
            Claim::Refused(_)
        ));
        // Kept across a restart, and private.
        let again = State::load(Some(dir.path().join("state"))).unwrap();
        assert_eq!(again.last(&key(1)), 5);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("state"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_full_state_forgets_only_boots_that_are_over_and_otherwise_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = full(dir.path());
        let t = Instant::now();
        // Everything may still be live: refused, nothing forgotten.
        let r = s.claim(&key(5000), "web", SECRET, t).unwrap();
        assert!(
            matches!(r, Claim::Refused(ref m) if m.contains("refused")),
            "{r:?}"
        );
        assert_eq!(s.len(), MAX_BOOTS);
        // A finished boot is forgotten once FORGET_FINISHED has passed, before idle ones.
        s.set(&key(7), 3, true).unwrap();
        let later = Instant::now() + FORGET_FINISHED + Duration::from_secs(1);
        assert_eq!(
            s.claim(&key(5000), "web", SECRET, later).unwrap(),
            Claim::New
        );
        assert_eq!(
            s.last(&key(7)),
            0,
            "the finished boot was not the one forgotten"
        );
        assert!(s.file.boots.contains_key(&key(8)));
        // A connected boot is never forgotten, however idle; an idle one after FORGET_IDLE.
        let much_later = Instant::now() + FORGET_IDLE + Duration::from_secs(1);
        for i in 0..MAX_BOOTS {
            if i != 9 {
                let (stop, _) = watch::channel(false);
                s.live.insert(
                    key(i),
                    Live {
                        conn: 0,
                        stop,
                        turn: Arc::default(),
                    },
                );
            }
        }
        s.live.insert(
            key(5000),
            Live {
                conn: 0,
                stop: watch::channel(false).0,
                turn: Arc::default(),
            },
        );
        assert_eq!(
            s.claim(&key(5001), "web", SECRET, much_later).unwrap(),
            Claim::New
        );
        assert!(!s.file.boots.contains_key(&key(9)));
        assert!(matches!(
            s.claim(&key(5002), "web", SECRET, much_later).unwrap(),
            Claim::Refused(_)
        ));
    }

    #[test]
    fn an_older_state_file_loses_its_unclaimable_entries() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state");
        std::fs::write(
            &p,
            r#"{"boots":{"web/0123456789abcdef0123456789abcdef":{"last":4,"enclave":"web","touched":3}},"clock":3}"#,
        )
        .unwrap();
        let s = State::load(Some(p.clone())).unwrap();
        assert_eq!((s.len(), s.dropped), (0, 1));
        assert!(!std::fs::read_to_string(&p)
            .unwrap()
            .contains("0123456789abcdef"));
    }
}
