//! The v1 hierarchies (memory, pids, cpu), for `cidboot run` on hosts whose controllers are
//! still there (hybrid hosts, with an empty unified hierarchy beside them). v1 has no
//! `memory.oom.group`: an OOM in the cgroup kills the process the kernel picks in it, which
//! the sandbox then reports as the workload's end.

use std::path::{Path, PathBuf};

use super::{io_err, keyed, write_file, CgroupError, Counters, Settings};

/// One v1 cgroup per hierarchy, made for the workload.
#[derive(Debug)]
pub struct Dirs {
    memory: PathBuf,
    pids: PathBuf,
    cpu: Option<PathBuf>,
}

/// v1 `cpu.shares` for a v2 `cpu.weight`: the default weight (100) is the default share
/// (1024), and the rest in proportion.
pub fn shares(weight: u64) -> u64 {
    (weight.saturating_mul(1024) / 100).clamp(2, 262_144)
}

fn make(parent: &Path, name: &str) -> Result<PathBuf, CgroupError> {
    let p = parent.join(name);
    match std::fs::create_dir(&p) {
        Ok(()) => Ok(p),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(p),
        Err(e) => Err(io_err(&p)(e)),
    }
}

impl Dirs {
    /// Makes `name` below each parent and writes `s`. The cpu hierarchy is optional: without
    /// it the weight is not applied.
    pub fn create(
        memory: &Path,
        pids: &Path,
        cpu: Option<&Path>,
        name: &str,
        s: &Settings,
    ) -> Result<Dirs, CgroupError> {
        let mut dirs = Dirs {
            memory: make(memory, name)?,
            pids: PathBuf::new(),
            cpu: None,
        };
        let r = (|| {
            dirs.pids = make(pids, name)?;
            dirs.cpu = cpu.map(|c| make(c, name)).transpose()?;
            dirs.apply(s)
        })();
        if let Err(e) = r {
            for d in dirs.all() {
                let _ = std::fs::remove_dir(d);
            }
            return Err(e);
        }
        Ok(dirs)
    }

    fn apply(&self, s: &Settings) -> Result<(), CgroupError> {
        write_file(
            &self.memory,
            "memory.limit_in_bytes",
            &s.memory_max.to_string(),
        )?;
        // memory+swap, where the kernel accounts swap (swapaccount); it must come after the
        // memory limit, which it may not be below.
        let memsw = s.memory_max.saturating_add(s.swap_max);
        if let Err(e) = write_file(
            &self.memory,
            "memory.memsw.limit_in_bytes",
            &memsw.to_string(),
        ) {
            tracing::warn!(
                "no swap limit for the workload (this kernel does not account swap): {e}"
            );
        }
        write_file(&self.pids, "pids.max", &s.pids_max.to_string())?;
        if let Some(c) = &self.cpu {
            write_file(c, "cpu.shares", &shares(s.cpu_weight).to_string())?;
        }
        Ok(())
    }

    /// Every directory, the memory hierarchy's first.
    pub fn all(&self) -> Vec<&Path> {
        let mut v = vec![self.memory.as_path()];
        if !self.pids.as_os_str().is_empty() {
            v.push(&self.pids);
        }
        v.extend(self.cpu.as_deref());
        v
    }

    /// The OOM kills and refused forks so far.
    pub fn counters(&self) -> Counters {
        Counters {
            oom_kills: keyed(&self.memory, "memory.oom_control", "oom_kill").unwrap_or(0),
            pids_max: keyed(&self.pids, "pids.events", "max").unwrap_or(0),
        }
    }
}

/// The least value of `file` in `dir` and each cgroup above it (`max`, or a v1 "unlimited"
/// near `i64::MAX`, is no limit).
pub fn least_up(dir: &Path, file: &str) -> u64 {
    let mut least = u64::MAX;
    let mut d = Some(dir);
    while let Some(p) = d {
        if !p.join("cgroup.procs").exists() {
            break;
        }
        if let Some(v) = std::fs::read_to_string(p.join(file))
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
        {
            least = least.min(v);
        }
        d = p.parent();
    }
    least
}

/// The least `memory.limit_in_bytes` of `dir` and the cgroups above it.
pub fn limit_above(dir: &Path) -> u64 {
    least_up(dir, "memory.limit_in_bytes")
}

/// Removes an interrupted run's cgroups below each parent.
pub fn sweep(parents: &[Option<&PathBuf>]) {
    for p in parents.iter().flatten() {
        super::sweep_dir(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_map_to_shares_around_the_defaults() {
        assert_eq!(shares(100), 1024);
        assert_eq!(shares(1), 10);
        assert_eq!(shares(10_000), 102_400);
    }

    #[test]
    fn writes_the_limits_in_each_hierarchy_and_reads_the_counters() {
        let t = tempfile::tempdir().unwrap();
        let (m, p, c) = (
            t.path().join("memory"),
            t.path().join("pids"),
            t.path().join("cpu"),
        );
        for d in [&m, &p, &c] {
            std::fs::create_dir(d).unwrap();
        }
        let s = Settings {
            memory_max: 100 << 20,
            swap_max: 4 << 20,
            pids_max: 32,
            cpu_weight: 200,
        };
        let d = Dirs::create(&m, &p, Some(&c), "cidboot-run-7", &s).unwrap();
        let read =
            |d: &Path, f: &str| std::fs::read_to_string(d.join("cidboot-run-7").join(f)).unwrap();
        assert_eq!(
            read(&m, "memory.limit_in_bytes"),
            (100u64 << 20).to_string()
        );
        assert_eq!(
            read(&m, "memory.memsw.limit_in_bytes"),
            (104u64 << 20).to_string()
        );
        assert_eq!(read(&p, "pids.max"), "32");
        assert_eq!(read(&c, "cpu.shares"), "2048");
        assert_eq!(d.all().len(), 3);
        std::fs::write(
            m.join("cidboot-run-7/memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .unwrap();
        std::fs::write(p.join("cidboot-run-7/pids.events"), "max 5\n").unwrap();
        assert_eq!(
            d.counters(),
            Counters {
                oom_kills: 2,
                pids_max: 5
            }
        );
    }

    #[test]
    fn a_failure_leaves_no_directory_behind() {
        let t = tempfile::tempdir().unwrap();
        let m = t.path().join("memory");
        std::fs::create_dir(&m).unwrap();
        let s = Settings {
            memory_max: 1 << 30,
            swap_max: 0,
            pids_max: 8,
            cpu_weight: 1,
        };
        let missing = t.path().join("no-pids-here");
        assert!(Dirs::create(&m, &missing, None, "x", &s).is_err());
        assert!(!m.join("x").exists());
    }
}
