//! What cidboot is about to run, as an ordered event log that replays to PCR16.
//!
//! The encoding is specified byte for byte in docs/attestation.md so that a verifier can
//! recompute PCR16 from an image and a configuration without cidboot.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha384};

/// Prefix of every event digest: names the scheme and its version.
pub const DOMAIN: &[u8] = b"cidboot-pcr16-v1\0";
/// The PCR cidboot extends.
pub const PCR_INDEX: u16 = 16;

/// What an event measures; the number is hashed into the event (docs/attestation.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// The image reference as given, canonical (`ipfs://<CID>`).
    ImageReference = 1,
    /// The root CID, its binary form.
    RootCid = 2,
    /// The manifest digest that was applied.
    ManifestDigest = 3,
    /// The image config digest.
    ConfigDigest = 4,
    /// One helper: name and sha256.
    Helper = 5,
    /// The runtime configuration's sha256.
    RuntimeConfig = 6,
    /// One dependency image helpers came from.
    HelperImage = 7,
    /// The key name that opens the image's encrypted layers, and those layers' digests.
    EncryptedLayers = 8,
}

/// One measured event.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// What it measures.
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

    /// The digest to extend PCR16 with, for an event this process built with
    /// [`EventLog::new`]. A log from elsewhere is checked with [`check_log`] instead.
    pub fn digest_bytes(&self) -> Vec<u8> {
        hex::decode(&self.digest).unwrap_or_default()
    }
}

/// `SHA-384(DOMAIN || kind || u32be(len(data)) || data)`.
pub fn event_digest(kind: Kind, data: &[u8]) -> [u8; 48] {
    let mut h = Sha384::new();
    h.update(DOMAIN);
    h.update([kind as u8]);
    // Every event's data is bounded far below 4 GiB (digests, names, a CID, a reference).
    #[allow(clippy::cast_possible_truncation)]
    h.update((data.len() as u32).to_be_bytes());
    h.update(data);
    h.finalize().into()
}

/// Everything measured for one boot, in extension order.
#[derive(Debug, Clone, Serialize)]
pub struct EventLog {
    /// The log format's version (1).
    pub version: u32,
    /// The PCR extended (16).
    pub pcr: u16,
    /// The events, in extension order.
    pub events: Vec<Event>,
    /// PCR16 after every event, from 48 zero bytes, hex.
    pub pcr16: String,
}

/// A dependency image helpers came from, as measured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HelperImage {
    /// The canonical reference, `ipfs://<CID>`.
    pub reference: String,
    /// The digest the configuration pinned.
    pub pinned_digest: String,
    /// The manifest that was applied.
    pub manifest_digest: String,
    /// `(name, sha256:<hex>)` of every helper installed from it.
    pub helpers: Vec<(String, String)>,
}

/// The encrypted layers of an image, and the key that opens them, as measured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EncryptedLayers {
    /// The `[[secrets]]` name the configuration's `decryption_key` gives; empty for a key
    /// from outside the configuration (`cidboot run --decryption-key FILE`).
    pub key: String,
    /// `sha256:<hex>` of each encrypted layer blob, in manifest order.
    pub layers: Vec<String>,
}

impl EncryptedLayers {
    /// The event's data: the key name, then `0x00` and a digest per layer.
    fn data(&self) -> Vec<u8> {
        let mut parts = vec![self.key.as_bytes()];
        parts.extend(self.layers.iter().map(|l| l.as_bytes()));
        parts.join(&0u8)
    }

    /// The event's value: the key name (`-` for one from outside the configuration, which no
    /// `[[secrets]]` name can be), then the digests, space-separated.
    fn value(&self) -> String {
        let key = if self.key.is_empty() {
            "-"
        } else {
            self.key.as_str()
        };
        std::iter::once(key)
            .chain(self.layers.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The inputs of a measurement.
pub struct Inputs<'a> {
    /// The canonical image reference.
    pub reference: &'a str,
    /// The root CID resolved.
    pub root_cid: &'a cid::Cid,
    /// The manifest applied.
    pub manifest_digest: &'a str,
    /// The image config used.
    pub config_digest: &'a str,
    /// The image's encrypted layers and the key name that opens them; `None` for an image
    /// without encrypted layers, which then measures no such event.
    pub encrypted_layers: Option<EncryptedLayers>,
    /// `(name, sha256:<hex>)` of the boot image's pinned helpers, in any order: every helper
    /// (these and those of `helper_images`) is measured sorted by name.
    pub helpers: Vec<(String, String)>,
    /// Dependency images, in configuration order, with the helpers installed from each.
    pub helper_images: Vec<HelperImage>,
    /// `sha256:<hex>` of the exact runtime configuration bytes.
    pub runtime_config_digest: &'a str,
}

impl EventLog {
    /// The log of one boot: its events in the documented order, and the PCR16 they replay to.
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
        if let Some(e) = &i.encrypted_layers {
            events.push(Event::new(Kind::EncryptedLayers, e.value(), e.data()));
        }
        let mut helpers: Vec<(String, String, Option<String>)> =
            i.helpers.into_iter().map(|(n, d)| (n, d, None)).collect();
        for img in &i.helper_images {
            let data = [
                img.reference.as_bytes(),
                img.pinned_digest.as_bytes(),
                img.manifest_digest.as_bytes(),
            ]
            .join(&0u8);
            events.push(Event::new(
                Kind::HelperImage,
                format!(
                    "{} {} {}",
                    img.reference, img.pinned_digest, img.manifest_digest
                ),
                data,
            ));
            for (n, d) in &img.helpers {
                helpers.push((n.clone(), d.clone(), Some(img.manifest_digest.clone())));
            }
        }
        helpers.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        for (name, digest, from) in helpers {
            let mut parts = vec![name.as_bytes(), digest.as_bytes()];
            let mut value = format!("{name} {digest}");
            if let Some(m) = &from {
                parts.push(m.as_bytes());
                value = format!("{value} {m}");
            }
            events.push(Event::new(Kind::Helper, value, parts.join(&0u8)));
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

impl Kind {
    /// Every kind this version of the encoding defines.
    pub const ALL: [Kind; 8] = [
        Kind::ImageReference,
        Kind::RootCid,
        Kind::ManifestDigest,
        Kind::ConfigDigest,
        Kind::Helper,
        Kind::RuntimeConfig,
        Kind::HelperImage,
        Kind::EncryptedLayers,
    ];

    /// The name used in the JSON event log.
    pub fn name(self) -> &'static str {
        match self {
            Kind::ImageReference => "image-reference",
            Kind::RootCid => "root-cid",
            Kind::ManifestDigest => "manifest-digest",
            Kind::ConfigDigest => "config-digest",
            Kind::Helper => "helper",
            Kind::RuntimeConfig => "runtime-config",
            Kind::HelperImage => "helper-image",
            Kind::EncryptedLayers => "encrypted-layers",
        }
    }

    /// The kind a log names, if this version of the encoding defines it.
    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// Most `[[helpers.images]]` a configuration may list (each is one event).
pub const MAX_HELPER_IMAGES: usize = 16;
/// Most layers an image may have (the resolver's limit), so most digests an
/// `encrypted-layers` event may name.
pub const MAX_LAYERS: usize = 256;
/// Most events a log may hold: the five fixed ones, one for encrypted layers, one per helper
/// and one per helper image.
pub const MAX_EVENTS: usize = 5 + 1 + 256 + MAX_HELPER_IMAGES;
/// Largest event log accepted, in bytes (a log of [`MAX_EVENTS`] is under 200 KiB).
pub const MAX_LOG: usize = 1024 * 1024;

/// Why an event log was refused. Every variant that concerns one event names it, by its
/// position in the log (from 1) and its kind.
#[allow(missing_docs)] // each variant's message says what did not hold
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LogError {
    #[error("the event log is not the documented JSON: {0}")]
    Shape(String),
    #[error("event log version {0} is not supported (this verifier knows version 1)")]
    Version(String),
    #[error("the event log extends PCR{0}, not PCR{PCR_INDEX}")]
    Pcr(u64),
    #[error("the event log has {0} events, over the limit of {MAX_EVENTS}")]
    TooMany(usize),
    #[error("event {index}: unknown kind {kind:?}")]
    UnknownKind { index: usize, kind: String },
    #[error("event {index} ({kind}): {field} is not hex: {why}")]
    Hex {
        index: usize,
        kind: &'static str,
        field: &'static str,
        why: String,
    },
    #[error("event {index} ({kind}): digest {have} is not SHA-384 of its kind and data ({want})")]
    Digest {
        index: usize,
        kind: &'static str,
        have: String,
        want: String,
    },
    #[error("event {index} ({kind}): value {value:?} is not what its data encodes ({encoded:?})")]
    Value {
        index: usize,
        kind: &'static str,
        value: String,
        encoded: String,
    },
    #[error("event {index} ({kind}): data {why}")]
    Data {
        index: usize,
        kind: &'static str,
        why: String,
    },
    #[error("event {index} ({kind}): out of order: {why}")]
    Order {
        index: usize,
        kind: &'static str,
        why: String,
    },
    #[error("the event log ends without {0} event")]
    Missing(&'static str),
    #[error("pcr16: {0} is not hex of 48 bytes")]
    BadPcr(String),
    #[error("the event log claims PCR16 {claimed}, but its events replay to {replayed}")]
    Claimed { claimed: String, replayed: String },
    #[error("the event log replays to PCR16 {replayed}, but the document's PCR16 is {document}")]
    Document { replayed: String, document: String },
}

/// What a sound event log says was measured. Only [`check_log`] makes one, after the log has
/// been recomputed event by event and replayed to the document's PCR16.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Measured {
    /// `ipfs://<CID>`, as measured.
    pub reference: String,
    /// The root CID, as measured.
    #[serde(serialize_with = "cid_string")]
    pub cid: cid::Cid,
    /// The manifest digest, as measured.
    pub manifest_digest: String,
    /// The image config digest, as measured.
    pub config_digest: String,
    /// The encrypted layers and the key name that opened them; absent for an image without.
    pub encrypted_layers: Option<EncryptedLayers>,
    /// Helper name to `sha256:<hex>`.
    pub helpers: BTreeMap<String, String>,
    /// Helper name to the manifest digest of the dependency image it came from (absent for
    /// the boot image's own pinned helpers).
    pub helper_sources: BTreeMap<String, String>,
    /// The dependency images, in the order measured.
    pub helper_images: Vec<HelperImage>,
    /// The runtime configuration's digest, as measured.
    pub runtime_config_digest: String,
    /// The PCR16 the events replay to, hex (equal to the document's).
    pub pcr16: String,
    /// Events in the log.
    pub events: usize,
}

fn cid_string<S: serde::Serializer>(c: &cid::Cid, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&c.to_string())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    #[allow(dead_code)]
    version: u64,
    pcr: u64,
    events: Vec<RawEvent>,
    pcr16: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvent {
    kind: String,
    value: String,
    data: String,
    digest: String,
}

/// Any JSON value in which no object has the same key twice.
struct Unique;

impl<'de> Deserialize<'de> for Unique {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Unique, D::Error> {
        d.deserialize_any(UniqueVisitor)
    }
}

struct UniqueVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueVisitor {
    type Value = Unique;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("JSON")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_str<E>(self, _: &str) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_unit<E>(self) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Unique, A::Error> {
        while seq.next_element::<Unique>()?.is_some() {}
        Ok(Unique)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Unique, A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if seen.contains(&key) {
                return Err(serde::de::Error::custom(format!(
                    "key {key:?} appears twice in one object"
                )));
            }
            map.next_value::<Unique>()?;
            seen.insert(key);
        }
        Ok(Unique)
    }
}

/// `sha256:` and 64 lowercase hex digits: the only digest form cidboot measures.
pub fn is_sha256(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Checks an event log (the JSON of `GET /v1/measurements`) against the PCR16 of a verified
/// document, and returns what it measured.
///
/// Every event's digest is recomputed from its kind and data, its value must be exactly what
/// its data encodes, the events must come in the documented order, and their replay must equal
/// `document_pcr16`. Nothing is read from a log that fails any of these: a `value` or a
/// `digest` is a claim, and only `data` is measured.
pub fn check_log(log: &[u8], document_pcr16: &[u8]) -> Result<Measured, LogError> {
    if log.len() > MAX_LOG {
        return Err(LogError::Shape(format!(
            "{} bytes, over the {MAX_LOG}-byte limit",
            log.len()
        )));
    }
    // serde_json keeps the last of two equal keys: a log with two "events" would be read by
    // its last, while another reader may take the first. Such a log is refused.
    serde_json::from_slice::<Unique>(log).map_err(|e| LogError::Shape(e.to_string()))?;
    let v: serde_json::Value =
        serde_json::from_slice(log).map_err(|e| LogError::Shape(e.to_string()))?;
    // The version first: a later encoding may change the rest of the shape.
    match v.get("version") {
        Some(serde_json::Value::Number(n)) if n.as_u64() == Some(1) => {}
        Some(other) => return Err(LogError::Version(other.to_string())),
        None => return Err(LogError::Shape("no \"version\"".into())),
    }
    let raw: RawLog = serde_json::from_value(v).map_err(|e| LogError::Shape(e.to_string()))?;
    if raw.pcr != u64::from(PCR_INDEX) {
        return Err(LogError::Pcr(raw.pcr));
    }
    if raw.events.len() > MAX_EVENTS {
        return Err(LogError::TooMany(raw.events.len()));
    }
    let mut digests = Vec::with_capacity(raw.events.len());
    let mut decoded = Vec::with_capacity(raw.events.len());
    for (i, e) in raw.events.iter().enumerate() {
        let index = i + 1;
        let kind = Kind::from_name(&e.kind).ok_or_else(|| LogError::UnknownKind {
            index,
            kind: e.kind.clone(),
        })?;
        let unhex = |field: &'static str, s: &str| {
            hex::decode(s).map_err(|err| LogError::Hex {
                index,
                kind: kind.name(),
                field,
                why: err.to_string(),
            })
        };
        let data = unhex("data", &e.data)?;
        let digest = unhex("digest", &e.digest)?;
        let want = event_digest(kind, &data);
        if digest != want {
            return Err(LogError::Digest {
                index,
                kind: kind.name(),
                have: e.digest.clone(),
                want: hex::encode(want),
            });
        }
        let encoded = encoded_value(kind, &data).map_err(|why| LogError::Data {
            index,
            kind: kind.name(),
            why,
        })?;
        if e.value != encoded {
            return Err(LogError::Value {
                index,
                kind: kind.name(),
                value: e.value.clone(),
                encoded,
            });
        }
        digests.push(want.to_vec());
        decoded.push((kind, data));
    }
    let pcr = replay(digests);
    let replayed = hex::encode(pcr);
    let claimed = raw.pcr16.to_ascii_lowercase();
    if hex::decode(&claimed).map(|b| b.len()) != Ok(48) {
        return Err(LogError::BadPcr(raw.pcr16));
    }
    if claimed != replayed {
        return Err(LogError::Claimed { claimed, replayed });
    }
    if document_pcr16 != pcr.as_slice() {
        return Err(LogError::Document {
            replayed,
            document: hex::encode(document_pcr16),
        });
    }
    fields(decoded, replayed)
}

/// The form cidboot measures a reference in: `ipfs://` and the CID's canonical string (a
/// CIDv1 in base32, `b…`, whatever base it was written in; a CIDv0 as `Qm…`). Any other
/// spelling is one no boot measures.
pub fn canonical_reference(s: &str) -> Result<String, String> {
    let c = s
        .strip_prefix("ipfs://")
        .ok_or_else(|| format!("{s:?} is not ipfs://<CID>"))?;
    let cid = cid::Cid::try_from(c).map_err(|e| format!("{s:?} does not name a CID: {e}"))?;
    let canonical = format!("ipfs://{cid}");
    if canonical != s {
        return Err(format!(
            "{s:?} is not the canonical form cidboot measures ({canonical})"
        ));
    }
    Ok(canonical)
}

/// The value a log must show for an event, derived from its data alone.
fn encoded_value(kind: Kind, data: &[u8]) -> Result<String, String> {
    let text = |d: &[u8]| String::from_utf8(d.to_vec()).map_err(|_| "is not UTF-8".to_string());
    let digest = |d: &[u8]| {
        let s = text(d)?;
        if is_sha256(&s) {
            Ok(s)
        } else {
            Err(format!("{s:?} is not sha256:<64 lowercase hex>"))
        }
    };
    match kind {
        Kind::ImageReference => canonical_reference(&text(data)?),
        Kind::RootCid => {
            let c = cid::Cid::try_from(data).map_err(|e| format!("is not a CID: {e}"))?;
            if c.to_bytes() != data {
                return Err("has bytes after the CID".into());
            }
            Ok(c.to_string())
        }
        Kind::ManifestDigest | Kind::ConfigDigest | Kind::RuntimeConfig => digest(data),
        Kind::Helper => {
            let parts: Vec<&[u8]> = data.split(|b| *b == 0).collect();
            let name = text(parts[0])?;
            if name.is_empty() {
                return Err("names no helper".into());
            }
            match parts.as_slice() {
                [_, d] => Ok(format!("{name} {}", digest(d)?)),
                [_, d, m] => Ok(format!("{name} {} {}", digest(d)?, digest(m)?)),
                _ => Err("is not name 0x00 digest [0x00 manifest digest]".into()),
            }
        }
        Kind::HelperImage => match data.split(|b| *b == 0).collect::<Vec<_>>().as_slice() {
            [r, p, m] => {
                let r = canonical_reference(&text(r)?)?;
                Ok(format!("{r} {} {}", digest(p)?, digest(m)?))
            }
            _ => Err("is not reference 0x00 pinned digest 0x00 manifest digest".into()),
        },
        Kind::EncryptedLayers => {
            let parts: Vec<&[u8]> = data.split(|b| *b == 0).collect();
            let key = text(parts[0])?;
            if !key.is_empty() && !is_key_name(&key) {
                return Err(format!(
                    "names the key {key:?}, which is no [[secrets]] name (letters, digits, '.', '_', '-', at most {MAX_KEY_NAME} bytes, first a letter or digit)"
                ));
            }
            let layers = &parts[1..];
            if layers.is_empty() || layers.len() > MAX_LAYERS {
                return Err(format!(
                    "names {} layers: an encrypted-layers event names 1 to {MAX_LAYERS} (key name 0x00 digest [0x00 digest]...)",
                    layers.len()
                ));
            }
            let layers = layers
                .iter()
                .map(|d| digest(d))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(EncryptedLayers { key, layers }.value())
        }
    }
}

/// Longest `[[secrets]]` name (`cidboot seal --name`).
pub const MAX_KEY_NAME: usize = 64;

/// A name as `[[secrets]]` takes it: what `decryption_key` can name.
fn is_key_name(s: &str) -> bool {
    s.len() <= MAX_KEY_NAME
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// Reads the fields of a log already proven sound, checking the documented order: the image
/// reference, the root CID, the manifest, the config, the encrypted layers if any, the helper
/// images, the helpers sorted by name, and the runtime configuration last.
fn fields(events: Vec<(Kind, Vec<u8>)>, pcr16: String) -> Result<Measured, LogError> {
    let order = |i: usize, k: Kind, why: String| LogError::Order {
        index: i + 1,
        kind: k.name(),
        why,
    };
    let fixed = [
        Kind::ImageReference,
        Kind::RootCid,
        Kind::ManifestDigest,
        Kind::ConfigDigest,
    ];
    for (i, want) in fixed.iter().enumerate() {
        match events.get(i) {
            Some((k, _)) if k == want => {}
            Some((k, _)) => return Err(order(i, *k, format!("expected {}", want.name()))),
            None => return Err(LogError::Missing(want.name())),
        }
    }
    // The encrypted layers, if the image has any, right after the config.
    let encrypted_layers = match events.get(fixed.len()) {
        Some((Kind::EncryptedLayers, d)) => {
            let parts: Vec<&[u8]> = d.split(|b| *b == 0).collect();
            Some(EncryptedLayers {
                key: String::from_utf8_lossy(parts[0]).into_owned(),
                layers: parts[1..]
                    .iter()
                    .map(|l| String::from_utf8_lossy(l).into_owned())
                    .collect(),
            })
        }
        _ => None,
    };
    let first = fixed.len() + usize::from(encrypted_layers.is_some());
    let last = match events.last() {
        Some((Kind::RuntimeConfig, _)) if events.len() > first => events.len() - 1,
        _ => return Err(LogError::Missing(Kind::RuntimeConfig.name())),
    };
    // Data were checked by `encoded_value`: UTF-8 where text is expected, one 0x00 in a helper.
    let text = |d: &[u8]| String::from_utf8_lossy(d).into_owned();
    let mut helpers = BTreeMap::new();
    let mut helper_sources = BTreeMap::new();
    let mut helper_images: Vec<HelperImage> = Vec::new();
    let mut previous: Option<&[u8]> = None;
    for (i, (k, d)) in events.iter().enumerate().take(last).skip(first) {
        let parts: Vec<&[u8]> = d.split(|b| *b == 0).collect();
        match k {
            Kind::HelperImage if previous.is_none() => {
                helper_images.push(HelperImage {
                    reference: text(parts[0]),
                    pinned_digest: text(parts.get(1).copied().unwrap_or_default()),
                    manifest_digest: text(parts.get(2).copied().unwrap_or_default()),
                    helpers: Vec::new(),
                });
                continue;
            }
            Kind::Helper => {}
            _ => {
                return Err(order(
                    i,
                    *k,
                    "only the encrypted layers, then helper images, then helpers, come between the config and the runtime configuration".into(),
                ))
            }
        }
        let (name, digest) = (parts[0], parts.get(1).copied().unwrap_or_default());
        if previous.is_some_and(|p| p >= name) {
            return Err(order(
                i,
                *k,
                "helpers are not sorted by name, or one is repeated".into(),
            ));
        }
        previous = Some(name);
        if let Some(m) = parts.get(2) {
            let m = text(m);
            let Some(img) = helper_images.iter_mut().find(|h| h.manifest_digest == m) else {
                return Err(order(
                    i,
                    *k,
                    format!("comes from {m}, which no helper-image event before it names"),
                ));
            };
            img.helpers.push((text(name), text(digest)));
            helper_sources.insert(text(name), m);
        }
        helpers.insert(text(name), text(digest));
    }
    // Every helper image measured installed at least one helper: an event that records nothing
    // is no boot's, and beside an exact set of expected helpers it would pass unseen.
    for (n, img) in helper_images.iter().enumerate() {
        if img.helpers.is_empty() {
            return Err(LogError::Data {
                index: first + n + 1,
                kind: Kind::HelperImage.name(),
                why: format!(
                    "names {}, from which no helper event that follows comes (a helper image installs at least one helper)",
                    img.reference
                ),
            });
        }
    }
    let cid = cid::Cid::try_from(events[1].1.as_slice()).map_err(|e| LogError::Data {
        index: 2,
        kind: Kind::RootCid.name(),
        why: format!("is not a CID: {e}"),
    })?;
    // The reference and the root CID measure the same thing twice: they must agree.
    let reference = text(&events[0].1);
    if reference != format!("ipfs://{cid}") {
        return Err(LogError::Data {
            index: 1,
            kind: Kind::ImageReference.name(),
            why: format!("names {reference}, but the root-cid event measures {cid}"),
        });
    }
    Ok(Measured {
        reference,
        cid,
        manifest_digest: text(&events[2].1),
        config_digest: text(&events[3].1),
        encrypted_layers,
        helpers,
        helper_sources,
        helper_images,
        runtime_config_digest: text(&events[last].1),
        pcr16,
        events: events.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CIDv1 (raw codec, sha2-256) of `data`.
    fn raw_cid(data: &[u8]) -> cid::Cid {
        let digest = <sha2::Sha256 as Digest>::digest(data);
        let mh = multihash::Multihash::<64>::wrap(0x12, &digest).unwrap();
        cid::Cid::new_v1(0x55, mh)
    }

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
        let cid = raw_cid(b"img");
        let mk = |helpers: Vec<(String, String)>, cfg: &str| {
            EventLog::new(Inputs {
                reference: "ipfs://x",
                root_cid: &cid,
                manifest_digest: "sha256:m",
                config_digest: "sha256:c",
                encrypted_layers: None,
                helpers,
                helper_images: vec![],
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

    fn sample(helpers: Vec<(String, String)>) -> EventLog {
        let cid = raw_cid(b"image");
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        EventLog::new(Inputs {
            reference: &format!("ipfs://{cid}"),
            root_cid: &cid,
            manifest_digest: &d('a'),
            config_digest: &d('c'),
            encrypted_layers: None,
            helpers,
            helper_images: vec![],
            runtime_config_digest: &d('e'),
        })
    }

    fn json(log: &EventLog) -> serde_json::Value {
        serde_json::to_value(log).unwrap()
    }

    fn check(v: &serde_json::Value, pcr16: &str) -> Result<Measured, LogError> {
        check_log(v.to_string().as_bytes(), &hex::decode(pcr16).unwrap())
    }

    #[test]
    fn a_sound_log_yields_its_fields() {
        let h = |n: &str, c: char| {
            (
                n.to_string(),
                format!("sha256:{}", c.to_string().repeat(64)),
            )
        };
        let log = sample(vec![h("tls-client", '2'), h("kms-client", '1')]);
        let f = check(&json(&log), &log.pcr16).unwrap();
        assert_eq!(f.reference, log.events[0].value);
        assert_eq!(f.cid, raw_cid(b"image"));
        assert_eq!(f.manifest_digest, format!("sha256:{}", "a".repeat(64)));
        assert_eq!(f.config_digest, format!("sha256:{}", "c".repeat(64)));
        assert_eq!(
            f.runtime_config_digest,
            format!("sha256:{}", "e".repeat(64))
        );
        assert_eq!(
            f.helpers.keys().collect::<Vec<_>>(),
            ["kms-client", "tls-client"]
        );
        assert_eq!((f.pcr16.as_str(), f.events), (log.pcr16.as_str(), 7));
    }

    #[test]
    fn helper_images_and_their_helpers_are_read_back_and_tied_together() {
        let cid = raw_cid(b"image");
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let dep = HelperImage {
            reference: format!("ipfs://{}", raw_cid(b"dep")),
            pinned_digest: d('5'),
            manifest_digest: d('6'),
            helpers: vec![("kms-client".into(), d('7'))],
        };
        let log = EventLog::new(Inputs {
            reference: &format!("ipfs://{cid}"),
            root_cid: &cid,
            manifest_digest: &d('a'),
            config_digest: &d('c'),
            encrypted_layers: None,
            helpers: vec![("attest".into(), d('8'))],
            helper_images: vec![dep.clone()],
            runtime_config_digest: &d('e'),
        });
        let f = check(&json(&log), &log.pcr16).unwrap();
        assert_eq!(f.helper_images, std::slice::from_ref(&dep));
        assert_eq!(f.helpers.len(), 2);
        assert_eq!(f.helper_sources.get("kms-client"), Some(&d('6')));
        assert_eq!(f.helper_sources.get("attest"), None);
        // A helper claiming an image no helper-image event names is refused, even when the
        // log replays (the verifier recomputes digests; the forger can too).
        let orphan = EventLog::new(Inputs {
            reference: &format!("ipfs://{cid}"),
            root_cid: &cid,
            manifest_digest: &d('a'),
            config_digest: &d('c'),
            encrypted_layers: None,
            helpers: vec![],
            helper_images: vec![dep],
            runtime_config_digest: &d('e'),
        });
        let mut v = json(&orphan);
        let events = v["events"].as_array_mut().unwrap();
        events.remove(4);
        let digests: Vec<Vec<u8>> = events
            .iter()
            .map(|e| hex::decode(e["digest"].as_str().unwrap()).unwrap())
            .collect();
        let pcr = hex::encode(replay(digests));
        v["pcr16"] = pcr.clone().into();
        let e = check(&v, &pcr).unwrap_err();
        assert!(
            e.to_string()
                .contains("which no helper-image event before it names"),
            "{e}"
        );
    }

    #[test]
    fn a_log_naming_one_manifest_with_the_digests_of_another_is_refused() {
        let a = sample(vec![]);
        let mut a_with_b_digest = json(&a);
        // B: the same image but another manifest, extended for real.
        let cid = raw_cid(b"image");
        let b = EventLog::new(Inputs {
            reference: &format!("ipfs://{cid}"),
            root_cid: &cid,
            manifest_digest: &format!("sha256:{}", "b".repeat(64)),
            config_digest: &format!("sha256:{}", "c".repeat(64)),
            encrypted_layers: None,
            helpers: vec![],
            helper_images: vec![],
            runtime_config_digest: &format!("sha256:{}", "e".repeat(64)),
        });
        // The value of A over the data and digests of B: replays to B's PCR16.
        let mut forged = json(&b);
        forged["events"][2]["value"] = a.events[2].value.clone().into();
        let e = check(&forged, &b.pcr16).unwrap_err();
        assert!(
            matches!(
                e,
                LogError::Value {
                    index: 3,
                    kind: "manifest-digest",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("event 3 (manifest-digest)"), "{e}");
        // The value and data of A with B's digest: the digest is recomputed.
        a_with_b_digest["events"][2]["digest"] = b.events[2].digest.clone().into();
        a_with_b_digest["pcr16"] = b.pcr16.clone().into();
        let e = check(&a_with_b_digest, &b.pcr16).unwrap_err();
        assert!(matches!(e, LogError::Digest { index: 3, .. }), "{e}");
    }

    #[test]
    fn bad_digests_kinds_hex_versions_and_orders_are_refused() {
        let log = sample(vec![("x".into(), format!("sha256:{}", "1".repeat(64)))]);
        let good = json(&log);
        let refuse = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut v = good.clone();
            f(&mut v);
            check(&v, &log.pcr16).unwrap_err()
        };
        let e = refuse(&|v| v["events"][0]["digest"] = "00".repeat(48).into());
        assert!(matches!(e, LogError::Digest { index: 1, .. }), "{e}");
        let e = refuse(&|v| v["events"][1]["kind"] = "kernel".into());
        assert_eq!(
            e,
            LogError::UnknownKind {
                index: 2,
                kind: "kernel".into()
            }
        );
        for field in ["data", "digest"] {
            for bad in ["zz", "abc", "0x00"] {
                let e = refuse(&|v| v["events"][3][field] = bad.into());
                assert!(
                    matches!(e, LogError::Hex { index: 4, .. }),
                    "{field} {bad}: {e}"
                );
            }
        }
        let e = refuse(&|v| v["version"] = 2.into());
        assert_eq!(e, LogError::Version("2".into()));
        let e = refuse(&|v| v["pcr"] = 17.into());
        assert_eq!(e, LogError::Pcr(17));
        let e = refuse(&|v| v["extra"] = 1.into());
        assert!(matches!(e, LogError::Shape(_)), "{e}");
        let e = refuse(&|v| v["pcr16"] = "00".repeat(48).into());
        assert!(matches!(e, LogError::Claimed { .. }), "{e}");
        // Reordered events are each sound, but not in the measured order.
        let e = refuse(&|v| {
            let ev = v["events"].as_array_mut().unwrap();
            ev.swap(2, 3);
            v["pcr16"] = hex::encode(replay(
                ev.iter()
                    .map(|e| hex::decode(e["digest"].as_str().unwrap()).unwrap()),
            ))
            .into();
        });
        assert!(matches!(e, LogError::Document { .. }), "{e}");
        // Another document's PCR16.
        let e = check(&good, &"11".repeat(48)).unwrap_err();
        assert!(matches!(e, LogError::Document { .. }), "{e}");
    }

    #[test]
    fn events_out_of_the_documented_order_are_refused_even_when_they_replay() {
        let cid = raw_cid(b"image");
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let ev = |k: Kind, data: Vec<u8>| Event::new(k, encoded_value(k, &data).unwrap(), data);
        let logs: Vec<(Vec<Event>, &str)> = vec![
            (
                vec![
                    ev(Kind::ImageReference, format!("ipfs://{cid}").into_bytes()),
                    ev(Kind::RootCid, cid.to_bytes()),
                    ev(Kind::ConfigDigest, d('c').into_bytes()),
                    ev(Kind::ManifestDigest, d('a').into_bytes()),
                    ev(Kind::RuntimeConfig, d('e').into_bytes()),
                ],
                "event 3 (config-digest): out of order",
            ),
            (
                vec![
                    ev(Kind::ImageReference, format!("ipfs://{cid}").into_bytes()),
                    ev(Kind::RootCid, cid.to_bytes()),
                    ev(Kind::ManifestDigest, d('a').into_bytes()),
                    ev(Kind::ConfigDigest, d('c').into_bytes()),
                    ev(
                        Kind::Helper,
                        [b"b\0".to_vec(), d('1').into_bytes()].concat(),
                    ),
                    ev(
                        Kind::Helper,
                        [b"a\0".to_vec(), d('1').into_bytes()].concat(),
                    ),
                    ev(Kind::RuntimeConfig, d('e').into_bytes()),
                ],
                "event 6 (helper): out of order",
            ),
            (
                vec![
                    ev(Kind::ImageReference, format!("ipfs://{cid}").into_bytes()),
                    ev(Kind::RootCid, cid.to_bytes()),
                    ev(Kind::ManifestDigest, d('a').into_bytes()),
                    ev(Kind::ConfigDigest, d('c').into_bytes()),
                ],
                "without runtime-config",
            ),
        ];
        for (events, want) in logs {
            let pcr16 = hex::encode(replay(events.iter().map(|e| e.digest_bytes())));
            let log = EventLog {
                version: 1,
                pcr: PCR_INDEX,
                events,
                pcr16: pcr16.clone(),
            };
            let e = check(&json(&log), &pcr16).unwrap_err();
            assert!(e.to_string().contains(want), "{e}");
        }
        // Data that no measurement produces: a digest of another form, a CID with a tail.
        for (k, data) in [
            (Kind::ManifestDigest, b"sha256:m".to_vec()),
            (Kind::ConfigDigest, d('C').into_bytes()),
            (Kind::RootCid, [cid.to_bytes(), vec![0]].concat()),
            (Kind::Helper, d('1').into_bytes()),
            (Kind::ImageReference, vec![0xff]),
        ] {
            assert!(encoded_value(k, &data).is_err(), "{k:?} {data:?}");
        }
    }

    /// A log of these events, sound in every event, with its PCR16.
    fn log_of(events: Vec<Event>) -> (serde_json::Value, String) {
        let pcr16 = hex::encode(replay(events.iter().map(|e| e.digest_bytes())));
        let log = EventLog {
            version: 1,
            pcr: PCR_INDEX,
            events,
            pcr16: pcr16.clone(),
        };
        (json(&log), pcr16)
    }

    #[test]
    fn a_log_with_a_key_twice_is_refused() {
        let log = sample(vec![]);
        let pcr = hex::decode(&log.pcr16).unwrap();
        let good = serde_json::to_string(&log).unwrap();
        assert!(check_log(good.as_bytes(), &pcr).is_ok());
        // Another log's events first, this boot's last: serde_json alone would read the last.
        let other = sample(vec![("x".into(), format!("sha256:{}", "1".repeat(64)))]);
        let other_events = serde_json::to_string(&json(&other)["events"]).unwrap();
        let twice = good.replacen("{", &format!("{{\"events\":{other_events},"), 1);
        let e = check_log(twice.as_bytes(), &pcr).unwrap_err();
        assert!(
            matches!(&e, LogError::Shape(w) if w.contains("key \"events\" appears twice")),
            "{e}"
        );
        // In an event too.
        let value = &log.events[2].value;
        let twice = good.replacen(
            &format!("\"value\":\"{value}\""),
            &format!(
                "\"value\":\"sha256:{}\",\"value\":\"{value}\"",
                "b".repeat(64)
            ),
            1,
        );
        assert_ne!(twice, good);
        let e = check_log(twice.as_bytes(), &pcr).unwrap_err();
        assert!(
            matches!(&e, LogError::Shape(w) if w.contains("key \"value\" appears twice")),
            "{e}"
        );
    }

    #[test]
    fn the_reference_must_be_the_root_cid_in_its_measured_form() {
        let cid = raw_cid(b"image");
        let other = raw_cid(b"another image");
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let events = |reference: &str| {
            vec![
                Event::new(
                    Kind::ImageReference,
                    reference.into(),
                    reference.as_bytes().to_vec(),
                ),
                Event::new(Kind::RootCid, cid.to_string(), cid.to_bytes()),
                Event::new(Kind::ManifestDigest, d('a'), d('a').into_bytes()),
                Event::new(Kind::ConfigDigest, d('c'), d('c').into_bytes()),
                Event::new(Kind::RuntimeConfig, d('e'), d('e').into_bytes()),
            ]
        };
        let (v, pcr16) = log_of(events(&format!("ipfs://{cid}")));
        assert_eq!(
            check(&v, &pcr16).unwrap().reference,
            format!("ipfs://{cid}")
        );
        // Another image's reference beside this root CID.
        let (v, pcr16) = log_of(events(&format!("ipfs://{other}")));
        let e = check(&v, &pcr16).unwrap_err();
        assert!(
            e.to_string().contains(&format!(
                "event 1 (image-reference): data names ipfs://{other}, but the root-cid event measures {cid}"
            )),
            "{e}"
        );
        // The same CID in base36: no boot measures that spelling.
        let base36 = cid
            .to_string_of_base(cid::multibase::Base::Base36Lower)
            .unwrap();
        assert!(base36.starts_with('k'));
        let (v, pcr16) = log_of(events(&format!("ipfs://{base36}")));
        let e = check(&v, &pcr16).unwrap_err();
        assert!(
            e.to_string()
                .contains("is not the canonical form cidboot measures"),
            "{e}"
        );
        assert_eq!(
            canonical_reference(&format!("ipfs://{cid}")),
            Ok(format!("ipfs://{cid}"))
        );
    }

    #[test]
    fn a_helper_image_that_installed_nothing_is_refused() {
        let cid = raw_cid(b"image");
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let dep = |helpers: Vec<(String, String)>| HelperImage {
            reference: format!("ipfs://{}", raw_cid(b"dep")),
            pinned_digest: d('5'),
            manifest_digest: d('6'),
            helpers,
        };
        let log = |dep: HelperImage| {
            EventLog::new(Inputs {
                reference: &format!("ipfs://{cid}"),
                root_cid: &cid,
                manifest_digest: &d('a'),
                config_digest: &d('c'),
                encrypted_layers: None,
                helpers: vec![("attest".into(), d('8'))],
                helper_images: vec![dep],
                runtime_config_digest: &d('e'),
            })
        };
        let full = log(dep(vec![("kms-client".into(), d('7'))]));
        assert!(check(&json(&full), &full.pcr16).is_ok());
        let empty = log(dep(vec![]));
        let e = check(&json(&empty), &empty.pcr16).unwrap_err();
        assert!(
            e.to_string()
                .contains("event 5 (helper-image): data names ipfs://"),
            "{e}"
        );
        assert!(e.to_string().contains("no helper event"), "{e}");
    }
    #[test]
    fn encrypted_layers_are_one_event_after_the_config_read_back_and_counted() {
        let cid = raw_cid(b"image");
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let log = |enc: Option<EncryptedLayers>| {
            EventLog::new(Inputs {
                reference: &format!("ipfs://{cid}"),
                root_cid: &cid,
                manifest_digest: &d('a'),
                config_digest: &d('c'),
                encrypted_layers: enc,
                helpers: vec![("attest".into(), d('8'))],
                helper_images: vec![],
                runtime_config_digest: &d('e'),
            })
        };
        let enc = |key: &str, layers: Vec<String>| {
            Some(EncryptedLayers {
                key: key.into(),
                layers,
            })
        };
        let clear = log(None);
        let two = log(enc("image-key", vec![d('1'), d('2')]));
        assert_eq!(clear.events.len() + 1, two.events.len());
        let e = &two.events[4];
        assert_eq!(e.kind, Kind::EncryptedLayers);
        assert_eq!(e.value, format!("image-key {} {}", d('1'), d('2')));
        assert_eq!(
            hex::decode(&e.data).unwrap(),
            [
                b"image-key\0".as_slice(),
                d('1').as_bytes(),
                b"\0",
                d('2').as_bytes()
            ]
            .concat()
        );
        let f = check(&json(&two), &two.pcr16).unwrap();
        assert_eq!(f.encrypted_layers, enc("image-key", vec![d('1'), d('2')]));
        assert_eq!(f.helpers.len(), 1);
        assert_eq!(
            check(&json(&clear), &clear.pcr16).unwrap().encrypted_layers,
            None
        );
        // The key name, the set of layers and their order each change PCR16.
        let pcrs = [
            clear.pcr16,
            two.pcr16,
            log(enc("other-key", vec![d('1'), d('2')])).pcr16,
            log(enc("image-key", vec![d('2'), d('1')])).pcr16,
            log(enc("image-key", vec![d('1')])).pcr16,
            log(enc("", vec![d('1'), d('2')])).pcr16,
        ];
        let distinct: std::collections::BTreeSet<_> = pcrs.iter().collect();
        assert_eq!(distinct.len(), pcrs.len(), "{pcrs:?}");
        // A key from outside the configuration is shown as "-", which no secret is named.
        let outside = log(enc("", vec![d('1')]));
        assert_eq!(outside.events[4].value, format!("- {}", d('1')));
        assert_eq!(
            check(&json(&outside), &outside.pcr16)
                .unwrap()
                .encrypted_layers,
            enc("", vec![d('1')])
        );
    }

    #[test]
    fn encrypted_layers_out_of_place_or_malformed_are_refused() {
        let cid = raw_cid(b"image");
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let ev = |k: Kind, data: Vec<u8>| Event::new(k, encoded_value(k, &data).unwrap(), data);
        let enc = ev(
            Kind::EncryptedLayers,
            [b"k\0".to_vec(), d('1').into_bytes()].concat(),
        );
        let head = || {
            vec![
                ev(Kind::ImageReference, format!("ipfs://{cid}").into_bytes()),
                ev(Kind::RootCid, cid.to_bytes()),
                ev(Kind::ManifestDigest, d('a').into_bytes()),
                ev(Kind::ConfigDigest, d('c').into_bytes()),
            ]
        };
        let helper = ev(
            Kind::Helper,
            [b"a\0".to_vec(), d('1').into_bytes()].concat(),
        );
        let runtime = ev(Kind::RuntimeConfig, d('e').into_bytes());
        for (tail, want) in [
            (
                vec![helper.clone(), enc.clone(), runtime.clone()],
                "event 6 (encrypted-layers): out of order",
            ),
            (
                vec![enc.clone(), enc.clone(), runtime.clone()],
                "event 6 (encrypted-layers): out of order",
            ),
            (vec![enc.clone()], "without runtime-config"),
        ] {
            let (v, pcr16) = log_of([head(), tail].concat());
            let e = check(&v, &pcr16).unwrap_err();
            assert!(e.to_string().contains(want), "{want}: {e}");
        }
        let (v, pcr16) = log_of([head(), vec![enc, helper, runtime]].concat());
        assert!(check(&v, &pcr16).is_ok());
        let many = vec![d('1'); MAX_LAYERS + 1];
        for (data, want) in [
            (b"k".to_vec(), "names 0 layers"),
            (b"k\0".to_vec(), "is not sha256:"),
            (
                [b"k\0".to_vec(), d('1').into_bytes(), b"\0".to_vec()].concat(),
                "is not sha256:",
            ),
            (
                [b"-\0".to_vec(), d('1').into_bytes()].concat(),
                "which is no [[secrets]] name",
            ),
            (
                [b"a b\0".to_vec(), d('1').into_bytes()].concat(),
                "which is no [[secrets]] name",
            ),
            (
                [b"k\0".to_vec(), d('A').into_bytes()].concat(),
                "is not sha256:",
            ),
            (
                [b"k\0".to_vec(), many.join("\0").into_bytes()].concat(),
                "names 257 layers",
            ),
        ] {
            let e = encoded_value(Kind::EncryptedLayers, &data).unwrap_err();
            assert!(e.contains(want), "{want}: {e}");
        }
    }
}
