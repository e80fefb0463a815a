//! What a sandboxed process may do: its capabilities and its system calls.
//!
//! The capability set is Docker's default without `MKNOD` and `NET_RAW`; the seccomp filter refuses, with
//! EPERM, the calls Docker's default profile refuses to a process without the matching
//! capability, plus `socket(AF_VSOCK, …)` (the parent's proxies are reached only through
//! cidboot's measured relays). `clone3` answers ENOSYS, as in Docker's profile, so that libc
//! falls back to `clone`, whose namespace flags a filter can see. x32 system calls are refused
//! and a foreign architecture's kill the process, so no other numbering slips past.

use std::collections::{BTreeMap, HashSet};
use std::str::FromStr;

use caps::{CapSet, Capability};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use serde::{Deserialize, Serialize};

/// Docker's default capabilities, less `CAP_MKNOD` and `CAP_NET_RAW`: the sandbox shares the
/// network namespace (loopback is how it reaches the attestation API and its proxy), and raw
/// sockets there would let a root workload read everyone's loopback traffic.
pub const DEFAULT_CAPS: &[Capability] = &[
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FSETID,
    Capability::CAP_FOWNER,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_SETFCAP,
    Capability::CAP_SETPCAP,
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_KILL,
    Capability::CAP_AUDIT_WRITE,
];

/// The sandbox's policy, from the measured runtime configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Policy {
    /// Capabilities added to [`DEFAULT_CAPS`] (`NET_ADMIN` or `CAP_NET_ADMIN`).
    pub capabilities: Vec<String>,
    /// Let the process open `AF_VSOCK` sockets.
    pub allow_vsock: bool,
    /// Mount the root without `nosuid` and leave `no_new_privs` off, so that setuid and
    /// file-capability binaries work.
    pub allow_setuid: bool,
}

/// What stops the sandbox's capabilities or seccomp filter from being set up.
#[allow(missing_docs)] // each variant's #[error] message is its documentation
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    #[error("unknown capability {0:?} (names as in capabilities(7), e.g. NET_ADMIN)")]
    UnknownCapability(String),
    #[error("{what}: {source}")]
    Caps {
        what: &'static str,
        source: caps::errors::CapsError,
    },
    #[error("building the seccomp filter: {0}")]
    Filter(#[from] seccompiler::BackendError),
    #[error("loading the seccomp filter: {0}")]
    Load(std::io::Error),
}

/// Parses a capability name, with or without the `CAP_` prefix.
pub fn parse_capability(name: &str) -> Result<Capability, ConfineError> {
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    Capability::from_str(&full).map_err(|_| ConfineError::UnknownCapability(name.to_string()))
}

impl Policy {
    /// The capabilities a process keeps: the default set and the opt-ins.
    pub fn capabilities(&self) -> Result<HashSet<Capability>, ConfineError> {
        let mut set: HashSet<Capability> = DEFAULT_CAPS.iter().copied().collect();
        for c in &self.capabilities {
            set.insert(parse_capability(c)?);
        }
        Ok(set)
    }

    /// Checks the opt-ins (at configuration time, long before anything runs).
    pub fn validate(&self) -> Result<(), ConfineError> {
        self.capabilities().map(|_| ())
    }
}

/// Drops every capability outside `keep` from the bounding set. Needs `CAP_SETPCAP`, so it
/// runs while the process is still fully privileged root.
pub fn limit_bounding(keep: &HashSet<Capability>) -> Result<(), ConfineError> {
    for cap in caps::all() {
        if !keep.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap).map_err(|source| ConfineError::Caps {
                what: "dropping from the bounding set",
                source,
            })?;
        }
    }
    Ok(())
}

/// After the identity change: root keeps `keep` as effective and permitted; anyone else has
/// none left (the kernel cleared them at `setuid`). Nobody inherits or has ambient ones.
pub fn set_process_caps(uid: u32, keep: &HashSet<Capability>) -> Result<(), ConfineError> {
    let err = |what| move |source| ConfineError::Caps { what, source };
    let none = caps::CapsHashSet::new();
    caps::clear(None, CapSet::Ambient).map_err(err("clearing ambient capabilities"))?;
    caps::set(None, CapSet::Inheritable, &none)
        .map_err(err("clearing inheritable capabilities"))?;
    let target: caps::CapsHashSet = if uid == 0 {
        keep.iter().copied().collect()
    } else {
        none
    };
    caps::set(None, CapSet::Effective, &target).map_err(err("setting effective capabilities"))?;
    caps::set(None, CapSet::Permitted, &target).map_err(err("setting permitted capabilities"))?;
    Ok(())
}

/// Calls refused with EPERM, each with the capability that lifts the refusal (as Docker's
/// profile does), or `None` where nothing does.
fn denied() -> Vec<(i64, Option<Capability>)> {
    use Capability as C;
    let admin = Some(C::CAP_SYS_ADMIN);
    vec![
        (libc::SYS_mount, admin),
        (libc::SYS_umount2, admin),
        (libc::SYS_pivot_root, admin),
        (libc::SYS_unshare, admin),
        (libc::SYS_setns, admin),
        (libc::SYS_fsopen, admin),
        (libc::SYS_fsconfig, admin),
        (libc::SYS_fsmount, admin),
        (libc::SYS_fspick, admin),
        (libc::SYS_move_mount, admin),
        (libc::SYS_open_tree, admin),
        (libc::SYS_mount_setattr, admin),
        (libc::SYS_quotactl, admin),
        (libc::SYS_quotactl_fd, admin),
        (libc::SYS_bpf, admin),
        (libc::SYS_perf_event_open, admin),
        (libc::SYS_fanotify_init, admin),
        (libc::SYS_lookup_dcookie, admin),
        (libc::SYS_swapon, admin),
        (libc::SYS_swapoff, admin),
        (libc::SYS_sethostname, admin),
        (libc::SYS_setdomainname, admin),
        (libc::SYS_userfaultfd, None),
        (libc::SYS_keyctl, None),
        (libc::SYS_add_key, None),
        (libc::SYS_request_key, None),
        (libc::SYS_io_uring_setup, None),
        (libc::SYS_io_uring_enter, None),
        (libc::SYS_io_uring_register, None),
        (libc::SYS_kexec_load, Some(C::CAP_SYS_BOOT)),
        (libc::SYS_kexec_file_load, Some(C::CAP_SYS_BOOT)),
        (libc::SYS_reboot, Some(C::CAP_SYS_BOOT)),
        (libc::SYS_init_module, Some(C::CAP_SYS_MODULE)),
        (libc::SYS_finit_module, Some(C::CAP_SYS_MODULE)),
        (libc::SYS_delete_module, Some(C::CAP_SYS_MODULE)),
        (libc::SYS_iopl, Some(C::CAP_SYS_RAWIO)),
        (libc::SYS_ioperm, Some(C::CAP_SYS_RAWIO)),
        (libc::SYS_acct, Some(C::CAP_SYS_PACCT)),
        (libc::SYS_settimeofday, Some(C::CAP_SYS_TIME)),
        (libc::SYS_clock_settime, Some(C::CAP_SYS_TIME)),
        (libc::SYS_clock_adjtime, Some(C::CAP_SYS_TIME)),
        (libc::SYS_adjtimex, Some(C::CAP_SYS_TIME)),
        (libc::SYS_syslog, Some(C::CAP_SYSLOG)),
        (libc::SYS_name_to_handle_at, Some(C::CAP_DAC_READ_SEARCH)),
        (libc::SYS_open_by_handle_at, Some(C::CAP_DAC_READ_SEARCH)),
        (libc::SYS_mbind, Some(C::CAP_SYS_NICE)),
        (libc::SYS_set_mempolicy, Some(C::CAP_SYS_NICE)),
        (libc::SYS_move_pages, Some(C::CAP_SYS_NICE)),
        (libc::SYS_modify_ldt, None),
        (libc::SYS_nfsservctl, None),
        (libc::SYS_uselib, None),
        (libc::SYS_ustat, None),
        (libc::SYS_sysfs, None),
        (libc::SYS__sysctl, None),
        (libc::SYS_vhangup, Some(C::CAP_SYS_TTY_CONFIG)),
    ]
}

/// The namespace flags `clone` may not carry without `CAP_SYS_ADMIN`.
const NS_FLAGS: &[u64] = &[
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWCGROUP as u64,
];

/// `AUDIT_ARCH_X86_64`: EM_X86_64 (62), 64-bit, little-endian.
const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;
/// The x32 ABI's system calls are the x86_64 numbers with this bit set.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// Refuses every x32 system call (ENOSYS): they bypass a filter keyed by x86_64 numbers, and
/// nothing here uses them. (seccompiler matches exact numbers only, hence four instructions by
/// hand; a foreign architecture, such as `int 0x80`, ends the process.)
fn deny_x32() -> BpfProgram {
    let op = |code: u16, jt: u8, jf: u8, k: u32| seccompiler::sock_filter { code, jt, jf, k };
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const JGE_K: u16 = 0x35;
    const RET_K: u16 = 0x06;
    vec![
        op(LD_W_ABS, 0, 0, 4), // seccomp_data.arch
        op(JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        op(RET_K, 0, 0, libc::SECCOMP_RET_KILL_PROCESS),
        op(LD_W_ABS, 0, 0, 0), // seccomp_data.nr
        op(JGE_K, 0, 1, X32_SYSCALL_BIT),
        op(RET_K, 0, 0, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
        op(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
    ]
}

/// The programs: calls refused with EPERM, `clone3` answered with ENOSYS, and no x32 calls.
pub fn filters(policy: &Policy) -> Result<Vec<BpfProgram>, ConfineError> {
    let keep = policy.capabilities()?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (nr, lifted_by) in denied() {
        if lifted_by.is_none_or(|c| !keep.contains(&c)) {
            rules.insert(nr, vec![]);
        }
    }
    if !keep.contains(&Capability::CAP_SYS_ADMIN) {
        let mut any_ns = Vec::new();
        for f in NS_FLAGS {
            any_ns.push(SeccompRule::new(vec![SeccompCondition::new(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(*f),
                *f,
            )?])?);
        }
        rules.insert(libc::SYS_clone, any_ns);
    }
    if !policy.allow_vsock {
        rules.insert(
            libc::SYS_socket,
            vec![SeccompRule::new(vec![SeccompCondition::new(
                0,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                libc::AF_VSOCK as u64,
            )?])?],
        );
    }
    let eperm = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        TargetArch::x86_64,
    )?;
    let enosys = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, vec![])]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        TargetArch::x86_64,
    )?;
    Ok(vec![eperm.try_into()?, enosys.try_into()?, deny_x32()])
}

/// Loads the filters into this thread. With `no_new_privs` set this needs no capability;
/// without it, `CAP_SYS_ADMIN`. (seccompiler's own loader always sets `no_new_privs`, which
/// the setuid opt-in must leave off, hence the system call here.)
pub fn load(programs: &[BpfProgram]) -> Result<(), ConfineError> {
    for p in programs {
        let len = u16::try_from(p.len()).map_err(|_| {
            ConfineError::Load(std::io::Error::other(
                "the filter has too many instructions",
            ))
        })?;
        let prog = libc::sock_fprog {
            len,
            filter: p.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: seccompiler's sock_filter is #[repr(C)] {u16, u8, u8, u32}, the layout of
        // the kernel's (and libc's) sock_filter; `prog` points into `p`, which outlives the
        // call, and the kernel copies the program before returning.
        let r = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                &prog as *const libc::sock_fprog,
            )
        };
        if r != 0 {
            return Err(ConfineError::Load(std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_names_and_the_default_mask() {
        assert_eq!(
            parse_capability("net_admin").unwrap(),
            Capability::CAP_NET_ADMIN
        );
        assert_eq!(
            parse_capability("CAP_SYS_PTRACE").unwrap(),
            Capability::CAP_SYS_PTRACE
        );
        assert!(parse_capability("FLY").is_err());
        let mask: u64 = DEFAULT_CAPS.iter().map(|c| c.bitmask()).sum();
        // Docker's well-known default (0xa80425fb) without CAP_MKNOD (27) and CAP_NET_RAW (13).
        assert_eq!(mask, 0xa804_25fb & !(1 << 27) & !(1 << 13));
    }

    #[test]
    fn the_filters_compile_for_every_policy() {
        for p in [
            Policy::default(),
            Policy {
                capabilities: vec!["SYS_ADMIN".into(), "SYS_TIME".into()],
                allow_vsock: true,
                allow_setuid: true,
            },
        ] {
            assert_eq!(filters(&p).unwrap().len(), 3);
        }
    }
}
