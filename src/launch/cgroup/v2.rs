//! The unified hierarchy: the enclave's, and `cidboot run`'s where it delegates the
//! controllers.

use std::path::{Path, PathBuf};

use super::{io_err, keyed, write_file, CgroupError, Counters, Settings};

/// The controllers the limits need; `cpu` only sets the weight and may be missing.
const REQUIRED: [&str; 2] = ["memory", "pids"];

/// A v2 cgroup made for the workload.
#[derive(Debug)]
pub struct Dir {
    /// Its directory.
    pub path: PathBuf,
}

fn words(dir: &Path, file: &str) -> Result<Vec<String>, CgroupError> {
    let p = dir.join(file);
    let text = std::fs::read_to_string(&p).map_err(io_err(&p))?;
    Ok(text.split_whitespace().map(String::from).collect())
}

impl Dir {
    /// Enables the controllers in `parent` and makes `parent/name` with `s`. A cgroup of that
    /// name already there is reused (the limits are written again).
    pub fn create(parent: &Path, name: &str, s: &Settings) -> Result<Dir, CgroupError> {
        let available = words(parent, "cgroup.controllers")?;
        let unavailable = |c: &str| {
            CgroupError::Unavailable(format!(
                "the {c} controller is not available in {} (its cgroup.controllers: {:?})",
                parent.display(),
                available.join(" ")
            ))
        };
        for c in REQUIRED {
            if !available.iter().any(|a| a == c) {
                return Err(unavailable(c));
            }
        }
        let cpu = available.iter().any(|a| a == "cpu");
        let enabled = words(parent, "cgroup.subtree_control")?;
        let wanted = REQUIRED.iter().copied().chain(cpu.then_some("cpu"));
        for c in wanted.filter(|c| !enabled.iter().any(|e| e == c)) {
            write_file(parent, "cgroup.subtree_control", &format!("+{c}")).map_err(|e| {
                match e {
                    CgroupError::Io { source, .. }
                        if source.raw_os_error() == Some(libc::EBUSY) =>
                    {
                        CgroupError::Unavailable(format!(
                            "{} holds processes itself, so it cannot hand the {c} controller to a cgroup below it (cgroup v2 allows controllers only to cgroups without processes); start cidboot in a cgroup of its own",
                            parent.display()
                        ))
                    }
                    e => e,
                }
            })?;
        }
        let path = parent.join(name);
        match std::fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err(&path)(e)),
        }
        let dir = Dir { path };
        if let Err(e) = dir.apply(s, cpu) {
            let _ = std::fs::remove_dir(&dir.path);
            return Err(e);
        }
        Ok(dir)
    }

    fn apply(&self, s: &Settings, cpu: bool) -> Result<(), CgroupError> {
        let d = &self.path;
        write_file(d, "memory.max", &s.memory_max.to_string())?;
        // An OOM kills every process of the cgroup, never one of cidboot's.
        write_file(d, "memory.oom.group", "1")?;
        write_file(d, "pids.max", &s.pids_max.to_string())?;
        // Without swap accounting (no CONFIG_SWAP) there is no swap to limit.
        if let Err(e) = write_file(d, "memory.swap.max", &s.swap_max.to_string()) {
            tracing::debug!("memory.swap.max: {e}");
        }
        if cpu {
            write_file(d, "cpu.weight", &s.cpu_weight.to_string())?;
        }
        Ok(())
    }

    /// The OOM kills and refused forks so far.
    pub fn counters(&self) -> Counters {
        let oom = keyed(&self.path, "memory.events", "oom_kill").unwrap_or(0);
        let group = keyed(&self.path, "memory.events", "oom_group_kill").unwrap_or(0);
        Counters {
            oom_kills: oom.max(group),
            pids_max: keyed(&self.path, "pids.events", "max").unwrap_or(0),
        }
    }
}

/// The least `memory.max` of `dir` and the cgroups above it (`u64::MAX` for none).
pub fn limit_above(dir: &Path) -> u64 {
    super::v1::least_up(dir, "memory.max")
}

/// Removes an interrupted run's cgroups below `parent`.
pub fn sweep(parent: &Path) {
    super::sweep_dir(parent);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(parent: &Path, controllers: &str) {
        std::fs::write(parent.join("cgroup.controllers"), controllers).unwrap();
        std::fs::write(parent.join("cgroup.subtree_control"), "").unwrap();
        std::fs::write(parent.join("cgroup.procs"), "").unwrap();
    }

    const S: Settings = Settings {
        memory_max: 100 << 20,
        swap_max: 0,
        pids_max: 64,
        cpu_weight: 50,
    };

    #[test]
    fn enables_the_controllers_and_writes_every_limit() {
        let t = tempfile::tempdir().unwrap();
        fake(t.path(), "cpuset cpu io memory hugetlb pids rdma misc\n");
        let d = Dir::create(t.path(), "workload", &S).unwrap();
        let read = |f: &str| std::fs::read_to_string(d.path.join(f)).unwrap();
        assert_eq!(read("memory.max"), (100u64 << 20).to_string());
        assert_eq!(read("memory.oom.group"), "1");
        assert_eq!(read("memory.swap.max"), "0");
        assert_eq!(read("pids.max"), "64");
        assert_eq!(read("cpu.weight"), "50");
        // Each controller enabled by a write of its own (the file keeps the last here).
        let sc = std::fs::read_to_string(t.path().join("cgroup.subtree_control")).unwrap();
        assert!(sc.starts_with("+cpu"), "{sc}");
        std::fs::write(
            d.path.join("memory.events"),
            "low 0\nhigh 0\nmax 9\noom 2\noom_kill 1\noom_group_kill 1\n",
        )
        .unwrap();
        std::fs::write(d.path.join("pids.events"), "max 3\n").unwrap();
        assert_eq!(
            d.counters(),
            Counters {
                oom_kills: 1,
                pids_max: 3
            }
        );
    }

    #[test]
    fn a_hierarchy_without_memory_or_pids_is_refused_by_name() {
        let t = tempfile::tempdir().unwrap();
        fake(t.path(), "cpu io\n");
        let e = Dir::create(t.path(), "workload", &S)
            .unwrap_err()
            .to_string();
        assert!(e.contains("the memory controller is not available"), "{e}");
        assert!(!t.path().join("workload").exists());
        fake(t.path(), "memory\n");
        let e = Dir::create(t.path(), "workload", &S)
            .unwrap_err()
            .to_string();
        assert!(e.contains("the pids controller"), "{e}");
    }

    #[test]
    fn the_least_limit_above_counts() {
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("a");
        let b = a.join("b");
        std::fs::create_dir_all(&b).unwrap();
        for (d, v) in [(&a, "268435456\n"), (&b, "max\n")] {
            std::fs::write(d.join("cgroup.procs"), "").unwrap();
            std::fs::write(d.join("memory.max"), v).unwrap();
        }
        assert_eq!(limit_above(&b), 256 << 20);
        assert_eq!(limit_above(t.path()), u64::MAX);
    }
}
