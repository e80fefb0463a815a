//! CMS EnvelopedData (RFC 5652, section 6) as AWS KMS sends it in `CiphertextForRecipient`:
//! one KeyTransRecipientInfo with RSAES-OAEP-SHA-256 (RFC 8017, RFC 4055) and the content in
//! AES-256-CBC (RFC 3565). Anything else is refused by name, before any key is used.
//!
//! ```text
//! ContentInfo ::= SEQUENCE { contentType id-envelopedData, content [0] EXPLICIT EnvelopedData }
//! EnvelopedData ::= SEQUENCE { version 0 | 2, recipientInfos SET SIZE (1) OF
//!     KeyTransRecipientInfo, encryptedContentInfo EncryptedContentInfo }
//! KeyTransRecipientInfo ::= SEQUENCE { version 0 | 2,
//!     rid issuerAndSerialNumber (v0) | subjectKeyIdentifier [0] IMPLICIT OCTET STRING (v2),
//!     keyEncryptionAlgorithm { id-RSAES-OAEP, RSAES-OAEP-params with SHA-256 and MGF1-SHA-256 },
//!     encryptedKey OCTET STRING }
//! EncryptedContentInfo ::= SEQUENCE { contentType id-data,
//!     contentEncryptionAlgorithm { aes256-CBC, IV OCTET STRING (16) },
//!     encryptedContent [0] IMPLICIT OCTET STRING (primitive, or chunks) }
//! ```
//!
//! `originatorInfo`, `unprotectedAttrs`, other recipient types, several recipients and
//! detached content are refused: KMS sends none of them.

use crate::ber::{tag, Contents, Element, Path, Reader};
use crate::CmsError;

/// Largest envelope read (its whole encoding): room for [`MAX_ENCRYPTED_CONTENT`] in small
/// chunks. KMS's own are a few kilobytes.
pub const MAX_ENVELOPE: usize = 1024 * 1024 + 64 * 1024;
/// Largest encrypted content: a 1 MiB plaintext and its padding block. KMS encrypts at most
/// 4 KiB (`Decrypt`), 1 KiB (`GenerateDataKey`, `GenerateRandom`).
pub const MAX_ENCRYPTED_CONTENT: usize = 1024 * 1024 + 16;
/// Largest wrapped key: the modulus of an RSA-4096 key (ours is 2048 bits).
pub const MAX_ENCRYPTED_KEY: usize = 512;
/// Largest subject key identifier (AWS's is a 32-byte hash, openssl's a 20-byte one).
pub const MAX_KEY_IDENTIFIER: usize = 64;
/// The AES block, and so the IV's length.
pub const AES_BLOCK: usize = 16;

/// Encoded object identifiers (the contents octets of an OID element).
mod oid {
    /// id-envelopedData, 1.2.840.113549.1.7.3.
    pub const ENVELOPED_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x03];
    /// id-data, 1.2.840.113549.1.7.1.
    pub const DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01];
    /// rsaEncryption (PKCS #1 v1.5), 1.2.840.113549.1.1.1.
    pub const RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    /// id-RSAES-OAEP, 1.2.840.113549.1.1.7.
    pub const RSAES_OAEP: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x07];
    /// id-mgf1, 1.2.840.113549.1.1.8.
    pub const MGF1: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x08];
    /// id-pSpecified, 1.2.840.113549.1.1.9.
    pub const P_SPECIFIED: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x09];
    /// id-sha1, 1.3.14.3.2.26.
    pub const SHA1: &[u8] = &[0x2b, 0x0e, 0x03, 0x02, 0x1a];
    /// id-sha256, 2.16.840.1.101.3.4.2.1.
    pub const SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
    /// id-sha384, 2.16.840.1.101.3.4.2.2.
    pub const SHA384: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02];
    /// id-sha512, 2.16.840.1.101.3.4.2.3.
    pub const SHA512: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03];
    /// id-aes128-CBC, 2.16.840.1.101.3.4.1.2.
    pub const AES128_CBC: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x02];
    /// id-aes192-CBC, 2.16.840.1.101.3.4.1.22.
    pub const AES192_CBC: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x16];
    /// id-aes256-CBC, 2.16.840.1.101.3.4.1.42.
    pub const AES256_CBC: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x2a];
    /// id-aes256-GCM, 2.16.840.1.101.3.4.1.46.
    pub const AES256_GCM: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x2e];

    /// Names of the identifiers an error may show.
    pub const NAMES: &[(&[u8], &str)] = &[
        (ENVELOPED_DATA, "id-envelopedData"),
        (DATA, "id-data"),
        (RSA_ENCRYPTION, "rsaEncryption (PKCS #1 v1.5)"),
        (RSAES_OAEP, "id-RSAES-OAEP"),
        (MGF1, "id-mgf1"),
        (P_SPECIFIED, "id-pSpecified"),
        (SHA1, "SHA-1"),
        (SHA256, "SHA-256"),
        (SHA384, "SHA-384"),
        (SHA512, "SHA-512"),
        (AES128_CBC, "AES-128-CBC"),
        (AES192_CBC, "AES-192-CBC"),
        (AES256_CBC, "AES-256-CBC"),
        (AES256_GCM, "AES-256-GCM"),
    ];
}

/// How an envelope names its recipient. Informative only: whether the content key was wrapped
/// to this key is what the RSA unwrap finds out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecipientId {
    /// `subjectKeyIdentifier` (KeyTransRecipientInfo version 2: what KMS and `openssl cms
    /// -keyid` send).
    SubjectKeyIdentifier(Vec<u8>),
    /// `issuerAndSerialNumber` (version 0: `openssl cms` without `-keyid`), its encoding as
    /// received.
    IssuerAndSerialNumber(Vec<u8>),
}

/// What an EnvelopedData carries for its one recipient, parsed and checked, nothing decrypted.
#[derive(Debug)]
pub struct Envelope {
    version: u8,
    recipient: RecipientId,
    encrypted_key: Vec<u8>,
    encrypted_key_offset: usize,
    iv: [u8; AES_BLOCK],
    encrypted_content: Vec<u8>,
    encrypted_content_offset: usize,
}

impl Envelope {
    /// Parses a `CiphertextForRecipient`: a ContentInfo holding an EnvelopedData of the one
    /// shape above (BER or DER), and nothing after it.
    pub fn parse(input: &[u8]) -> Result<Envelope, CmsError> {
        if input.len() > MAX_ENVELOPE {
            return Err(CmsError::InputTooLarge {
                len: input.len(),
                max: MAX_ENVELOPE,
            });
        }
        let mut r = Reader::new(input);
        let top = r.top();
        let path = Path::root("ContentInfo");
        let ci = r.expect(&top, tag::SEQUENCE, "a SEQUENCE", &path)?;
        let ci_contents = r.enter(&ci, &top, &path)?;
        let p = path.child("contentType");
        expect_oid(
            &mut r,
            &ci_contents,
            oid::ENVELOPED_DATA,
            "content type",
            &p,
        )?;
        let p = path.child("content");
        let explicit = r.expect(&ci_contents, tag::CONTEXT_0_CONSTRUCTED, "[0] EXPLICIT", &p)?;
        let explicit_contents = r.enter(&explicit, &ci_contents, &p)?;
        let envelope = enveloped_data(&mut r, &explicit_contents, &p.child("EnvelopedData"))?;
        r.finish(&explicit_contents, &p)?;
        r.finish(&ci_contents, &path)?;
        if r.pos() != input.len() {
            return Err(CmsError::TrailingData {
                path: "after ContentInfo".into(),
                offset: r.pos(),
                tag: input.get(r.pos()).copied().unwrap_or_default(),
            });
        }
        Ok(envelope)
    }

    /// The EnvelopedData's version (0 or 2).
    pub fn version(&self) -> u8 {
        self.version
    }

    /// How the envelope names its recipient.
    pub fn recipient(&self) -> &RecipientId {
        &self.recipient
    }

    /// The content-encryption key, wrapped with RSAES-OAEP-SHA-256.
    pub fn encrypted_key(&self) -> &[u8] {
        &self.encrypted_key
    }

    /// The AES-256-CBC initialization vector.
    pub fn iv(&self) -> &[u8; AES_BLOCK] {
        &self.iv
    }

    /// The encrypted content, its chunks concatenated.
    pub fn encrypted_content(&self) -> &[u8] {
        &self.encrypted_content
    }

    /// Where the wrapped key's element starts in the input.
    pub(crate) fn encrypted_key_offset(&self) -> usize {
        self.encrypted_key_offset
    }

    /// Where the encrypted content's element starts in the input.
    pub(crate) fn encrypted_content_offset(&self) -> usize {
        self.encrypted_content_offset
    }

    /// The encrypted content, moved out (to be decrypted in place).
    pub(crate) fn take_encrypted_content(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.encrypted_content)
    }
}

fn enveloped_data(r: &mut Reader, parent: &Contents, path: &Path) -> Result<Envelope, CmsError> {
    let ed = r.expect(parent, tag::SEQUENCE, "a SEQUENCE", path)?;
    let c = r.enter(&ed, parent, path)?;

    let p = path.child("version");
    let version_at = r.pos();
    let version = small_version(r, &c, &p)?;

    let p = path.child("recipientInfos");
    let set = match r.next(&c, &p)? {
        Some(e) if e.tag == tag::SET => e,
        Some(e) if e.tag == tag::CONTEXT_0_CONSTRUCTED => {
            return Err(unsupported(
                &path.child("originatorInfo"),
                e.offset,
                "originatorInfo",
                "present".into(),
                "none (KMS sends none)",
            ))
        }
        Some(e) => return Err(unexpected(&p, &e, "a SET of RecipientInfo")),
        None => return Err(missing(&p, r.pos(), "recipientInfos")),
    };
    let set_contents = r.enter(&set, &c, &p)?;
    let ri_path = p.child("KeyTransRecipientInfo");
    let ri = match r.next(&set_contents, &ri_path)? {
        Some(e) if e.tag == tag::SEQUENCE => e,
        Some(e) => {
            let kind = match e.tag {
                0xA1 => "KeyAgreeRecipientInfo ([1])".to_string(),
                0xA2 => "KEKRecipientInfo ([2])".to_string(),
                0xA3 => "PasswordRecipientInfo ([3])".to_string(),
                0xA4 => "OtherRecipientInfo ([4])".to_string(),
                t => format!("tag 0x{t:02x}"),
            };
            return Err(unsupported(
                &p,
                e.offset,
                "recipient type",
                kind,
                "KeyTransRecipientInfo",
            ));
        }
        None => return Err(missing(&ri_path, r.pos(), "a RecipientInfo")),
    };
    let (ri_version, recipient, encrypted_key, encrypted_key_offset) =
        key_trans_recipient_info(r, &ri, &set_contents, &ri_path)?;
    if let Some(more) = r.next(&set_contents, &p)? {
        return Err(unsupported(
            &p,
            more.offset,
            "number of recipients",
            "more than one".into(),
            "exactly one",
        ));
    }
    // RFC 5652 6.1: with no originatorInfo or attributes, the EnvelopedData's version is 0
    // when every RecipientInfo is version 0, and 2 otherwise.
    if version != ri_version {
        return Err(unsupported(
            &path.child("version"),
            version_at,
            "version",
            format!("EnvelopedData version {version} with a version {ri_version} recipient"),
            "the version of its recipient (RFC 5652 6.1)",
        ));
    }

    let p = path.child("encryptedContentInfo");
    let eci = r.expect(&c, tag::SEQUENCE, "a SEQUENCE", &p)?;
    let (iv, encrypted_content, encrypted_content_offset) =
        encrypted_content_info(r, &eci, &c, &p)?;

    if let Some(e) = r.next(&c, path)? {
        let what = if e.tag == tag::CONTEXT_1_CONSTRUCTED {
            "unprotectedAttrs"
        } else {
            "element after encryptedContentInfo"
        };
        return Err(unsupported(path, e.offset, what, "present".into(), "none"));
    }
    Ok(Envelope {
        version,
        recipient,
        encrypted_key,
        encrypted_key_offset,
        iv,
        encrypted_content,
        encrypted_content_offset,
    })
}

/// A KeyTransRecipientInfo: its version, recipient, wrapped key and that key's offset.
fn key_trans_recipient_info(
    r: &mut Reader,
    ri: &Element,
    parent: &Contents,
    path: &Path,
) -> Result<(u8, RecipientId, Vec<u8>, usize), CmsError> {
    let c = r.enter(ri, parent, path)?;
    let p = path.child("version");
    let version_at = r.pos();
    let version = small_version(r, &c, &p)?;

    let p = path.child("rid");
    let rid = r
        .next(&c, &p)?
        .ok_or_else(|| missing(&p, r.pos(), "a recipient identifier"))?;
    let (recipient, rid_version) = match rid.tag {
        tag::SEQUENCE => {
            let start = rid.offset;
            r.skip(&rid, &c, &p.child("issuerAndSerialNumber"))?;
            let raw = r.input_slice(start, r.pos());
            (RecipientId::IssuerAndSerialNumber(raw.to_vec()), 0)
        }
        tag::CONTEXT_0 | tag::CONTEXT_0_CONSTRUCTED => {
            let mut ski = Vec::new();
            r.octets(
                &rid,
                &c,
                MAX_KEY_IDENTIFIER,
                &p.child("subjectKeyIdentifier"),
                &mut ski,
            )?;
            (RecipientId::SubjectKeyIdentifier(ski), 2)
        }
        _ => {
            return Err(unexpected(
                &p,
                &rid,
                "issuerAndSerialNumber or [0] subjectKeyIdentifier",
            ))
        }
    };
    // RFC 5652 6.2.1: version 0 with issuerAndSerialNumber, 2 with subjectKeyIdentifier.
    if version != rid_version {
        return Err(unsupported(
            &path.child("version"),
            version_at,
            "version",
            format!("{version} with a version {rid_version} recipient identifier"),
            "0 with issuerAndSerialNumber, 2 with subjectKeyIdentifier (RFC 5652 6.2.1)",
        ));
    }

    key_encryption_algorithm(r, &c, &path.child("keyEncryptionAlgorithm"))?;

    let p = path.child("encryptedKey");
    let at = r.pos();
    let e = r
        .next(&c, &p)?
        .ok_or_else(|| missing(&p, at, "encryptedKey"))?;
    if e.tag != tag::OCTET_STRING && e.tag != tag::OCTET_STRING_CONSTRUCTED {
        return Err(unexpected(&p, &e, "an OCTET STRING"));
    }
    let mut encrypted_key = Vec::new();
    r.octets(&e, &c, MAX_ENCRYPTED_KEY, &p, &mut encrypted_key)?;
    r.finish(&c, path)?;
    Ok((version, recipient, encrypted_key, e.offset))
}

/// id-RSAES-OAEP with SHA-256, MGF1-SHA-256 and an empty label: KMS's `RSAES_OAEP_SHA_256`.
/// The parameters' defaults are SHA-1, so absent parameters are refused.
fn key_encryption_algorithm(
    r: &mut Reader,
    parent: &Contents,
    path: &Path,
) -> Result<(), CmsError> {
    let alg = r.expect(parent, tag::SEQUENCE, "an AlgorithmIdentifier", path)?;
    let c = r.enter(&alg, parent, path)?;
    let p = path.child("algorithm");
    let (found, at) = read_oid(r, &c, &p)?;
    if found != oid::RSAES_OAEP {
        return Err(unsupported(
            &p,
            at,
            "key encryption algorithm",
            oid_name(found),
            "id-RSAES-OAEP (1.2.840.113549.1.1.7) with SHA-256",
        ));
    }
    let p = path.child("parameters");
    let params = match r.next(&c, &p)? {
        Some(e) if e.tag == tag::SEQUENCE => e,
        Some(e) if e.tag == tag::NULL => {
            return Err(sha1_default(&p.child("hashAlgorithm"), e.offset))
        }
        Some(e) => return Err(unexpected(&p, &e, "RSAES-OAEP-params")),
        None => return Err(sha1_default(&p.child("hashAlgorithm"), r.pos())),
    };
    let pc = r.enter(&params, &c, &p)?;

    // hashAlgorithm [0]: SHA-256 (absent is SHA-1).
    let hp = p.child("hashAlgorithm");
    let mut next = r.next(&pc, &hp)?;
    match next {
        Some(e) if e.tag == tag::CONTEXT_0_CONSTRUCTED => {
            let hc = r.enter(&e, &pc, &hp)?;
            digest_algorithm(r, &hc, "OAEP hash", &hp)?;
            r.finish(&hc, &hp)?;
            next = r.next(&pc, &p)?;
        }
        _ => return Err(sha1_default(&hp, next.map_or(r.pos(), |e| e.offset))),
    }

    // maskGenAlgorithm [1]: MGF1 with SHA-256 (absent is MGF1 with SHA-1).
    let mp = p.child("maskGenAlgorithm");
    match next {
        Some(e) if e.tag == tag::CONTEXT_1_CONSTRUCTED => {
            let mc = r.enter(&e, &pc, &mp)?;
            let mgf = r.expect(&mc, tag::SEQUENCE, "an AlgorithmIdentifier", &mp)?;
            let mgf_c = r.enter(&mgf, &mc, &mp)?;
            let ap = mp.child("algorithm");
            let (found, at) = read_oid(r, &mgf_c, &ap)?;
            if found != oid::MGF1 {
                return Err(unsupported(
                    &ap,
                    at,
                    "mask generation function",
                    oid_name(found),
                    "id-mgf1 (1.2.840.113549.1.1.8) with SHA-256",
                ));
            }
            digest_algorithm(r, &mgf_c, "MGF1 hash", &mp.child("parameters"))?;
            r.finish(&mgf_c, &mp)?;
            r.finish(&mc, &mp)?;
            next = r.next(&pc, &p)?;
        }
        _ => {
            return Err(unsupported(
                &mp,
                next.map_or(r.pos(), |e| e.offset),
                "MGF1 hash",
                "SHA-1 (the default, parameters absent)".into(),
                "SHA-256",
            ))
        }
    }

    // pSourceAlgorithm [2]: absent, or id-pSpecified with an empty label.
    if let Some(e) = next {
        let sp = p.child("pSourceAlgorithm");
        if e.tag != tag::CONTEXT_2_CONSTRUCTED {
            return Err(CmsError::TrailingData {
                path: p.to_string(),
                offset: e.offset,
                tag: e.tag,
            });
        }
        let sc = r.enter(&e, &pc, &sp)?;
        let src = r.expect(&sc, tag::SEQUENCE, "an AlgorithmIdentifier", &sp)?;
        let src_c = r.enter(&src, &sc, &sp)?;
        let ap = sp.child("algorithm");
        let (found, at) = read_oid(r, &src_c, &ap)?;
        if found != oid::P_SPECIFIED {
            return Err(unsupported(
                &ap,
                at,
                "OAEP label source",
                oid_name(found),
                "id-pSpecified",
            ));
        }
        let lp = sp.child("label");
        let l = r.expect(&src_c, tag::OCTET_STRING, "an OCTET STRING", &lp)?;
        let label = r.primitive(&l, &lp)?;
        if !label.is_empty() {
            return Err(unsupported(
                &lp,
                l.offset,
                "OAEP label",
                format!("{} bytes", label.len()),
                "the empty label",
            ));
        }
        r.finish(&src_c, &sp)?;
        r.finish(&sc, &sp)?;
        r.finish(&pc, &p)?;
    }
    r.finish(&c, path)
}

/// An AlgorithmIdentifier naming SHA-256, its parameters NULL or absent (both are seen:
/// AWS sends NULL, openssl omits them).
fn digest_algorithm(
    r: &mut Reader,
    parent: &Contents,
    what: &'static str,
    path: &Path,
) -> Result<(), CmsError> {
    let alg = r.expect(parent, tag::SEQUENCE, "an AlgorithmIdentifier", path)?;
    let c = r.enter(&alg, parent, path)?;
    let ap = path.child("algorithm");
    let (found, at) = read_oid(r, &c, &ap)?;
    if found != oid::SHA256 {
        return Err(unsupported(
            &ap,
            at,
            what,
            oid_name(found),
            "SHA-256 (2.16.840.1.101.3.4.2.1)",
        ));
    }
    let pp = path.child("parameters");
    if let Some(e) = r.next(&c, &pp)? {
        if e.tag != tag::NULL {
            return Err(unexpected(&pp, &e, "NULL or nothing"));
        }
        if !r.primitive(&e, &pp)?.is_empty() {
            return Err(CmsError::Malformed {
                path: pp.to_string(),
                offset: e.offset,
                what: "NULL with contents".into(),
            });
        }
    }
    r.finish(&c, path)
}

/// The EncryptedContentInfo: id-data, AES-256-CBC and its IV, the content (and its offset).
fn encrypted_content_info(
    r: &mut Reader,
    eci: &Element,
    parent: &Contents,
    path: &Path,
) -> Result<([u8; AES_BLOCK], Vec<u8>, usize), CmsError> {
    let c = r.enter(eci, parent, path)?;
    expect_oid(r, &c, oid::DATA, "content type", &path.child("contentType"))?;

    let ap = path.child("contentEncryptionAlgorithm");
    let alg = r.expect(&c, tag::SEQUENCE, "an AlgorithmIdentifier", &ap)?;
    let ac = r.enter(&alg, &c, &ap)?;
    let op = ap.child("algorithm");
    let (found, at) = read_oid(r, &ac, &op)?;
    if found != oid::AES256_CBC {
        return Err(unsupported(
            &op,
            at,
            "content encryption algorithm",
            oid_name(found),
            "AES-256-CBC (2.16.840.1.101.3.4.1.42)",
        ));
    }
    let ip = ap.child("iv");
    let at = r.pos();
    let e = r
        .next(&ac, &ip)?
        .ok_or_else(|| missing(&ip, at, "the IV"))?;
    if e.tag != tag::OCTET_STRING && e.tag != tag::OCTET_STRING_CONSTRUCTED {
        return Err(unexpected(&ip, &e, "an OCTET STRING (the IV)"));
    }
    let mut iv_bytes = Vec::with_capacity(AES_BLOCK);
    r.octets(&e, &ac, AES_BLOCK, &ip, &mut iv_bytes)?;
    let iv: [u8; AES_BLOCK] = iv_bytes.as_slice().try_into().map_err(|_| {
        unsupported(
            &ip,
            e.offset,
            "IV length",
            format!("{} bytes", iv_bytes.len()),
            "16 bytes",
        )
    })?;
    r.finish(&ac, &ap)?;

    let cp = path.child("encryptedContent");
    let at = r.pos();
    let e = match r.next(&c, &cp)? {
        Some(e) if e.tag == tag::CONTEXT_0 || e.tag == tag::CONTEXT_0_CONSTRUCTED => e,
        Some(e) => return Err(unexpected(&cp, &e, "[0] IMPLICIT OCTET STRING")),
        None => {
            return Err(missing(
                &cp,
                at,
                "encryptedContent (detached content is not supported)",
            ))
        }
    };
    let mut content = Vec::new();
    r.octets(&e, &c, MAX_ENCRYPTED_CONTENT, &cp, &mut content)?;
    r.finish(&c, path)?;
    Ok((iv, content, e.offset))
}

/// A version INTEGER of 0 or 2 (an INTEGER's encoding is minimal in BER too).
fn small_version(r: &mut Reader, parent: &Contents, path: &Path) -> Result<u8, CmsError> {
    let e = r.expect(parent, tag::INTEGER, "an INTEGER", path)?;
    let bytes = r.primitive(&e, path)?;
    match bytes {
        [v @ (0 | 2)] => Ok(*v),
        _ => Err(unsupported(
            path,
            e.offset,
            "version",
            integer_text(bytes),
            "0 or 2",
        )),
    }
}

/// An OBJECT IDENTIFIER's contents and the offset of its element.
fn read_oid<'a>(
    r: &mut Reader<'a>,
    parent: &Contents,
    path: &Path,
) -> Result<(&'a [u8], usize), CmsError> {
    let e = r.expect(parent, tag::OID, "an OBJECT IDENTIFIER", path)?;
    Ok((r.primitive(&e, path)?, e.offset))
}

fn expect_oid(
    r: &mut Reader,
    parent: &Contents,
    expected: &'static [u8],
    what: &'static str,
    path: &Path,
) -> Result<(), CmsError> {
    let (found, at) = read_oid(r, parent, path)?;
    if found == expected {
        return Ok(());
    }
    let supported = oid::NAMES
        .iter()
        .find(|(o, _)| *o == expected)
        .map_or("?", |(_, n)| n);
    Err(unsupported(path, at, what, oid_name(found), supported))
}

/// An OID in dotted form, with its name when it is one this module knows.
fn oid_name(bytes: &[u8]) -> String {
    let dotted = dotted(bytes);
    match oid::NAMES.iter().find(|(o, _)| *o == bytes) {
        Some((_, name)) => format!("{name} ({dotted})"),
        None => dotted,
    }
}

/// Dotted decimal form of an OID's contents (for errors; anything odd is shown in hex).
fn dotted(bytes: &[u8]) -> String {
    let hex = || format!("malformed OID 0x{}", hex(bytes));
    if bytes.is_empty() || bytes.len() > 64 || bytes.last().is_some_and(|b| b & 0x80 != 0) {
        return hex();
    }
    let mut arcs: Vec<u64> = Vec::new();
    let mut v: u64 = 0;
    for &b in bytes {
        if v > (u64::MAX >> 7) {
            return hex();
        }
        v = (v << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            arcs.push(v);
            v = 0;
        }
    }
    let mut out = String::new();
    for (i, a) in arcs.iter().enumerate() {
        if i == 0 {
            let (x, y) = match *a {
                a if a < 40 => (0, a),
                a if a < 80 => (1, a - 40),
                a => (2, a - 80),
            };
            out.push_str(&format!("{x}.{y}"));
        } else {
            out.push_str(&format!(".{a}"));
        }
    }
    out
}

fn integer_text(bytes: &[u8]) -> String {
    if bytes.is_empty() || bytes.len() > 8 {
        return format!("an INTEGER of {} bytes", bytes.len());
    }
    let mut v: i64 = if bytes.first().is_some_and(|b| b & 0x80 != 0) {
        -1
    } else {
        0
    };
    for &b in bytes {
        v = (v << 8) | i64::from(b);
    }
    v.to_string()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha1_default(path: &Path, offset: usize) -> CmsError {
    unsupported(
        path,
        offset,
        "OAEP hash",
        "SHA-1 (the default, parameters absent)".into(),
        "SHA-256 (KMS's RSAES_OAEP_SHA_256)",
    )
}

fn unsupported(
    path: &Path,
    offset: usize,
    what: &'static str,
    found: String,
    supported: &'static str,
) -> CmsError {
    CmsError::Unsupported {
        path: path.to_string(),
        offset,
        what,
        found,
        supported,
    }
}

fn unexpected(path: &Path, e: &Element, expected: &'static str) -> CmsError {
    CmsError::UnexpectedTag {
        path: path.to_string(),
        offset: e.offset,
        expected,
        found: e.tag,
    }
}

fn missing(path: &Path, offset: usize, expected: &'static str) -> CmsError {
    CmsError::Missing {
        path: path.to_string(),
        offset,
        expected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oids_print_dotted_with_their_names() {
        assert_eq!(dotted(oid::AES256_CBC), "2.16.840.1.101.3.4.1.42");
        assert_eq!(dotted(oid::SHA1), "1.3.14.3.2.26");
        assert_eq!(dotted(oid::RSAES_OAEP), "1.2.840.113549.1.1.7");
        assert_eq!(oid_name(oid::SHA1), "SHA-1 (1.3.14.3.2.26)");
        assert_eq!(dotted(&[0x2a, 0x86]), "malformed OID 0x2a86");
        assert_eq!(
            dotted(&[0xff; 12]),
            "malformed OID 0xffffffffffffffffffffffff"
        );
    }

    #[test]
    fn versions_print_as_integers() {
        assert_eq!(integer_text(&[0x03]), "3");
        assert_eq!(integer_text(&[0xff]), "-1");
        assert_eq!(integer_text(&[0x01, 0x00]), "256");
        assert_eq!(integer_text(&[]), "an INTEGER of 0 bytes");
    }
}
