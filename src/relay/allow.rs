//! The egress allowlist: `host:port` patterns, denying everything else.

use std::net::IpAddr;

/// One pattern: `host:port`, where host is exact, `*.domain` (any subdomain, not the domain
/// itself), an IP literal (`[v6]` in brackets) or a CIDR block (`10.0.0.0/8`,
/// `[fd00::/8]`); port is a number or `*`.
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
    /// A network and its prefix length, with the host bits zero.
    Cidr(IpAddr, u8),
}

/// Whether `ip` is inside `net/len`.
pub fn in_cidr(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// Parses `ADDR/LEN` with the host bits of ADDR zero, so that a block means what it says.
fn parse_cidr(s: &str) -> Result<(IpAddr, u8), &'static str> {
    let (a, l) = s.split_once('/').ok_or("not a CIDR block")?;
    let ip: IpAddr = a.parse().map_err(|_| "not a CIDR block")?;
    let len: u8 = l.parse().map_err(|_| "the prefix length is not a number")?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if len > max {
        return Err("the prefix length is longer than the address");
    }
    if !is_network(ip, len) {
        return Err("the address has bits set past the prefix length");
    }
    Ok((ip, len))
}

fn is_network(ip: IpAddr, len: u8) -> bool {
    match ip {
        IpAddr::V4(a) => {
            let host = u32::MAX.checked_shr(u32::from(len)).unwrap_or(0);
            u32::from(a) & host == 0
        }
        IpAddr::V6(a) => {
            let host = u128::MAX.checked_shr(u32::from(len)).unwrap_or(0);
            u128::from(a) & host == 0
        }
    }
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
            let cidr = split_host_port(p)
                .filter(|(h, _)| h.contains('/'))
                .filter(|(h, _)| {
                    h.split_once('/')
                        .is_some_and(|(a, _)| a.parse::<IpAddr>().is_ok())
                });
            if p.contains('/') && cidr.is_none() {
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
            let host = if cidr.is_some() {
                let (net, len) = parse_cidr(host).map_err(bad)?;
                HostPat::Cidr(net, len)
            } else if let Ok(ip) = host.parse::<IpAddr>() {
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

    /// Whether some pattern names `host` on some port: the resolver of transparent egress
    /// answers such a name, and the connection's port is checked when it is made.
    pub fn names(&self, host: &str) -> bool {
        let host_n = normalize(host);
        if host_n.parse::<IpAddr>().is_ok() {
            return false;
        }
        self.patterns.iter().any(|p| match &p.host {
            HostPat::Exact(h) => *h == host_n,
            HostPat::Suffix(s) => is_subdomain(&host_n, s),
            HostPat::Ip(_) | HostPat::Cidr(..) => false,
        })
    }

    /// The numbered ports of the patterns, and whether any pattern has the port `*`.
    pub fn ports(&self) -> (std::collections::BTreeSet<u16>, bool) {
        let set = self.patterns.iter().filter_map(|p| p.port).collect();
        (set, self.patterns.iter().any(|p| p.port.is_none()))
    }

    /// The IPv4 literals and blocks of the patterns, as networks and prefix lengths.
    pub fn v4_networks(&self) -> Vec<(std::net::Ipv4Addr, u8)> {
        self.patterns
            .iter()
            .filter_map(|p| match p.host {
                HostPat::Ip(IpAddr::V4(a)) => Some((a, 32)),
                HostPat::Cidr(IpAddr::V4(a), len) => Some((a, len)),
                _ => None,
            })
            .collect()
    }

    /// The patterns as they are matched, for the logs and the status.
    pub fn describe(&self) -> Vec<String> {
        self.patterns.iter().map(describe).collect()
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
                (HostPat::Cidr(net, len), Some(b)) => in_cidr(b, *net, *len),
                (HostPat::Ip(_) | HostPat::Cidr(..), None) | (_, Some(_)) => false,
                (HostPat::Exact(h), None) => *h == host_n,
                (HostPat::Suffix(s), None) => is_subdomain(&host_n, s),
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

fn is_subdomain(host: &str, suffix: &str) -> bool {
    host.len() > suffix.len() + 1
        && host.ends_with(suffix)
        && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
}

fn describe(p: &Pattern) -> String {
    let host = match &p.host {
        HostPat::Exact(h) => h.clone(),
        HostPat::Suffix(s) => format!("*.{s}"),
        HostPat::Ip(ip @ IpAddr::V6(_)) => format!("[{ip}]"),
        HostPat::Ip(ip) => ip.to_string(),
        HostPat::Cidr(ip @ IpAddr::V6(_), len) => format!("[{ip}/{len}]"),
        HostPat::Cidr(ip, len) => format!("{ip}/{len}"),
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

    #[test]
    fn cidr_blocks_match_the_addresses_inside_them() {
        let a = Allowlist::new(&["10.0.0.0/8:5432", "[fd00::/8]:443", "192.0.2.7/32:*"]).unwrap();
        assert!(
            matches!(a.check("10.200.3.4", 5432), Decision::Allow(d) if d.contains("10.0.0.0/8:5432"))
        );
        assert!(matches!(a.check("11.0.0.1", 5432), Decision::Deny(_)));
        assert!(matches!(a.check("10.0.0.1", 5433), Decision::Deny(_)));
        assert!(matches!(a.check("fd12::1", 443), Decision::Allow(_)));
        assert!(matches!(a.check("fe80::1", 443), Decision::Deny(_)));
        assert!(matches!(a.check("192.0.2.7", 1), Decision::Allow(_)));
        assert!(matches!(a.check("192.0.2.8", 1), Decision::Deny(_)));
        assert_eq!(a.v4_networks().len(), 2);
        for bad in [
            "10.0.0.1/8:5432",
            "10.0.0.0/33:1",
            "10.0.0.0/x:1",
            "[fd00::1/8]:1",
        ] {
            assert!(Allowlist::new(&[bad]).is_err(), "{bad}");
        }
        let e = Allowlist::new(&["10.0.0.1/8:5432"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("bits set past the prefix"), "{e}");
    }

    #[test]
    fn names_are_known_whatever_their_port() {
        let a = Allowlist::new(&["*.example.com:443", "db.internal:5432", "10.0.0.0/8:1"]).unwrap();
        assert!(a.names("api.example.com"));
        assert!(a.names("DB.Internal."));
        assert!(!a.names("example.com"));
        assert!(!a.names("10.1.1.1"));
        assert!(!a.names("other.test"));
        let (ports, any) = a.ports();
        assert_eq!(ports.into_iter().collect::<Vec<_>>(), [1, 443, 5432]);
        assert!(!any);
    }
}
