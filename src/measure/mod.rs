//! What cidboot is about to run, as an ordered event log that replays to PCR16.
//!
//! The encoding is specified byte for byte in docs/attestation.md so that a verifier can
//! recompute PCR16 from an image and a configuration without cidboot.

use serde::Serialize;
use sha2::{Digest, Sha384};

/// Prefix of every event digest: names the scheme and its version.
pub const DOMAIN: &[u8] = b"cidboot-pcr16-v1\0";
/// The PCR cidboot extends.
pub const PCR_INDEX: u16 = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    ImageReference = 1,
    RootCid = 2,
    ManifestDigest = 3,
    ConfigDigest = 4,
    Helper = 5,
    RuntimeConfig = 6,
}

/// One measured event.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub kind: Kind,
    /// Human-readable value (the CID is shown in its string form).
    pub value: String,
    /// The bytes that are hashed, hex.
    pub data: String,
    /// SHA-384 of the encoded event, hex: what is passed to ExtendPCR.
    pub digest: String,
}

impl Event {
    fn new(kind: Kind, value: String, data: Vec<u8>) -> Event {
        let digest = event_digest(kind, &data);
        Event {
            kind,
            value,
            data: hex::encode(&data),
            digest: hex::encode(digest),
        }
    }

    pub fn digest_bytes(&self) -> Vec<u8> {
        hex::decode(&self.digest).unwrap_or_default()
    }
}

/// `SHA-384(DOMAIN || kind || u32be(len(data)) || data)`.
pub fn event_digest(kind: Kind, data: &[u8]) -> [u8; 48] {
    let mut h = Sha384::new();
    h.update(DOMAIN);
    h.update([kind as u8]);
    h.update((data.len() as u32).to_be_bytes());
    h.update(data);
    h.finalize().into()
}

/// Everything measured for one boot, in extension order.
#[derive(Debug, Clone, Serialize)]
pub struct EventLog {
    pub version: u32,
    pub pcr: u16,
    pub events: Vec<Event>,
    /// PCR16 after every event, from 48 zero bytes, hex.
    pub pcr16: String,
}

/// The inputs of a measurement.
pub struct Inputs<'a> {
    pub reference: &'a str,
    pub root_cid: &'a cid::Cid,
    pub manifest_digest: &'a str,
    pub config_digest: &'a str,
    /// `(name, sha256:<hex>)`, in any order: they are measured sorted by name.
    pub helpers: Vec<(String, String)>,
    /// `sha256:<hex>` of the exact runtime configuration bytes.
    pub runtime_config_digest: &'a str,
}

impl EventLog {
    pub fn new(i: Inputs<'_>) -> EventLog {
        let mut events = vec![
            Event::new(
                Kind::ImageReference,
                i.reference.into(),
                i.reference.as_bytes().to_vec(),
            ),
            Event::new(Kind::RootCid, i.root_cid.to_string(), i.root_cid.to_bytes()),
            Event::new(
                Kind::ManifestDigest,
                i.manifest_digest.into(),
                i.manifest_digest.as_bytes().to_vec(),
            ),
            Event::new(
                Kind::ConfigDigest,
                i.config_digest.into(),
                i.config_digest.as_bytes().to_vec(),
            ),
        ];
        let mut helpers = i.helpers;
        helpers.sort();
        for (name, digest) in helpers {
            let mut data = name.as_bytes().to_vec();
            data.push(0);
            data.extend_from_slice(digest.as_bytes());
            events.push(Event::new(Kind::Helper, format!("{name} {digest}"), data));
        }
        events.push(Event::new(
            Kind::RuntimeConfig,
            i.runtime_config_digest.into(),
            i.runtime_config_digest.as_bytes().to_vec(),
        ));
        let pcr16 = hex::encode(replay(events.iter().map(|e| e.digest_bytes())));
        EventLog {
            version: 1,
            pcr: PCR_INDEX,
            events,
            pcr16,
        }
    }
}

/// Replays extensions from 48 zero bytes: `PCR = SHA-384(PCR || data)`.
pub fn replay<I: IntoIterator<Item = Vec<u8>>>(datas: I) -> [u8; 48] {
    let mut pcr = [0u8; 48];
    for d in datas {
        let mut h = Sha384::new();
        h.update(pcr);
        h.update(&d);
        pcr = h.finalize().into();
    }
    pcr
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answer() {
        // SHA-384 of 48 zero bytes followed by "x": the NSM's own extend rule.
        let pcr = replay([b"x".to_vec()]);
        let mut h = Sha384::new();
        h.update([0u8; 48]);
        h.update(b"x");
        assert_eq!(pcr.as_slice(), h.finalize().as_slice());
    }

    #[test]
    fn helpers_are_order_independent_and_everything_counts() {
        let cid = crate::reference::raw_cid(b"img");
        let mk = |helpers: Vec<(String, String)>, cfg: &str| {
            EventLog::new(Inputs {
                reference: "ipfs://x",
                root_cid: &cid,
                manifest_digest: "sha256:m",
                config_digest: "sha256:c",
                helpers,
                runtime_config_digest: cfg,
            })
            .pcr16
        };
        let a = ("a".to_string(), "sha256:1".to_string());
        let b = ("b".to_string(), "sha256:2".to_string());
        assert_eq!(
            mk(vec![a.clone(), b.clone()], "sha256:r"),
            mk(vec![b.clone(), a.clone()], "sha256:r")
        );
        assert_ne!(mk(vec![a.clone()], "sha256:r"), mk(vec![a, b], "sha256:r"));
        assert_ne!(mk(vec![], "sha256:r"), mk(vec![], "sha256:s"));
    }
}
