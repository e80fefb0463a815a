//! The attestation document: a COSE_Sign1 envelope around a CBOR payload.
//!
//! The envelope is taken apart with ciborium, whose decoder reads byte strings incrementally
//! (it never pre-allocates from a declared length) and bounds recursion; the document is also
//! capped at [`MAX_DOCUMENT`] before parsing. The protected header and payload are kept as
//! the exact bytes received, and the signature is checked over those bytes: nothing received
//! is ever re-encoded.

use std::collections::BTreeMap;

use ciborium::value::Value;

/// Largest document accepted (real ones are 4-8 KiB).
pub const MAX_DOCUMENT: usize = 32 * 1024;
/// Largest `user_data`, `nonce` or `public_key` accepted when verifying (documents with three
/// 1024-byte fields exist).
pub const MAX_FIELD_ACCEPTED: usize = 1024;
/// Largest certificate accepted in a document, DER bytes.
pub const MAX_CERT: usize = 8 * 1024;
/// Most certificates in a document's `cabundle`.
pub const MAX_CABUNDLE: usize = 8;
/// COSE algorithm ES384.
pub const ALG_ES384: i64 = -35;

/// Why bytes are not an attestation document.
#[allow(missing_docs)] // each variant's message says what is wrong
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DocError {
    #[error("the document is {0} bytes, over the {MAX_DOCUMENT}-byte limit")]
    TooLarge(usize),
    #[error("not a COSE_Sign1 structure: {0}")]
    Cose(String),
    #[error("malformed payload: {0}")]
    Payload(String),
}

/// A COSE_Sign1, with its protected header and payload as received.
#[derive(Debug, Clone)]
pub struct Cose {
    /// Whether it carried the COSE_Sign1 tag (18).
    pub tagged: bool,
    /// The protected header, the bytes as received (they are signed as such).
    pub protected: Vec<u8>,
    /// The `alg` (label 1) of the protected header, if it is an integer.
    pub alg: Option<i64>,
    /// The payload, as received.
    pub payload: Vec<u8>,
    /// The signature (for ES384, `r || s`, 96 bytes).
    pub signature: Vec<u8>,
}

fn cbor(bytes: &[u8]) -> Result<Value, String> {
    let mut r = bytes;
    let v: Value = ciborium::de::from_reader(&mut r).map_err(|e| e.to_string())?;
    if !r.is_empty() {
        return Err(format!("{} bytes after the end", r.len()));
    }
    Ok(v)
}

/// Parses a COSE_Sign1 structure within [`MAX_DOCUMENT`], keeping the signed parts as received.
pub fn parse_cose(bytes: &[u8]) -> Result<Cose, DocError> {
    if bytes.len() > MAX_DOCUMENT {
        return Err(DocError::TooLarge(bytes.len()));
    }
    let e = |m: &str| DocError::Cose(m.to_string());
    let v = cbor(bytes).map_err(DocError::Cose)?;
    let (tagged, v) = match v {
        Value::Tag(18, inner) => (true, *inner),
        Value::Tag(t, _) => return Err(DocError::Cose(format!("tag {t} (COSE_Sign1 is 18)"))),
        v => (false, v),
    };
    let Value::Array(items) = v else {
        return Err(e("not an array"));
    };
    let [protected, unprotected, payload, signature]: [Value; 4] =
        items.try_into().map_err(|_| e("not four elements"))?;
    // Some producers write the empty unprotected header as null rather than {}.
    if !matches!(unprotected, Value::Map(_) | Value::Null) {
        return Err(e("the unprotected header is not a map"));
    }
    let (Value::Bytes(protected), Value::Bytes(payload), Value::Bytes(signature)) =
        (protected, payload, signature)
    else {
        return Err(e(
            "protected header, payload or signature is not a byte string",
        ));
    };
    let alg = if protected.is_empty() {
        None
    } else {
        match cbor(&protected).map_err(|m| DocError::Cose(format!("protected header: {m}")))? {
            Value::Map(m) => m.into_iter().find_map(|(k, v)| match (k, v) {
                (Value::Integer(k), Value::Integer(a)) if i128::from(k) == 1 => {
                    i64::try_from(i128::from(a)).ok()
                }
                _ => None,
            }),
            _ => return Err(e("protected header is not a map")),
        }
    };
    Ok(Cose {
        tagged,
        protected,
        alg,
        payload,
        signature,
    })
}

/// `Sig_structure = ["Signature1", protected, h'', payload]`, as RFC 9052 builds it.
pub fn sig_structure(protected: &[u8], payload: &[u8]) -> Vec<u8> {
    let v = Value::Array(vec![
        Value::Text("Signature1".into()),
        Value::Bytes(protected.to_vec()),
        Value::Bytes(Vec::new()),
        Value::Bytes(payload.to_vec()),
    ]);
    let mut out = Vec::new();
    // Serializing a Value into a Vec cannot fail.
    let _ = ciborium::ser::into_writer(&v, &mut out);
    out
}

/// An untagged COSE_Sign1 with an empty unprotected header, as the NSM emits.
pub fn build_cose(protected: &[u8], payload: &[u8], signature: &[u8]) -> Vec<u8> {
    let v = Value::Array(vec![
        Value::Bytes(protected.to_vec()),
        Value::Map(Vec::new()),
        Value::Bytes(payload.to_vec()),
        Value::Bytes(signature.to_vec()),
    ]);
    let mut out = Vec::new();
    let _ = ciborium::ser::into_writer(&v, &mut out);
    out
}

/// `{1: -35}`: the protected header of an ES384 document.
pub fn es384_protected() -> Vec<u8> {
    let mut out = Vec::new();
    let _ = ciborium::ser::into_writer(
        &Value::Map(vec![(
            Value::Integer(1.into()),
            Value::Integer(ALG_ES384.into()),
        )]),
        &mut out,
    );
    out
}

/// The payload of an attestation document.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Document {
    /// The enclave's NSM module id.
    pub module_id: String,
    /// The PCR hash algorithm (`SHA384`).
    pub digest: String,
    /// Milliseconds since the Unix epoch.
    pub timestamp: u64,
    /// The locked PCRs, index to value.
    #[serde(serialize_with = "hex_map")]
    pub pcrs: BTreeMap<u16, Vec<u8>>,
    /// The signing certificate, DER.
    #[serde(skip)]
    pub certificate: Vec<u8>,
    /// The chain from the root down to the signing certificate's issuer, DER.
    #[serde(skip)]
    pub cabundle: Vec<Vec<u8>>,
    /// The key the requester asked to have bound, if any.
    #[serde(serialize_with = "hex_opt")]
    pub public_key: Option<Vec<u8>>,
    /// The data the requester asked to have bound, if any.
    #[serde(serialize_with = "hex_opt")]
    pub user_data: Option<Vec<u8>>,
    /// The requester's nonce, if any.
    #[serde(serialize_with = "hex_opt")]
    pub nonce: Option<Vec<u8>>,
}

fn hex_map<S: serde::Serializer>(m: &BTreeMap<u16, Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = s.serialize_map(Some(m.len()))?;
    for (k, v) in m {
        map.serialize_entry(&k.to_string(), &hex::encode(v))?;
    }
    map.end()
}

fn hex_opt<S: serde::Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(b) => s.serialize_some(&hex::encode(b)),
        None => s.serialize_none(),
    }
}

fn bytes_field(name: &str, v: Value, max: usize) -> Result<Option<Vec<u8>>, DocError> {
    match v {
        Value::Null => Ok(None),
        Value::Bytes(b) if b.len() <= max => Ok(Some(b)),
        Value::Bytes(b) => Err(DocError::Payload(format!(
            "{name} is {} bytes, over {max}",
            b.len()
        ))),
        _ => Err(DocError::Payload(format!("{name} is not a byte string"))),
    }
}

impl Document {
    /// Parses a payload. Both definite and indefinite-length maps are accepted.
    pub fn parse(payload: &[u8]) -> Result<Document, DocError> {
        let p = |m: String| DocError::Payload(m);
        let Value::Map(entries) = cbor(payload).map_err(p)? else {
            return Err(p("not a map".into()));
        };
        let mut d = Document {
            module_id: String::new(),
            digest: String::new(),
            timestamp: 0,
            pcrs: BTreeMap::new(),
            certificate: Vec::new(),
            cabundle: Vec::new(),
            public_key: None,
            user_data: None,
            nonce: None,
        };
        let mut seen = Vec::new();
        for (k, v) in entries {
            let Value::Text(k) = k else {
                return Err(p("a key is not text".into()));
            };
            if seen.contains(&k) {
                return Err(p(format!("duplicate key {k}")));
            }
            seen.push(k.clone());
            match k.as_str() {
                "module_id" => match v {
                    Value::Text(t) if !t.is_empty() && t.len() <= 256 => d.module_id = t,
                    _ => return Err(p("module_id is not a short non-empty text".into())),
                },
                "digest" => match v {
                    Value::Text(t) => d.digest = t,
                    _ => return Err(p("digest is not text".into())),
                },
                "timestamp" => match v {
                    Value::Integer(i) => {
                        d.timestamp = u64::try_from(i128::from(i))
                            .map_err(|_| p("timestamp out of range".into()))?
                    }
                    _ => return Err(p("timestamp is not an integer".into())),
                },
                "pcrs" => {
                    let Value::Map(m) = v else {
                        return Err(p("pcrs is not a map".into()));
                    };
                    for (i, val) in m {
                        let i = match i {
                            Value::Integer(i) => {
                                u16::try_from(i128::from(i)).ok().filter(|i| *i < 32)
                            }
                            _ => None,
                        }
                        .ok_or_else(|| p("a PCR index is not 0-31".into()))?;
                        let Value::Bytes(b) = val else {
                            return Err(p(format!("PCR{i} is not a byte string")));
                        };
                        if ![32, 48, 64].contains(&b.len()) {
                            return Err(p(format!("PCR{i} is {} bytes", b.len())));
                        }
                        if d.pcrs.insert(i, b).is_some() {
                            return Err(p(format!("PCR{i} appears twice")));
                        }
                    }
                }
                "certificate" => {
                    d.certificate = bytes_field("certificate", v, MAX_CERT)?.unwrap_or_default()
                }
                // An absent bundle (null) parses as empty, so that the verifier can say the
                // document is not rooted anywhere, rather than that it is malformed.
                "cabundle" if v.is_null() => {}
                "cabundle" => {
                    let Value::Array(a) = v else {
                        return Err(p("cabundle is not an array".into()));
                    };
                    if a.is_empty() || a.len() > MAX_CABUNDLE {
                        return Err(p(format!(
                            "cabundle has {} certificates (1-{MAX_CABUNDLE})",
                            a.len()
                        )));
                    }
                    for c in a {
                        d.cabundle.push(
                            bytes_field("cabundle entry", c, MAX_CERT)?
                                .ok_or_else(|| p("cabundle entry is null".into()))?,
                        );
                    }
                }
                "public_key" => d.public_key = bytes_field("public_key", v, MAX_FIELD_ACCEPTED)?,
                "user_data" => d.user_data = bytes_field("user_data", v, MAX_FIELD_ACCEPTED)?,
                "nonce" => d.nonce = bytes_field("nonce", v, MAX_FIELD_ACCEPTED)?,
                _ => {}
            }
        }
        for required in [
            "module_id",
            "digest",
            "timestamp",
            "pcrs",
            "certificate",
            "cabundle",
        ] {
            if !seen.iter().any(|s| s == required) {
                return Err(p(format!("missing {required}")));
            }
        }
        Ok(d)
    }

    /// Encodes the payload with the NSM's key order (a definite-length map).
    pub fn encode(&self) -> Vec<u8> {
        let opt = |v: &Option<Vec<u8>>| v.clone().map(Value::Bytes).unwrap_or(Value::Null);
        let t = |s: &str| Value::Text(s.into());
        let v = Value::Map(vec![
            (t("module_id"), t(&self.module_id)),
            (t("digest"), t(&self.digest)),
            (t("timestamp"), Value::Integer(self.timestamp.into())),
            (
                t("pcrs"),
                Value::Map(
                    self.pcrs
                        .iter()
                        .map(|(i, v)| (Value::Integer((*i).into()), Value::Bytes(v.clone())))
                        .collect(),
                ),
            ),
            (t("certificate"), Value::Bytes(self.certificate.clone())),
            (
                t("cabundle"),
                Value::Array(self.cabundle.iter().cloned().map(Value::Bytes).collect()),
            ),
            (t("public_key"), opt(&self.public_key)),
            (t("user_data"), opt(&self.user_data)),
            (t("nonce"), opt(&self.nonce)),
        ]);
        let mut out = Vec::new();
        let _ = ciborium::ser::into_writer(&v, &mut out);
        out
    }
}
