//! OCI image encryption (ocicrypt): layers whose media type ends in `+encrypted`, as skopeo,
//! buildah and containerd make them.
//!
//! Such a layer's blob is its ordinary (compressed) blob under AES-256-CTR, authenticated by
//! HMAC-SHA256 over the ciphertext (encrypt-then-MAC). The symmetric key and the counter's
//! nonce are in a small JSON document (the "private options"), wrapped for each recipient in
//! the layer's annotations: `org.opencontainers.image.enc.keys.jwe` holds, base64, a JWE in
//! JSON serialization (RFC 7516) with RSA-OAEP (or RSA-OAEP-256) key wrapping and A256GCM
//! content encryption; `org.opencontainers.image.enc.pubopts` holds the cipher's name and the
//! HMAC. The manifest that carries both is verified against the CID like every other byte.
//!
//! The JWE is read here rather than with a JOSE crate: the ones on crates.io either bring
//! OpenSSL or accept every algorithm JOSE names. This reader takes exactly the one shape
//! ocicrypt writes, bounded (it lives inside the already size-capped manifest, and at most
//! [`MAX_RECIPIENTS`] recipients are tried), with AWS-LC's constant-time RSA-OAEP and
//! AES-GCM doing the cryptography.

use std::collections::BTreeMap;
use std::fmt;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use aws_lc_rs::rsa::{
    OaepAlgorithm, OaepPrivateDecryptingKey, PrivateDecryptingKey, OAEP_SHA1_MGF1SHA1,
    OAEP_SHA256_MGF1SHA256,
};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use oci_spec::image::Descriptor;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

/// The media-type suffix of an encrypted layer.
pub const ENCRYPTED_SUFFIX: &str = "+encrypted";
/// The annotation prefix of a layer's wrapped keys, one annotation per wrapping scheme.
pub const ANN_KEYS_PREFIX: &str = "org.opencontainers.image.enc.keys.";
/// The JWE-wrapped keys.
pub const ANN_KEYS_JWE: &str = "org.opencontainers.image.enc.keys.jwe";
/// The public options: cipher name and HMAC.
pub const ANN_PUBOPTS: &str = "org.opencontainers.image.enc.pubopts";
/// The only layer cipher ocicrypt defines.
pub const CIPHER: &str = "AES_256_CTR_HMAC_SHA256";
/// Recipients tried per layer, across all of its JWEs.
pub const MAX_RECIPIENTS: usize = 64;
/// Recipients tried per image: each costs an RSA private-key operation.
pub const MAX_IMAGE_RECIPIENTS: usize = 1024;
/// Bytes of a private key file.
pub const MAX_KEY_FILE: u64 = 64 << 10;

/// Why an encrypted layer cannot be read.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each variant's #[error] message is its documentation
pub enum CryptError {
    #[error("{} encrypted (layer {}); give the private key that opens them (--decryption-key FILE, or [image] decryption_key in the configuration)", if .0.len() == 1 { "this image has a layer that is" } else { "this image has layers that are" }, .0.iter().map(|(i, d)| format!("{i} {d}")).collect::<Vec<_>>().join(", layer "))]
    NoKey(Vec<(usize, String)>),
    #[error("layer {index} ({digest}) is encrypted, but none of its {recipients} recipient(s) is this key")]
    WrongKey {
        index: usize,
        digest: String,
        recipients: usize,
    },
    #[error("layer {index} ({digest}): its encryption annotations are malformed: {reason}")]
    Malformed {
        index: usize,
        digest: String,
        reason: String,
    },
    #[error("layer {index} ({digest}): {reason}")]
    Unsupported {
        index: usize,
        digest: String,
        reason: String,
    },
    #[error("the decryption key {what} {reason}")]
    Key { what: String, reason: String },
}

/// Whether a layer's media type says it is encrypted.
pub fn is_encrypted(desc: &Descriptor) -> bool {
    desc.media_type().to_string().ends_with(ENCRYPTED_SUFFIX)
}

/// What a verifier or `inspect` can see of an encrypted layer without its key.
#[derive(Debug, Clone, Serialize)]
pub struct Encryption {
    /// The layer cipher the public options name (`AES_256_CTR_HMAC_SHA256`).
    pub cipher: Option<String>,
    /// One line per recipient: the wrapping scheme, the key-wrapping algorithm and, for RSA,
    /// the size of the recipient's key (all a JWE shows of whom it is for).
    pub recipients: Vec<String>,
}

/// The encryption of a layer, or `None` for a clear one.
pub fn describe(desc: &Descriptor) -> Option<Encryption> {
    if !is_encrypted(desc) {
        return None;
    }
    let ann = desc.annotations().clone().unwrap_or_default();
    let cipher = ann
        .get(ANN_PUBOPTS)
        .and_then(|p| STANDARD.decode(p).ok())
        .and_then(|p| serde_json::from_slice::<PubOpts>(&p).ok())
        .map(|p| p.cipher);
    let mut recipients = Vec::new();
    for (k, v) in &ann {
        let Some(scheme) = k.strip_prefix(ANN_KEYS_PREFIX) else {
            continue;
        };
        if scheme != "jwe" {
            let n = v.split(',').filter(|s| !s.is_empty()).count();
            for _ in 0..n {
                recipients.push(format!("{scheme} (not supported for decryption)"));
            }
            continue;
        }
        for jwe in v.split(',').filter(|s| !s.is_empty()) {
            match parse_jwe(jwe) {
                Ok(j) => recipients.extend(
                    j.recipients
                        .iter()
                        .map(|r| format!("jwe {} {}-bit", r.alg, r.encrypted_key.len() * 8)),
                ),
                Err(e) => recipients.push(format!("jwe (malformed: {e})")),
            }
        }
    }
    Some(Encryption { cipher, recipients })
}

/// An RSA private key that unwraps layer keys; it never leaves memory.
pub struct DecryptionKey(OaepPrivateDecryptingKey);

impl fmt::Debug for DecryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DecryptionKey(..)")
    }
}

impl DecryptionKey {
    /// Reads a PEM private key: PKCS#8 (`PRIVATE KEY`, what `openssl genrsa` writes) or
    /// PKCS#1 (`RSA PRIVATE KEY`). `what` names it in errors (a file, a secret's name).
    pub fn from_pem(pem: &[u8], what: &str) -> Result<Self, CryptError> {
        let err = |reason: &str| CryptError::Key {
            what: what.to_string(),
            reason: reason.to_string(),
        };
        let text = std::str::from_utf8(pem).map_err(|_| err("is not PEM text"))?;
        let (label, der) = pem_block(text).ok_or_else(|| err("has no PEM private key block"))?;
        let pkcs8 = match label {
            "PRIVATE KEY" => der,
            "RSA PRIVATE KEY" => pkcs1_to_pkcs8(&der),
            "ENCRYPTED PRIVATE KEY" => {
                return Err(err(
                    "is encrypted with a passphrase; give it unencrypted (openssl pkey -in KEY -out PLAIN)",
                ))
            }
            other => return Err(err(&format!("is a {other:?} PEM block, not an RSA private key"))),
        };
        let key = PrivateDecryptingKey::from_pkcs8(&pkcs8).map_err(|e| {
            err(&format!(
                "is not an RSA private key of 2048 to 8192 bits ({e})"
            ))
        })?;
        let key = OaepPrivateDecryptingKey::new(key).map_err(|_| err("cannot decrypt OAEP"))?;
        Ok(DecryptionKey(key))
    }
}

/// The first PEM block: its label and its bytes, wiped when dropped.
fn pem_block(text: &str) -> Option<(&str, Zeroizing<Vec<u8>>)> {
    let start = text.find("-----BEGIN ")?;
    let rest = &text[start + 11..];
    let label_end = rest.find("-----")?;
    let label = &rest[..label_end];
    let body = &rest[label_end + 5..];
    let end = body.find(&format!("-----END {label}-----"))?;
    let b64: Zeroizing<String> = Zeroizing::new(
        body[..end]
            .chars()
            .filter(|c| !c.is_ascii_whitespace())
            .collect(),
    );
    let der = STANDARD.decode(b64.as_bytes()).ok()?;
    Some((label, Zeroizing::new(der)))
}

/// Wraps an RSAPrivateKey (PKCS#1) in a PrivateKeyInfo (PKCS#8), which is what AWS-LC parses.
fn pkcs1_to_pkcs8(pkcs1: &[u8]) -> Zeroizing<Vec<u8>> {
    fn tlv(tag: u8, body: &[u8], out: &mut Vec<u8>) {
        out.push(tag);
        let n = body.len();
        match u8::try_from(n) {
            Ok(short) if short < 0x80 => out.push(short),
            _ => {
                let bytes = n.to_be_bytes();
                let skip = bytes.iter().take_while(|b| **b == 0).count();
                // At most 8 length octets: the long form's count always fits.
                out.push(0x80 | u8::try_from(bytes.len() - skip).unwrap_or(8));
                out.extend_from_slice(&bytes[skip..]);
            }
        }
        out.extend_from_slice(body);
    }
    // version 0, AlgorithmIdentifier { rsaEncryption, NULL }
    const HEAD: &[u8] = &[
        0x02, 0x01, 0x00, 0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01,
        0x01, 0x05, 0x00,
    ];
    let mut body = Zeroizing::new(HEAD.to_vec());
    tlv(0x04, pkcs1, &mut body);
    let mut out = Zeroizing::new(Vec::with_capacity(body.len() + 8));
    tlv(0x30, &body, &mut out);
    out
}

/// What opens one encrypted layer: its AES-256-CTR key and nonce, the HMAC its ciphertext
/// must have, and the digest of the blob it decrypts to.
pub struct LayerKey {
    /// The AES-256 key, also the HMAC key (as ocicrypt uses it).
    pub symkey: Zeroizing<[u8; 32]>,
    /// The counter block's initial value.
    pub nonce: [u8; 16],
    /// HMAC-SHA256 of the ciphertext, from the public options.
    pub hmac: [u8; 32],
}

impl fmt::Debug for LayerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LayerKey(..)")
    }
}

/// The keys of an image's layers, by index; `None` for a clear layer.
#[derive(Debug, Default)]
pub struct LayerKeys(pub Vec<Option<LayerKey>>);

impl LayerKeys {
    /// The key of layer `i`, if it is encrypted and was opened.
    pub fn get(&self, i: usize) -> Option<&LayerKey> {
        self.0.get(i).and_then(Option::as_ref)
    }
}

/// Opens the key of every encrypted layer among `layers` (bottom first) with `key`. Without a
/// key, an image with encrypted layers is refused naming them all, before anything is fetched.
pub fn open_layers<'a>(
    layers: impl IntoIterator<Item = &'a Descriptor>,
    key: Option<&DecryptionKey>,
) -> Result<LayerKeys, CryptError> {
    let layers: Vec<&Descriptor> = layers.into_iter().collect();
    let encrypted: Vec<(usize, String)> = layers
        .iter()
        .enumerate()
        .filter(|(_, d)| is_encrypted(d))
        .map(|(i, d)| (i, d.digest().to_string()))
        .collect();
    let Some(key) = key else {
        if encrypted.is_empty() {
            return Ok(LayerKeys::default());
        }
        return Err(CryptError::NoKey(encrypted));
    };
    let mut keys = Vec::with_capacity(layers.len());
    let mut budget = MAX_IMAGE_RECIPIENTS;
    for (i, d) in layers.iter().enumerate() {
        keys.push(if is_encrypted(d) {
            Some(open_layer(i, d, key, &mut budget)?)
        } else {
            None
        });
    }
    Ok(LayerKeys(keys))
}

#[derive(Deserialize)]
struct PubOpts {
    cipher: String,
    #[serde(default)]
    hmac: Option<String>,
}

#[derive(Deserialize)]
struct PrivOpts {
    symkey: String,
    #[serde(default)]
    hmac: Option<String>,
    #[serde(default)]
    cipheroptions: BTreeMap<String, String>,
}

impl Drop for PrivOpts {
    fn drop(&mut self) {
        self.symkey.zeroize();
    }
}

#[derive(Deserialize)]
struct JweJson {
    protected: String,
    #[serde(default)]
    header: Option<JweHeader>,
    #[serde(default)]
    encrypted_key: Option<String>,
    #[serde(default)]
    recipients: Option<Vec<JweRecipientJson>>,
    #[serde(default)]
    aad: Option<String>,
    iv: String,
    ciphertext: String,
    tag: String,
}

#[derive(Deserialize)]
struct JweRecipientJson {
    #[serde(default)]
    header: Option<JweHeader>,
    encrypted_key: String,
}

#[derive(Deserialize, Default)]
struct JweHeader {
    #[serde(default)]
    alg: Option<String>,
    #[serde(default)]
    enc: Option<String>,
    #[serde(default)]
    zip: Option<String>,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

struct Jwe {
    /// The protected header as it appears (base64url): with `aad`, the GCM's additional data.
    protected_b64: String,
    aad: Option<String>,
    recipients: Vec<JweRecipient>,
    iv: Vec<u8>,
    ciphertext: Vec<u8>,
    tag: Vec<u8>,
}

struct JweRecipient {
    alg: String,
    encrypted_key: Vec<u8>,
}

/// One JWE of the `keys.jwe` annotation (base64 of its JSON serialization), in the one shape
/// this reader accepts: A256GCM content encryption, RSA-OAEP or RSA-OAEP-256 key wrapping, no
/// compression and no critical extensions.
fn parse_jwe(b64: &str) -> Result<Jwe, String> {
    let json = STANDARD
        .decode(b64.trim())
        .map_err(|e| format!("the JWE is not base64 ({e})"))?;
    let j: JweJson =
        serde_json::from_slice(&json).map_err(|e| format!("the JWE is not JWE JSON ({e})"))?;
    let b64u = |what: &str, s: &str| {
        URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|e| format!("the JWE's {what} is not base64url ({e})"))
    };
    let protected: JweHeader = serde_json::from_slice(&b64u("protected header", &j.protected)?)
        .map_err(|e| format!("the JWE's protected header is not JSON ({e})"))?;
    let shared = j.header.unwrap_or_default();
    // The general serialization lists its recipients; go-jose also repeats the first one's
    // key at the top, which the list already holds.
    let listed: Vec<JweRecipientJson> = match (j.recipients, j.encrypted_key) {
        (Some(r), _) if !r.is_empty() => r,
        (None, Some(k)) => vec![JweRecipientJson {
            header: None,
            encrypted_key: k,
        }],
        _ => return Err("the JWE has neither one encrypted_key nor a recipients list".into()),
    };
    if listed.len() > MAX_RECIPIENTS {
        return Err(format!(
            "the JWE has {} recipients, more than {MAX_RECIPIENTS}",
            listed.len()
        ));
    }
    let mut recipients = Vec::with_capacity(listed.len());
    for r in listed {
        let h = r.header.unwrap_or_default();
        for hdr in [&protected, &shared, &h] {
            if hdr.zip.is_some() || hdr.crit.is_some() {
                return Err("the JWE uses compression or critical extensions".into());
            }
        }
        let pick = |f: fn(&JweHeader) -> &Option<String>| {
            f(&h)
                .clone()
                .or_else(|| f(&shared).clone())
                .or_else(|| f(&protected).clone())
        };
        let alg = pick(|h| &h.alg).ok_or("a JWE recipient names no alg")?;
        let enc = pick(|h| &h.enc).ok_or("the JWE names no enc")?;
        if enc != "A256GCM" {
            return Err(format!(
                "the JWE's content encryption is {enc:?}; A256GCM is supported"
            ));
        }
        recipients.push(JweRecipient {
            alg,
            encrypted_key: b64u("encrypted_key", &r.encrypted_key)?,
        });
    }
    Ok(Jwe {
        protected_b64: j.protected,
        aad: j.aad,
        recipients,
        iv: b64u("iv", &j.iv)?,
        ciphertext: b64u("ciphertext", &j.ciphertext)?,
        tag: b64u("tag", &j.tag)?,
    })
}

fn oaep(alg: &str) -> Option<&'static OaepAlgorithm> {
    match alg {
        "RSA-OAEP" => Some(&OAEP_SHA1_MGF1SHA1),
        "RSA-OAEP-256" => Some(&OAEP_SHA256_MGF1SHA256),
        _ => None,
    }
}

/// The private options of `jwe` if one of its recipients is `key`.
fn open_jwe(jwe: &Jwe, key: &DecryptionKey) -> Option<Zeroizing<Vec<u8>>> {
    if jwe.iv.len() != 12 || jwe.tag.len() != 16 {
        return None;
    }
    let mut cek = Zeroizing::new(vec![0u8; key.0.min_output_size()]);
    for r in &jwe.recipients {
        let Some(alg) = oaep(&r.alg) else { continue };
        let Ok(k) = key.0.decrypt(alg, &r.encrypted_key, &mut cek, None) else {
            continue;
        };
        if k.len() != 32 {
            continue;
        }
        let Ok(unbound) = UnboundKey::new(&AES_256_GCM, k) else {
            continue;
        };
        let gcm = LessSafeKey::new(unbound);
        let Ok(nonce) = Nonce::try_assume_unique_for_key(&jwe.iv) else {
            continue;
        };
        // RFC 7516 5.2: the additional data is the protected header as sent, then "." and
        // the aad member when there is one.
        let mut aad = jwe.protected_b64.clone().into_bytes();
        if let Some(a) = &jwe.aad {
            aad.push(b'.');
            aad.extend_from_slice(a.as_bytes());
        }
        let mut buf = Zeroizing::new(jwe.ciphertext.clone());
        buf.extend_from_slice(&jwe.tag);
        if let Ok(pt) = gcm.open_in_place(nonce, Aad::from(&aad[..]), &mut buf) {
            return Some(Zeroizing::new(pt.to_vec()));
        }
    }
    None
}

/// Opens the key of encrypted layer `index`.
/// `budget` is what is left of [`MAX_IMAGE_RECIPIENTS`].
fn open_layer(
    index: usize,
    d: &Descriptor,
    key: &DecryptionKey,
    budget: &mut usize,
) -> Result<LayerKey, CryptError> {
    let digest = d.digest().to_string();
    let malformed = |reason: String| CryptError::Malformed {
        index,
        digest: digest.clone(),
        reason,
    };
    let ann = d.annotations().clone().unwrap_or_default();
    let pubopts: PubOpts = ann
        .get(ANN_PUBOPTS)
        .ok_or_else(|| malformed(format!("no {ANN_PUBOPTS} annotation")))
        .and_then(|p| {
            STANDARD
                .decode(p)
                .map_err(|e| malformed(format!("{ANN_PUBOPTS} is not base64 ({e})")))
        })
        .and_then(|p| {
            serde_json::from_slice(&p)
                .map_err(|e| malformed(format!("{ANN_PUBOPTS} is not its JSON ({e})")))
        })?;
    if pubopts.cipher != CIPHER {
        return Err(CryptError::Unsupported {
            index,
            digest,
            reason: format!(
                "its layer cipher is {:?}; {CIPHER} is supported",
                pubopts.cipher
            ),
        });
    }
    let Some(jwes) = ann.get(ANN_KEYS_JWE) else {
        let schemes: Vec<&str> = ann
            .keys()
            .filter_map(|k| k.strip_prefix(ANN_KEYS_PREFIX))
            .collect();
        return Err(CryptError::Unsupported {
            index,
            digest,
            reason: format!(
                "its keys are wrapped only for {schemes:?}; jwe (skopeo --encryption-key jwe:PUBKEY.pem) is supported"
            ),
        });
    };
    let mut tried = 0usize;
    let mut opened = None;
    for b64 in jwes.split(',').filter(|s| !s.is_empty()) {
        let jwe = parse_jwe(b64).map_err(malformed)?;
        tried += jwe.recipients.len();
        if tried > MAX_RECIPIENTS {
            return Err(malformed(format!("more than {MAX_RECIPIENTS} recipients")));
        }
        *budget = budget.checked_sub(jwe.recipients.len()).ok_or_else(|| {
            malformed(format!(
                "the image's layers have more than {MAX_IMAGE_RECIPIENTS} recipients in all"
            ))
        })?;
        if let Some(pt) = open_jwe(&jwe, key) {
            opened = Some(pt);
            break;
        }
    }
    let Some(plain) = opened else {
        return Err(CryptError::WrongKey {
            index,
            digest,
            recipients: tried,
        });
    };
    let opts: PrivOpts = serde_json::from_slice(&plain)
        .map_err(|e| malformed(format!("the unwrapped options are not their JSON ({e})")))?;
    let symkey = Zeroizing::new(STANDARD.decode(&opts.symkey).unwrap_or_default());
    let symkey: [u8; 32] = symkey[..]
        .try_into()
        .map_err(|_| malformed("the layer key is not 32 bytes".into()))?;
    let nonce: [u8; 16] = opts
        .cipheroptions
        .get("nonce")
        .and_then(|n| STANDARD.decode(n).ok())
        .and_then(|n| n.try_into().ok())
        .ok_or_else(|| malformed("the layer nonce is missing or not 16 bytes".into()))?;
    let hmac: [u8; 32] = pubopts
        .hmac
        .as_ref()
        .or(opts.hmac.as_ref())
        .and_then(|h| STANDARD.decode(h).ok())
        .and_then(|h| h.try_into().ok())
        .ok_or_else(|| malformed("the layer's HMAC is missing or not 32 bytes".into()))?;
    Ok(LayerKey {
        symkey: Zeroizing::new(symkey),
        nonce,
        hmac,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwe(v: serde_json::Value) -> String {
        STANDARD.encode(v.to_string())
    }

    fn protected(h: serde_json::Value) -> String {
        URL_SAFE_NO_PAD.encode(h.to_string())
    }

    #[test]
    fn only_the_jwe_shape_ocicrypt_writes_is_read() {
        let p = protected(serde_json::json!({"alg": "RSA-OAEP", "enc": "A256GCM"}));
        let ok = serde_json::json!({"protected": p, "encrypted_key": "AAAA", "iv": "AAAA", "ciphertext": "AAAA", "tag": "AAAA"});
        let j = parse_jwe(&jwe(ok.clone())).unwrap();
        assert_eq!(j.recipients.len(), 1);
        assert_eq!(j.recipients[0].alg, "RSA-OAEP");
        for (change, want) in [
            (
                serde_json::json!({"protected": protected(serde_json::json!({"alg": "RSA-OAEP", "enc": "A128CBC-HS256"}))}),
                "A256GCM is supported",
            ),
            (
                serde_json::json!({"protected": protected(serde_json::json!({"alg": "RSA-OAEP", "enc": "A256GCM", "zip": "DEF"}))}),
                "compression or critical extensions",
            ),
            (
                serde_json::json!({"encrypted_key": null}),
                "neither one encrypted_key nor a recipients list",
            ),
            (
                serde_json::json!({"recipients": vec![serde_json::json!({"encrypted_key": "AAAA"}); MAX_RECIPIENTS + 1]}),
                "more than 64",
            ),
            (serde_json::json!({"iv": "!!"}), "iv is not base64url"),
        ] {
            let mut v = ok.clone();
            for (k, x) in change.as_object().unwrap() {
                if x.is_null() {
                    v.as_object_mut().unwrap().remove(k);
                } else {
                    v[k] = x.clone();
                }
            }
            let e = parse_jwe(&jwe(v)).err().unwrap();
            assert!(e.contains(want), "{e}");
        }
        assert!(parse_jwe("not base64!").is_err());
    }

    #[test]
    fn a_key_that_is_not_an_unencrypted_rsa_private_key_is_named() {
        for (pem, want) in [
            ("", "has no PEM private key block"),
            (
                "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
                "passphrase",
            ),
            (
                "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
                "\"PUBLIC KEY\" PEM block",
            ),
            (
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                "is not an RSA private key",
            ),
        ] {
            let e = DecryptionKey::from_pem(pem.as_bytes(), "k.pem").unwrap_err();
            assert!(e.to_string().starts_with("the decryption key k.pem "), "{e}");
            assert!(e.to_string().contains(want), "{e}");
        }
    }

    #[test]
    fn pkcs1_is_wrapped_as_pkcs8_with_der_lengths() {
        let short = pkcs1_to_pkcs8(&[0x30, 0x00]);
        assert_eq!(short[..2], [0x30, 22]);
        let long = pkcs1_to_pkcs8(&vec![0u8; 300]);
        // 18 bytes of head, the OCTET STRING's 4-byte header, 300 bytes: a 2-byte long form.
        assert_eq!(long[..4], [0x30, 0x82, 0x01, 0x42]);
        assert_eq!(long.len(), 4 + 18 + 4 + 300);
    }
}
