//! The resolver's messages (RFC 1035): one question in, one answer out. Written by hand
//! because only this much is read: the 12-byte header and one question whose name has no
//! compression, every length checked against what remains; everything else is refused.

use std::net::Ipv4Addr;

/// Largest query read (UDP without EDNS; over TCP the same cap applies).
pub const MAX_QUERY: usize = 512;
/// Seconds a client may keep an answer: the addresses never change within a boot.
pub const TTL: u32 = 300;

const TYPE_A: u16 = 1;
const TYPE_ANY: u16 = 255;
const CLASS_IN: u16 = 1;

/// Response codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rcode {
    /// The name exists (with or without an answer of the type asked).
    NoError = 0,
    /// The query could not be read.
    FormErr = 1,
    /// The resolver could not answer (no address left to hand out).
    ServFail = 2,
    /// The name is not on the allowlist.
    NxDomain = 3,
    /// Not a standard query.
    NotImp = 4,
    /// Not class IN, or over the rate.
    Refused = 5,
}

/// A query's question, as far as the resolver reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    /// The query's id, echoed.
    pub id: u16,
    /// The name, lower-cased, without the trailing dot; labels of host-name bytes only
    /// (others make `None`, answered NXDOMAIN).
    pub name: Option<String>,
    /// QTYPE.
    pub qtype: u16,
    /// QCLASS.
    pub qclass: u16,
    /// Whether recursion was desired (echoed).
    rd: bool,
    /// The question's bytes, echoed in the answer.
    raw: Vec<u8>,
}

/// Why a query was not read: the id to answer with, if the header was there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unreadable {
    /// The id, if at least the header came.
    pub id: Option<u16>,
    /// What to answer.
    pub rcode: Rcode,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Reads a query.
pub fn parse(q: &[u8]) -> Result<Question, Unreadable> {
    let id = be16(q, 0).ok_or(Unreadable {
        id: None,
        rcode: Rcode::FormErr,
    })?;
    let bad = |rcode| Unreadable {
        id: Some(id),
        rcode,
    };
    if q.len() < 12 || q.len() > MAX_QUERY {
        return Err(bad(Rcode::FormErr));
    }
    let flags = be16(q, 2).ok_or(bad(Rcode::FormErr))?;
    if flags & 0x8000 != 0 {
        // A response: never answered (no loops between resolvers).
        return Err(Unreadable {
            id: None,
            rcode: Rcode::FormErr,
        });
    }
    if (flags >> 11) & 0xf != 0 {
        return Err(bad(Rcode::NotImp));
    }
    if be16(q, 4) != Some(1) || be16(q, 6) != Some(0) || be16(q, 8) != Some(0) {
        return Err(bad(Rcode::FormErr));
    }
    let mut at = 12;
    let mut labels: Vec<String> = Vec::new();
    let mut plain = true;
    let mut total = 0usize;
    loop {
        let len = usize::from(*q.get(at).ok_or(bad(Rcode::FormErr))?);
        at += 1;
        if len == 0 {
            break;
        }
        // 0xC0: a compression pointer, 0x40/0x80: reserved label types; none in a question.
        if len > 63 {
            return Err(bad(Rcode::FormErr));
        }
        total += len + 1;
        if total > 255 {
            return Err(bad(Rcode::FormErr));
        }
        let label = q.get(at..at + len).ok_or(bad(Rcode::FormErr))?;
        at += len;
        plain &= label
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_');
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
    }
    let qtype = be16(q, at).ok_or(bad(Rcode::FormErr))?;
    let qclass = be16(q, at + 2).ok_or(bad(Rcode::FormErr))?;
    let raw = q.get(12..at + 4).ok_or(bad(Rcode::FormErr))?.to_vec();
    Ok(Question {
        id,
        name: (plain && !labels.is_empty()).then(|| labels.join(".")),
        qtype,
        qclass,
        rd: flags & 0x0100 != 0,
        raw,
    })
}

impl Question {
    /// Whether an A answer fits the question (A or ANY).
    pub fn wants_a(&self) -> bool {
        self.qtype == TYPE_A || self.qtype == TYPE_ANY
    }

    /// Whether the class is IN.
    pub fn is_in(&self) -> bool {
        self.qclass == CLASS_IN
    }

    /// The answer: `rcode`, and `addr` as the one A record when given.
    pub fn answer(&self, rcode: Rcode, addr: Option<Ipv4Addr>) -> Vec<u8> {
        let mut m = Vec::with_capacity(12 + self.raw.len() + 16);
        m.extend_from_slice(&self.id.to_be_bytes());
        // QR, AA, RD as asked, RA; the code.
        let flags: u16 = 0x8000 | 0x0400 | if self.rd { 0x0100 } else { 0 } | 0x0080 | rcode as u16;
        m.extend_from_slice(&flags.to_be_bytes());
        m.extend_from_slice(&1u16.to_be_bytes());
        m.extend_from_slice(&u16::from(addr.is_some()).to_be_bytes());
        m.extend_from_slice(&[0, 0, 0, 0]);
        m.extend_from_slice(&self.raw);
        if let Some(a) = addr {
            // The question's name (a pointer to offset 12), A, IN, the TTL, 4 bytes.
            m.extend_from_slice(&[0xc0, 12]);
            m.extend_from_slice(&TYPE_A.to_be_bytes());
            m.extend_from_slice(&CLASS_IN.to_be_bytes());
            m.extend_from_slice(&TTL.to_be_bytes());
            m.extend_from_slice(&4u16.to_be_bytes());
            m.extend_from_slice(&a.octets());
        }
        m
    }
}

/// The answer to a query that could not be read: a header alone with the code.
pub fn refusal(id: u16, rcode: Rcode) -> Vec<u8> {
    let mut m = id.to_be_bytes().to_vec();
    m.extend_from_slice(&(0x8000u16 | 0x0080 | rcode as u16).to_be_bytes());
    m.extend_from_slice(&[0; 8]);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
        let mut q = id.to_be_bytes().to_vec();
        q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        for l in name.split('.') {
            q.push(u8::try_from(l.len()).unwrap());
            q.extend_from_slice(l.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&1u16.to_be_bytes());
        q
    }

    #[test]
    fn reads_a_question_and_answers_it() {
        let q = parse(&query(7, "Redis.Test", 1)).unwrap();
        assert_eq!(q.name.as_deref(), Some("redis.test"));
        assert!(q.wants_a() && q.is_in());
        let a = q.answer(Rcode::NoError, Some(Ipv4Addr::new(198, 18, 0, 1)));
        assert_eq!(&a[..4], &[0, 7, 0x85, 0x80]);
        assert_eq!(&a[6..8], &[0, 1], "one answer");
        assert_eq!(&a[a.len() - 4..], &[198, 18, 0, 1]);
        let nx = q.answer(Rcode::NxDomain, None);
        assert_eq!(nx[3] & 0xf, 3);
        assert_eq!(&nx[6..8], &[0, 0]);
    }

    #[test]
    fn refuses_what_it_does_not_read() {
        assert_eq!(parse(&[1]).unwrap_err().id, None);
        let mut q = query(9, "a.test", 1);
        q[2] |= 0x80; // a response
        assert_eq!(parse(&q).unwrap_err().id, None);
        let mut q = query(9, "a.test", 1);
        q[2] |= 0x10; // opcode 2
        assert_eq!(parse(&q).unwrap_err().rcode, Rcode::NotImp);
        let mut q = query(9, "a.test", 1);
        q[12] = 0xc0; // a compression pointer in the question
        assert_eq!(parse(&q).unwrap_err().rcode, Rcode::FormErr);
        let q = query(9, "a.test", 1);
        assert_eq!(
            parse(&q[..q.len() - 1]).unwrap_err(),
            Unreadable {
                id: Some(9),
                rcode: Rcode::FormErr
            }
        );
        assert_eq!(
            parse(&vec![0; MAX_QUERY + 1]).unwrap_err().rcode,
            Rcode::FormErr
        );
        let odd = parse(&query(3, "a b.test", 1)).unwrap();
        assert_eq!(odd.name, None, "not a host name");
        assert_eq!(refusal(3, Rcode::Refused)[3], 0x85);
    }
}
