//! Resource limits for everything cidboot starts: the helpers and the workload share one
//! cgroup of their own, never cidboot's, with a memory limit that leaves cidboot a reserve, a
//! process limit, no swap by default and a CPU weight.
//!
//! The enclave always uses cgroup v2 ([`v2`]): PID 1 mounts it, enables the controllers at the
//! root and makes the workload's cgroup below. `cidboot run` nests its cgroup under the one it
//! runs in (so an outer limit still bounds everything), on cgroup v2 where that delegates the
//! controllers, else on the v1 hierarchies ([`v1`]), chosen at run time; the cgroup is removed
//! when the run ends ([`Drop`]), and one an interrupted run left behind is removed by the next.
//!
//! A sandbox joins the cgroup between its fork and its exec of cidboot's stage 1, by a single
//! `write(2)` of `0` to a `cgroup.procs` the supervisor opened ([`Cgroup::join_fds`]): stage 1,
//! the sandbox's PID 1 and the program are all in it before anything of the image runs. (The
//! standard library cannot `clone3(CLONE_INTO_CGROUP)`, which would do the same one step
//! earlier.) The sandbox never mounts a cgroup filesystem, so the workload cannot move out.
//!
//! All file access goes through a root path, so the logic runs against a temporary directory
//! in the unit tests and against `/sys/fs/cgroup` for real.

pub mod place;
pub mod v1;
pub mod v2;

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::limits::{DEFAULT_CPU_WEIGHT, DEFAULT_PIDS};
use crate::config::Limits;

/// The least memory kept back for cidboot: it forwards the logs, reports the status and
/// powers off with it.
pub const MIN_RESERVE: u64 = 64 << 20;
/// How long removing a cgroup waits for its last processes to be gone.
const REMOVE_PATIENCE: Duration = Duration::from_secs(5);

/// Why the limits could not be set up or read.
#[allow(missing_docs)] // each variant's #[error] message is its documentation
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("[workload.limits] memory_max_mib = {asked}: the workload may have at most {most} MiB here ({available} MiB available, less cidboot's reserve of {reserve} MiB)")]
    MemoryOverReserve {
        asked: u64,
        most: u64,
        available: u64,
        reserve: u64,
    },
    #[error("the limits cannot be applied: {0}")]
    Unavailable(String),
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The limits as applied, in the kernel's units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// `memory.max`, bytes.
    pub memory_max: u64,
    /// `memory.swap.max`, bytes.
    pub swap_max: u64,
    /// `pids.max`.
    pub pids_max: u64,
    /// `cpu.weight` (1..=10000).
    pub cpu_weight: u64,
}

/// cidboot's reserve out of `available` bytes: 10% of it, at least [`MIN_RESERVE`].
pub fn reserve(available: u64) -> u64 {
    (available / 10).max(MIN_RESERVE)
}

impl Settings {
    /// The limits `cfg` asks for on a machine where the workload and cidboot share
    /// `available` bytes. The memory limit defaults to all of it less [`reserve`], and may not
    /// be set above that.
    pub fn resolve(cfg: Option<&Limits>, available: u64) -> Result<Settings, CgroupError> {
        let dflt = Limits::default();
        let cfg = cfg.unwrap_or(&dflt);
        let reserve = reserve(available);
        let most = available.saturating_sub(reserve);
        let mib = |b: u64| b >> 20;
        let memory_max = match cfg.memory_max_mib {
            Some(m) if m.saturating_mul(1 << 20) > most => {
                return Err(CgroupError::MemoryOverReserve {
                    asked: m,
                    most: mib(most),
                    available: mib(available),
                    reserve: mib(reserve),
                })
            }
            Some(m) => m << 20,
            None if most < crate::config::limits::MIN_MEMORY_MIB << 20 => {
                return Err(CgroupError::Unavailable(format!(
                    "only {} MiB available, and cidboot keeps {} MiB of it",
                    mib(available),
                    mib(reserve)
                )))
            }
            None => most,
        };
        Ok(Settings {
            memory_max,
            swap_max: cfg.swap_max_mib.unwrap_or(0).saturating_mul(1 << 20),
            pids_max: cfg.pids_max.unwrap_or(DEFAULT_PIDS),
            cpu_weight: cfg.cpu_weight.unwrap_or(DEFAULT_CPU_WEIGHT),
        })
    }
}

/// What ended a workload, as its cgroup's event counters tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The kernel killed it (or part of it) for want of memory within `memory.max`.
    OutOfMemory {
        /// The limit, bytes.
        limit: u64,
    },
    /// A fork or clone failed at `pids.max`.
    PidsLimit {
        /// The limit.
        limit: u64,
    },
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cause::OutOfMemory { limit } => write!(
                f,
                "killed: out of memory (the limit is {} MiB)",
                limit >> 20
            ),
            Cause::PidsLimit { limit } => {
                write!(f, "pids limit reached (at most {limit} processes)")
            }
        }
    }
}

/// The event counters that tell a cause.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Processes the OOM killer killed in the cgroup.
    pub oom_kills: u64,
    /// Forks refused at `pids.max`.
    pub pids_max: u64,
}

/// Which kind of hierarchy holds the cgroup.
#[derive(Debug)]
enum Backend {
    V2(v2::Dir),
    V1(v1::Dirs),
}

/// The helpers' and the workload's cgroup.
#[derive(Debug)]
pub struct Cgroup {
    backend: Backend,
    settings: Settings,
    /// Each hierarchy's `cgroup.procs` of this cgroup, open for writing.
    procs: Vec<OwnedFd>,
    /// Remove the cgroup when this is dropped (`cidboot run`; PID 1's lasts until power-off).
    remove: bool,
}

impl Cgroup {
    /// The limits in force.
    pub fn settings(&self) -> Settings {
        self.settings
    }

    /// Where the cgroup is (one directory per v1 hierarchy).
    pub fn paths(&self) -> Vec<PathBuf> {
        match &self.backend {
            Backend::V2(d) => vec![d.path.clone()],
            Backend::V1(d) => d.all().into_iter().map(Path::to_path_buf).collect(),
        }
    }

    /// Which kind of hierarchy, for the logs.
    pub fn kind(&self) -> &'static str {
        match self.backend {
            Backend::V2(_) => "cgroup v2",
            Backend::V1(_) => "cgroup v1",
        }
    }

    /// The descriptors a new sandbox writes `0` to, between fork and exec, to join.
    pub fn join_fds(&self) -> Vec<RawFd> {
        self.procs.iter().map(AsRawFd::as_raw_fd).collect()
    }

    /// The counters now; a counter that cannot be read counts as zero.
    pub fn counters(&self) -> Counters {
        match &self.backend {
            Backend::V2(d) => d.counters(),
            Backend::V1(d) => d.counters(),
        }
    }

    /// What the counters say happened since `before`: running out of memory first (it kills),
    /// then the process limit.
    pub fn cause(&self, before: Counters) -> Option<Cause> {
        let now = self.counters();
        if now.oom_kills > before.oom_kills {
            Some(Cause::OutOfMemory {
                limit: self.settings.memory_max,
            })
        } else if now.pids_max > before.pids_max {
            Some(Cause::PidsLimit {
                limit: self.settings.pids_max,
            })
        } else {
            None
        }
    }

    fn with(backend: Backend, settings: Settings, remove: bool) -> Result<Cgroup, CgroupError> {
        let dirs = match &backend {
            Backend::V2(d) => vec![d.path.clone()],
            Backend::V1(d) => d.all().into_iter().map(Path::to_path_buf).collect(),
        };
        let mut procs = Vec::new();
        for d in dirs {
            let p = d.join("cgroup.procs");
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&p)
                .map_err(io_err(&p))?;
            procs.push(OwnedFd::from(f));
        }
        Ok(Cgroup {
            backend,
            settings,
            procs,
            remove,
        })
    }

    /// Kills whatever is left in the cgroup and removes it.
    fn remove_now(&self) -> Result<(), CgroupError> {
        let dirs = self.paths();
        let deadline = std::time::Instant::now() + REMOVE_PATIENCE;
        for d in &dirs {
            loop {
                kill_all(d);
                match std::fs::remove_dir(d) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e) if std::time::Instant::now() >= deadline => {
                        return Err(io_err(d)(e));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        Ok(())
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if self.remove {
            if let Err(e) = self.remove_now() {
                tracing::warn!("removing the workload's cgroup: {e}");
            }
        }
    }
}

/// SIGKILLs every process listed in `dir/cgroup.procs`.
fn kill_all(dir: &Path) {
    let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) else {
        return;
    };
    for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        if pid > 1 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Writes `value` to the interface file `dir/name`.
pub(crate) fn write_file(dir: &Path, name: &str, value: &str) -> Result<(), CgroupError> {
    let p = dir.join(name);
    // No O_TRUNC: cgroup files take one value per write. O_CREAT lets the unit tests run
    // against a plain directory; a cgroup filesystem refuses to create a file that it lacks.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&p)
        .map_err(io_err(&p))?;
    f.write_all(value.as_bytes()).map_err(io_err(&p))
}

/// The value of `key` in a flat-keyed file (`memory.events`, `pids.events`, `oom_control`).
pub(crate) fn keyed(dir: &Path, file: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join(file)).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// `MemTotal` from a `/proc/meminfo` text, in bytes.
pub fn mem_total(meminfo: &str) -> Option<u64> {
    meminfo.lines().find_map(|l| {
        let kb = l.strip_prefix("MemTotal:")?.trim().strip_suffix("kB")?;
        kb.trim().parse::<u64>().ok()?.checked_mul(1024)
    })
}

/// The machine's `MemTotal`, in bytes.
pub fn machine_memory() -> Result<u64, CgroupError> {
    let p = Path::new("/proc/meminfo");
    let text = std::fs::read_to_string(p).map_err(io_err(p))?;
    mem_total(&text).ok_or_else(|| CgroupError::Unavailable("no MemTotal in /proc/meminfo".into()))
}

/// The enclave's workload cgroup: cgroup v2 mounted at `root` (PID 1 mounted it), the
/// controllers enabled at the root, and the cgroup `name` below it, kept until power-off.
pub fn enclave(root: &Path, name: &str, cfg: Option<&Limits>) -> Result<Cgroup, CgroupError> {
    let settings = Settings::resolve(cfg, machine_memory()?)?;
    let dir = v2::Dir::create(root, name, &settings)?;
    Cgroup::with(Backend::V2(dir), settings, false)
}

/// The name of the cgroup `cidboot run` (process `pid`) makes.
pub fn run_name(pid: u32) -> String {
    format!("cidboot-run-{pid}")
}

/// `cidboot run`'s cgroup: below the one cidboot runs in, on cgroup v2 if that delegates the
/// controllers, else on the v1 hierarchies. `None` (with a warning) where neither can apply
/// the limits and the configuration did not ask for them; an error where it did.
pub fn for_run(cfg: Option<&Limits>) -> Result<Option<Cgroup>, CgroupError> {
    let read = |p: &str| std::fs::read_to_string(p).map_err(io_err(Path::new(p)));
    let mountinfo = read("/proc/self/mountinfo")?;
    let own = read("/proc/self/cgroup")?;
    let name = run_name(std::process::id());
    match place_for_run(&mountinfo, &own, &name, cfg, machine_memory()?) {
        Ok(cg) => Ok(Some(cg)),
        Err(e) if cfg.is_none() => {
            tracing::warn!(
                "the workload runs WITHOUT resource limits: {e}. Add [workload.limits] to the configuration to make this an error (docs/limits.md)"
            );
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// [`for_run`] from the texts of `/proc/self/mountinfo` and `/proc/self/cgroup`.
pub fn place_for_run(
    mountinfo: &str,
    own: &str,
    name: &str,
    cfg: Option<&Limits>,
    mem_total: u64,
) -> Result<Cgroup, CgroupError> {
    let mounts = place::Mounts::parse(mountinfo, own);
    let mut why = Vec::new();
    if let Some(parent) = &mounts.v2 {
        v2::sweep(parent);
        let available = mem_total.min(v2::limit_above(parent));
        match Settings::resolve(cfg, available) {
            Ok(settings) => match v2::Dir::create(parent, name, &settings) {
                Ok(dir) => return Cgroup::with(Backend::V2(dir), settings, true),
                Err(e) => why.push(format!("cgroup v2 at {}: {e}", parent.display())),
            },
            Err(e @ CgroupError::MemoryOverReserve { .. }) => return Err(e),
            Err(e) => why.push(e.to_string()),
        }
    }
    match (&mounts.memory, &mounts.pids) {
        (Some(memory), Some(pids)) => {
            v1::sweep(&[Some(memory), Some(pids), mounts.cpu.as_ref()]);
            let available = mem_total.min(v1::limit_above(memory));
            let settings = Settings::resolve(cfg, available)?;
            let dirs = v1::Dirs::create(memory, pids, mounts.cpu.as_deref(), name, &settings)?;
            Cgroup::with(Backend::V1(dirs), settings, true)
        }
        _ => {
            why.push("no cgroup v1 memory and pids hierarchies either".into());
            Err(CgroupError::Unavailable(why.join("; ")))
        }
    }
}

/// Whether a cgroup named like [`run_name`] belongs to no running process.
pub(crate) fn is_stale(name: &str) -> bool {
    name.strip_prefix("cidboot-run-")
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|pid| {
            pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
        })
}

/// Removes the stale `cidboot-run-*` cgroups below `parent`: an interrupted run's.
pub(crate) fn sweep_dir(parent: &Path) {
    let Ok(rd) = std::fs::read_dir(parent) else {
        return;
    };
    for e in rd.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if is_stale(&n) {
            let d = e.path();
            kill_all(&d);
            match std::fs::remove_dir(&d) {
                Ok(()) => {
                    tracing::info!(cgroup = %d.display(), "removed an interrupted run's cgroup")
                }
                Err(e) => {
                    tracing::warn!(cgroup = %d.display(), "could not remove an interrupted run's cgroup: {e}")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn the_reserve_is_a_tenth_and_at_least_64_mib() {
        assert_eq!(reserve(256 * MIB), 64 * MIB);
        assert_eq!(reserve(4096 * MIB), 4096 * MIB / 10);
    }

    #[test]
    fn settings_default_to_the_machine_less_the_reserve_and_refuse_more() {
        let s = Settings::resolve(None, 1024 * MIB).unwrap();
        assert_eq!(
            s,
            Settings {
                memory_max: 1024 * MIB - reserve(1024 * MIB),
                swap_max: 0,
                pids_max: 4096,
                cpu_weight: 100
            }
        );
        let cfg = Limits {
            memory_max_mib: Some(100),
            swap_max_mib: Some(2),
            pids_max: Some(64),
            cpu_weight: Some(50),
        };
        let s = Settings::resolve(Some(&cfg), 256 * MIB).unwrap();
        assert_eq!(
            (s.memory_max, s.swap_max, s.pids_max, s.cpu_weight),
            (100 * MIB, 2 * MIB, 64, 50)
        );
        let over = Limits {
            memory_max_mib: Some(200),
            ..Limits::default()
        };
        let e = Settings::resolve(Some(&over), 256 * MIB).unwrap_err();
        assert_eq!(
            e.to_string(),
            "[workload.limits] memory_max_mib = 200: the workload may have at most 192 MiB here (256 MiB available, less cidboot's reserve of 64 MiB)"
        );
        assert!(matches!(
            Settings::resolve(None, 70 * MIB),
            Err(CgroupError::Unavailable(_))
        ));
    }

    #[test]
    fn mem_total_is_read_from_meminfo() {
        assert_eq!(
            mem_total("MemTotal:       24683772 kB\nMemFree: 1 kB\n"),
            Some(24683772 * 1024)
        );
        assert_eq!(mem_total("MemFree: 1 kB\n"), None);
    }

    #[test]
    fn causes_name_what_ended_the_workload() {
        assert_eq!(
            Cause::OutOfMemory { limit: 64 * MIB }.to_string(),
            "killed: out of memory (the limit is 64 MiB)"
        );
        assert_eq!(
            Cause::PidsLimit { limit: 32 }.to_string(),
            "pids limit reached (at most 32 processes)"
        );
    }

    /// A hybrid host in a temporary directory: an empty unified hierarchy, and v1 memory
    /// (cidboot in `/outer`, limited to 256 MiB) and pids hierarchies.
    fn hybrid(t: &Path, name: &str) -> (String, &'static str) {
        let (u, m, p) = (t.join("unified"), t.join("memory"), t.join("pids"));
        for d in [&u, &m.join("outer").join(name), &p.join(name)] {
            std::fs::create_dir_all(d).unwrap();
        }
        for f in [
            "cgroup.controllers",
            "cgroup.subtree_control",
            "cgroup.procs",
        ] {
            std::fs::write(u.join(f), "").unwrap();
        }
        // What the kernel makes in a new cgroup, made here beforehand.
        for d in [
            m.join("outer"),
            m.join("outer").join(name),
            p.join(name),
            p.clone(),
        ] {
            std::fs::write(d.join("cgroup.procs"), "").unwrap();
        }
        std::fs::write(m.join("outer/memory.limit_in_bytes"), "268435456\n").unwrap();
        let mountinfo = format!(
            "41 31 0:38 / {} rw - cgroup2 cgroup2 rw\n35 31 0:32 / {} rw - cgroup cgroup rw,memory\n39 31 0:36 / {} rw - cgroup cgroup rw,pids\n",
            u.display(),
            m.display(),
            p.display()
        );
        (mountinfo, "8:pids:/\n4:memory:/outer\n0::/\n")
    }

    #[test]
    fn a_run_falls_back_to_v1_where_the_unified_hierarchy_has_no_controllers() {
        let t = tempfile::tempdir().unwrap();
        let (mountinfo, own) = hybrid(t.path(), "cidboot-run-9");
        let stale = t.path().join("memory/outer/cidboot-run-4194304");
        std::fs::create_dir(&stale).unwrap();
        let mut cg = place_for_run(&mountinfo, own, "cidboot-run-9", None, 1 << 40).unwrap();
        cg.remove = false;
        assert_eq!(cg.kind(), "cgroup v1");
        assert_eq!(
            cg.settings().memory_max,
            192 * MIB,
            "the outer limit, less the reserve"
        );
        assert_eq!(
            cg.paths(),
            [
                t.path().join("memory/outer/cidboot-run-9"),
                t.path().join("pids/cidboot-run-9")
            ]
        );
        assert_eq!(cg.join_fds().len(), 2);
        assert!(!stale.exists(), "an interrupted run's cgroup is removed");
        let over = Limits {
            memory_max_mib: Some(193),
            ..Limits::default()
        };
        assert!(matches!(
            place_for_run(&mountinfo, own, "cidboot-run-9", Some(&over), 1 << 40),
            Err(CgroupError::MemoryOverReserve { most: 192, .. })
        ));
    }

    #[test]
    fn without_any_usable_hierarchy_the_reasons_are_named() {
        let t = tempfile::tempdir().unwrap();
        let (mountinfo, own) = hybrid(t.path(), "cidboot-run-9");
        let only_v2: String = mountinfo.lines().take(1).collect();
        let e = place_for_run(&only_v2, own, "cidboot-run-9", None, 1 << 40)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("the memory controller is not available in")
                && e.ends_with("no cgroup v1 memory and pids hierarchies either"),
            "{e}"
        );
    }

    #[test]
    fn stale_names_are_those_of_no_running_process() {
        assert!(!is_stale(&run_name(std::process::id())));
        assert!(!is_stale("cidboot-run-1"), "PID 1 runs");
        assert!(is_stale("cidboot-run-4194304"), "beyond PID_MAX_LIMIT");
        assert!(!is_stale("other"));
    }
}
