//! The egress allowlist: `host:port` patterns, denying everything else.

use std::net::IpAddr;

/// One pattern: `host:port`, where host is exact, `*.domain` (any subdomain, not the domain
/// itself), or an IP literal (`[v6]` in brackets); port is a number or `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    host: HostPat,
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPat {
    Exact(String),
    Suffix(String),
    Ip(IpAddr),
}

/// The egress proxy's allowlist: a target passes only if one pattern matches it.
#[derive(Debug, Clone, Default)]
pub struct Allowlist {
    patterns: Vec<Pattern>,
}

/// A malformed pattern, refused when the allowlist is built rather than left to allow nothing.
#[derive(Debug, thiserror::Error)]
#[error("allowlist pattern {pattern:?}: {reason}")]
pub struct PatternError {
    /// The pattern as written.
    pub pattern: String,
    /// What is wrong with it, and how to write it instead where that is known.
    pub reason: String,
}

/// Why a target was allowed or denied, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed; which pattern matched.
    Allow(String),
    /// Denied; why.
    Deny(String),
}

fn normalize(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

fn split_host_port(s: &str) -> Option<(&str, &str)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest.split_once("]:")?;
        return Some((h, p));
    }
    s.rsplit_once(':')
}

impl Allowlist {
    /// Parses every pattern, refusing the first that is malformed (URLs, paths, misplaced
    /// wildcards, bad ports).
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Allowlist, PatternError> {
        let mut out = Vec::new();
        for p in patterns {
            let p = p.as_ref();
            let bad = |reason: &str| PatternError {
                pattern: p.to_string(),
                reason: reason.to_string(),
            };
            // A URL never matches a target (the proxy sees only host and port): refuse it
            // rather than accept a pattern that silently allows nothing.
            if let Some((scheme, rest)) = p.split_once("://") {
                let hint = rest.split('/').next().unwrap_or(rest);
                return Err(bad(&format!(
                    "a pattern is host:port, without a scheme ({scheme}://) or path: write {hint:?}"
                )));
            }
            if p.contains('/') {
                return Err(bad("a pattern is host:port, without a path"));
            }
            let (host, port) = split_host_port(p).ok_or_else(|| bad("not host:port"))?;
            let port = match port {
                "*" => None,
                n => Some(
                    n.parse::<u16>()
                        .map_err(|_| bad("port is not a number or *"))?,
                ),
            };
            let host = if let Ok(ip) = host.parse::<IpAddr>() {
                HostPat::Ip(ip)
            } else if let Some(suffix) = host.strip_prefix("*.") {
                if suffix.is_empty() || suffix.contains('*') {
                    return Err(bad("a wildcard must be a leading *. before a domain"));
                }
                HostPat::Suffix(normalize(suffix))
            } else {
                if host.is_empty() || host.contains('*') {
                    return Err(bad("a wildcard must be a leading *. before a domain"));
                }
                HostPat::Exact(normalize(host))
            };
            out.push(Pattern { host, port });
        }
        Ok(Allowlist { patterns: out })
    }

    /// Whether no pattern is set, so that every target is denied.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Decides on `host:port`. IP literals pass only if an IP pattern names them: a wildcard
    /// never matches an address.
    pub fn check(&self, host: &str, port: u16) -> Decision {
        let host_n = normalize(host.trim_start_matches('[').trim_end_matches(']'));
        if host_n.is_empty()
            || !host_n
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:_".contains(&b))
        {
            return Decision::Deny(format!("{host:?} is not a valid host name"));
        }
        let ip = host_n.parse::<IpAddr>().ok();
        for p in &self.patterns {
            if p.port.is_some_and(|pp| pp != port) {
                continue;
            }
            let hit = match (&p.host, ip) {
                (HostPat::Ip(a), Some(b)) => *a == b,
                (HostPat::Ip(_), None) | (_, Some(_)) => false,
                (HostPat::Exact(h), None) => *h == host_n,
                (HostPat::Suffix(s), None) => {
                    host_n.len() > s.len() + 1
                        && host_n.ends_with(s.as_str())
                        && host_n.as_bytes()[host_n.len() - s.len() - 1] == b'.'
                }
            };
            if hit {
                return Decision::Allow(format!("matches {}", describe(p)));
            }
        }
        if ip.is_some() {
            Decision::Deny(format!(
                "{host_n}:{port}: IP literals are refused unless listed"
            ))
        } else {
            Decision::Deny(format!("{host_n}:{port} matches no allowlist pattern"))
        }
    }
}

fn describe(p: &Pattern) -> String {
    let host = match &p.host {
        HostPat::Exact(h) => h.clone(),
        HostPat::Suffix(s) => format!("*.{s}"),
        HostPat::Ip(ip @ IpAddr::V6(_)) => format!("[{ip}]"),
        HostPat::Ip(ip) => ip.to_string(),
    };
    match p.port {
        Some(n) => format!("{host}:{n}"),
        None => format!("{host}:*"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decides() {
        let a = Allowlist::new(&[
            "*.ipfs.io:443",
            "trustless-gateway.link:443",
            "10.1.2.3:8443",
            "[::1]:*",
        ])
        .unwrap();
        assert!(matches!(a.check("dweb.ipfs.io", 443), Decision::Allow(_)));
        assert!(matches!(a.check("A.B.IPFS.IO.", 443), Decision::Allow(_)));
        assert!(
            matches!(a.check("ipfs.io", 443), Decision::Deny(_)),
            "the apex is not a subdomain"
        );
        assert!(matches!(a.check("evilipfs.io", 443), Decision::Deny(_)));
        assert!(matches!(
            a.check("trustless-gateway.link", 80),
            Decision::Deny(_)
        ));
        assert!(matches!(a.check("10.1.2.3", 8443), Decision::Allow(_)));
        assert!(
            matches!(a.check("10.1.2.4", 8443), Decision::Deny(d) if d.contains("IP literals"))
        );
        assert!(matches!(a.check("::1", 9), Decision::Allow(_)));
        assert!(matches!(a.check("bad host", 443), Decision::Deny(_)));
        assert!(Allowlist::new(&["*:443"]).is_err());
        assert!(Allowlist::new(&["a.*.com:443"]).is_err());
        assert!(Allowlist::new(&["nohost"]).is_err());
        let e = Allowlist::new(&["https://ipfs.io:443"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("without a scheme") && e.contains("\"ipfs.io:443\""),
            "{e}"
        );
        assert!(Allowlist::new(&["ipfs.io/ipfs:443"]).is_err());
    }
}
