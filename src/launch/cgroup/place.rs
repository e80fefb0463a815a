//! Where cidboot itself is, in each cgroup hierarchy: from `/proc/self/mountinfo` (which
//! hierarchy is mounted where, with which controllers) and `/proc/self/cgroup` (cidboot's
//! path in each).

use std::path::{Path, PathBuf};

/// cidboot's own cgroup directory in each hierarchy the limits can use.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Mounts {
    /// In the unified (v2) hierarchy.
    pub v2: Option<PathBuf>,
    /// In the v1 memory hierarchy.
    pub memory: Option<PathBuf>,
    /// In the v1 pids hierarchy.
    pub pids: Option<PathBuf>,
    /// In the v1 cpu hierarchy.
    pub cpu: Option<PathBuf>,
}

/// `mountpoint` + `path` less the mount's `root` (a cgroup namespace's view).
fn join(mountpoint: &str, root: &str, path: &str) -> PathBuf {
    let rel = path
        .strip_prefix(root)
        .filter(|_| root != "/")
        .unwrap_or(path)
        .trim_start_matches('/');
    let base = Path::new(mountpoint);
    if rel.is_empty() {
        base.to_path_buf()
    } else {
        base.join(rel)
    }
}

impl Mounts {
    /// Parses the two texts; the first mount of each hierarchy counts.
    pub fn parse(mountinfo: &str, own: &str) -> Mounts {
        // "N:controllers:path", "0::path" for v2.
        let own: Vec<(&str, &str)> = own
            .lines()
            .filter_map(|l| {
                let mut it = l.splitn(3, ':');
                let _ = it.next()?;
                Some((it.next()?, it.next()?))
            })
            .collect();
        let own_path = |controller: Option<&str>| {
            own.iter().find_map(|(ctrls, path)| match controller {
                None => ctrls.is_empty().then_some(*path),
                Some(c) => ctrls.split(',').any(|x| x == c).then_some(*path),
            })
        };
        let mut m = Mounts::default();
        for line in mountinfo.lines() {
            let Some((pre, post)) = line.split_once(" - ") else {
                continue;
            };
            let pre: Vec<&str> = pre.split(' ').collect();
            let post: Vec<&str> = post.split(' ').collect();
            let (Some(root), Some(mountpoint), Some(fstype)) =
                (pre.get(3), pre.get(4), post.first())
            else {
                continue;
            };
            let mountpoint = crate::launch::mounts::unescape(mountpoint);
            match *fstype {
                "cgroup2" if m.v2.is_none() => {
                    m.v2 = own_path(None).map(|p| join(&mountpoint, root, p));
                }
                "cgroup" => {
                    let opts: Vec<&str> = post
                        .get(2)
                        .map(|o| o.split(',').collect())
                        .unwrap_or_default();
                    for (c, slot) in [
                        ("memory", &mut m.memory),
                        ("pids", &mut m.pids),
                        ("cpu", &mut m.cpu),
                    ] {
                        if slot.is_none() && opts.contains(&c) {
                            *slot = own_path(Some(c)).map(|p| join(&mountpoint, root, p));
                        }
                    }
                }
                _ => {}
            }
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hybrid_host_has_v1_controllers_and_an_empty_unified_hierarchy() {
        let mountinfo = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        let own = "9:name=systemd:/
8:pids:/
4:memory:/process_api/a8
1:cpu,cpuacct:/
0::/
";
        assert_eq!(
            Mounts::parse(mountinfo, own),
            Mounts {
                v2: Some("/sys/fs/cgroup/unified".into()),
                memory: Some("/sys/fs/cgroup/memory/process_api/a8".into()),
                pids: Some("/sys/fs/cgroup/pids".into()),
                cpu: Some("/sys/fs/cgroup/cpu,cpuacct".into()),
            }
        );
    }

    #[test]
    fn a_v2_host_in_a_cgroup_namespace() {
        let mountinfo =
            "30 24 0:26 /user.slice /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        let own = "0::/user.slice/run.scope\n";
        let m = Mounts::parse(mountinfo, own);
        assert_eq!(m.v2, Some("/sys/fs/cgroup/run.scope".into()));
        assert_eq!((m.memory, m.pids, m.cpu), (None, None, None));
    }
}
