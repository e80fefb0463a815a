//! The image's `User`, resolved from the image's own /etc/passwd and /etc/group.

use crate::apply::fs::Root;
use crate::apply::path::RelPath;

use super::LaunchError;

/// Largest /etc/passwd or /etc/group read.
pub const MAX_DB_SIZE: u64 = 4 << 20;
/// Supplementary groups kept (Linux's NGROUPS_MAX is 65536; real users have a handful).
pub const MAX_GROUPS: usize = 256;

/// A user and its groups, resolved against the image's own /etc/passwd and /etc/group.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Identity {
    /// User id the process runs as.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups, primary gid first.
    pub groups: Vec<u32>,
    /// The user's name, when the image's /etc/passwd knows it.
    pub name: Option<String>,
    /// The user's home directory from /etc/passwd, which becomes `HOME` when the environment has
    /// none.
    pub home: Option<String>,
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

fn read_db(root: &Root, path: &str) -> Result<Option<String>, LaunchError> {
    let rel = RelPath::parse(path.trim_start_matches('/').as_bytes(), 64, 4)?;
    let bytes = root.read_file(&rel, MAX_DB_SIZE)?;
    Ok(bytes.map(|b| String::from_utf8_lossy(&b).into_owned()))
}

fn passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 7 {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f[5].to_string(),
            })
        })
        .collect()
}

fn groups(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 {
                return None;
            }
            Some(GroupEntry {
                name: f[0].to_string(),
                gid: f[2].parse().ok()?,
                members: f[3]
                    .split(',')
                    .filter(|m| !m.is_empty())
                    .map(String::from)
                    .collect(),
            })
        })
        .collect()
}

/// Resolves `uid`, `uid:gid`, `name`, `name:group` (and mixes) as Docker and containerd do:
/// a numeric uid need not exist in /etc/passwd (its gid is then 0 unless given); a name must.
pub fn resolve(root: &Root, spec: &str) -> Result<Identity, LaunchError> {
    let bad = |reason: String| LaunchError::User {
        user: spec.to_string(),
        reason,
    };
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user.is_empty() && group.is_none() {
        return Ok(Identity {
            uid: 0,
            gid: 0,
            groups: vec![0],
            name: Some("root".into()),
            home: Some("/root".into()),
        });
    }
    let pw_text = read_db(root, "etc/passwd")?;
    let pw = pw_text.as_deref().map(passwd).unwrap_or_default();
    let (uid, mut gid, name, home) = if let Ok(uid) = user.parse::<u32>() {
        let e = pw.iter().find(|e| e.uid == uid);
        (
            uid,
            e.map(|e| e.gid).unwrap_or(0),
            e.map(|e| e.name.clone()),
            e.map(|e| e.home.clone()),
        )
    } else {
        if pw_text.is_none() {
            return Err(bad(
                "the image has no /etc/passwd to look the name up in".into()
            ));
        }
        let e = pw
            .iter()
            .find(|e| e.name == user)
            .ok_or_else(|| bad(format!("no user {user:?} in the image's /etc/passwd")))?;
        (e.uid, e.gid, Some(e.name.clone()), Some(e.home.clone()))
    };
    let gr_text = read_db(root, "etc/group")?;
    let gr = gr_text.as_deref().map(groups).unwrap_or_default();
    if let Some(g) = group {
        gid = if let Ok(n) = g.parse::<u32>() {
            n
        } else {
            if gr_text.is_none() {
                return Err(bad(
                    "the image has no /etc/group to look the group up in".into()
                ));
            }
            gr.iter()
                .find(|e| e.name == g)
                .map(|e| e.gid)
                .ok_or_else(|| bad(format!("no group {g:?} in the image's /etc/group")))?
        };
    }
    let mut all = vec![gid];
    if let Some(n) = &name {
        for e in gr.iter().filter(|e| e.members.iter().any(|m| m == n)) {
            if !all.contains(&e.gid) && all.len() < MAX_GROUPS {
                all.push(e.gid);
            }
        }
    }
    Ok(Identity {
        uid,
        gid,
        groups: all,
        name,
        home,
    })
}
