//! The addresses the resolver hands out: one per allowlisted name, from a range no real host
//! uses (198.18.0.0/15, RFC 2544's benchmarking block), kept for the whole boot so that a
//! connection to one is mapped back to exactly the name that was asked.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Mutex;

/// The range the resolver's addresses come from.
pub const FAKE_NET: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 0);
/// Its prefix length.
pub const FAKE_LEN: u8 = 15;
/// The first offset handed out: the network's own address is never one.
const FIRST: u32 = 1;

/// The name ↔ address map, capped at `max` names.
pub struct Names {
    max: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    by_name: HashMap<String, Ipv4Addr>,
    names: Vec<String>,
}

/// Whether `ip` is in the resolver's range.
pub fn is_fake(ip: Ipv4Addr) -> bool {
    crate::relay::allow::in_cidr(ip.into(), FAKE_NET.into(), FAKE_LEN)
}

impl Names {
    /// An empty map that takes at most `max` names (and never more than the range holds).
    pub fn new(max: usize) -> Names {
        let room = (1usize << (32 - FAKE_LEN)) - 2;
        Names {
            max: max.min(room),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// The address of `name` (already normalized), given it one if it has none; `None` when
    /// the map is full.
    pub fn address_of(&self, name: &str) -> Option<Ipv4Addr> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(a) = g.by_name.get(name) {
            return Some(*a);
        }
        if g.names.len() >= self.max {
            return None;
        }
        let offset = u32::try_from(g.names.len()).ok()?.checked_add(FIRST)?;
        let a = Ipv4Addr::from(u32::from(FAKE_NET).checked_add(offset)?);
        g.names.push(name.to_string());
        g.by_name.insert(name.to_string(), a);
        Some(a)
    }

    /// The name `ip` was handed out for, if it was.
    pub fn name_of(&self, ip: Ipv4Addr) -> Option<String> {
        if !is_fake(ip) {
            return None;
        }
        let offset = u32::from(ip)
            .checked_sub(u32::from(FAKE_NET))?
            .checked_sub(FIRST)?;
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.names.get(usize::try_from(offset).ok()?).cloned()
    }

    /// How many names have an address.
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .names
            .len()
    }

    /// Whether no name has an address yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_keep_their_address_and_map_back() {
        let n = Names::new(2);
        let a = n.address_of("a.test").unwrap();
        let b = n.address_of("b.test").unwrap();
        assert_eq!(a, Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(b, Ipv4Addr::new(198, 18, 0, 2));
        assert_eq!(n.address_of("a.test"), Some(a));
        assert_eq!(n.address_of("c.test"), None, "over the cap");
        assert_eq!(n.name_of(b).as_deref(), Some("b.test"));
        assert_eq!(n.name_of(Ipv4Addr::new(198, 18, 0, 3)), None);
        assert_eq!(n.name_of(Ipv4Addr::new(198, 18, 0, 0)), None);
        assert_eq!(n.name_of(Ipv4Addr::new(10, 0, 0, 1)), None);
        assert!(is_fake(Ipv4Addr::new(198, 19, 255, 255)));
        assert!(!is_fake(Ipv4Addr::new(198, 20, 0, 0)));
    }
}
