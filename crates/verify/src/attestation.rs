//! Verifying an attestation document: COSE_Sign1 ES384 over the bytes as received, the chain
//! to a pinned root at a chosen instant, and the expected PCRs, nonce and user_data.
//!
//! Every check is named in the report, so a failure says exactly what did not hold.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::signature::{UnparsedPublicKey, ECDSA_P384_SHA384_FIXED};
use rustls_pki_types::{CertificateDer, UnixTime};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::document::{parse_cose, Document, ALG_ES384};
use crate::measure::{self, Measured};

/// The PCRs after PCR16, which cidboot locks without extending them.
const UNUSED_PCRS: std::ops::RangeInclusive<u16> = 17..=31;

/// The AWS Nitro Enclaves root G1, embedded.
pub const AWS_ROOT_G1_PEM: &str = include_str!("aws-nitro-enclaves-root-G1.pem");
/// SHA-256 of its DER, as AWS publishes it.
pub const AWS_ROOT_G1_SHA256: &str =
    "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b";

/// Why a document could not be checked at all (a failed check is in the [`Report`]).
#[allow(missing_docs)] // each variant's message says what went wrong
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("root certificate: {0}")]
    Root(String),
    #[error("the document is neither CBOR nor base64: {0}")]
    Encoding(String),
}

/// The instant at which certificates must be valid.
#[derive(Debug, Clone, Copy)]
pub enum At {
    /// The document's own timestamp.
    Document,
    /// The verifier's clock.
    Now,
    /// A given instant (to check an old document as of when it was made).
    Time(SystemTime),
}

/// What a document must satisfy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// DER of the root the chain must end at.
    pub root_der: Vec<u8>,
    /// When the certificates must have been valid.
    pub at: At,
    /// PCR index to the exact value the document must carry.
    pub pcrs: BTreeMap<u16, Vec<u8>>,
    /// The nonce the document must carry (the verifier's own, for freshness).
    pub nonce: Option<Vec<u8>>,
    /// The user_data the document must carry.
    pub user_data: Option<Vec<u8>>,
    /// Accept the emulated NSM's unsigned documents (never a signed document that fails).
    pub insecure_unsigned: bool,
    /// PCRs the document must list (a document lists only locked PCRs).
    pub require_locked: BTreeSet<u16>,
    /// An event log to check against the document's PCR16, and what it must say.
    pub measurements: Option<Measurements>,
    /// Pass a document although nothing ties it to an EIF or an image (no PCR and no
    /// measurement pinned). Without it such a policy fails the `pinned` check.
    pub allow_unpinned: bool,
}

/// The event log served at `GET /v1/measurements`, and the values it must carry.
#[derive(Debug, Clone, Default)]
pub struct Measurements {
    /// The log, as received (JSON).
    pub log: Vec<u8>,
    /// The manifest digest the log must measure.
    pub manifest_digest: Option<String>,
    /// The root CID the log must measure.
    pub cid: Option<cid::Cid>,
    /// The image config digest the log must measure.
    pub config_digest: Option<String>,
    /// The runtime configuration digest (`sha256:<hex>`) the log must measure.
    pub runtime_config_digest: Option<String>,
    /// Helper name to `sha256:<hex>`. When not empty, the log must measure exactly these.
    pub helpers: BTreeMap<String, String>,
}

impl Measurements {
    /// True if it names the image: a root CID, a manifest or an image config. The runtime
    /// configuration and the helpers alone are shared by every image booted with them.
    fn pins_something(&self) -> bool {
        self.manifest_digest.is_some() || self.cid.is_some() || self.config_digest.is_some()
    }

    /// Why what it expects pins nothing, when it expects something but no image.
    fn void(&self) -> Option<String> {
        if self.pins_something()
            || (self.runtime_config_digest.is_none() && self.helpers.is_empty())
        {
            return None;
        }
        Some("--expect-runtime-config and --expect-helper pin no image: every image booted with that configuration and those helpers has them (add --expect-cid, --expect-manifest or --expect-config-digest)".into())
    }
}

/// Why pinning PCR `index` to `value` tells no enclave from another, if it does not: a PCR of
/// zero bytes is one nothing extended, which every enclave that does not use it shares
/// (PCR17-31 of every cidboot document; PCR0-2 of every debug-mode enclave, whatever it runs).
pub fn void_pin(index: u16, value: &[u8]) -> Option<String> {
    if !value.iter().all(|b| *b == 0) {
        return None;
    }
    let why = match index {
        i if UNUSED_PCRS.contains(&i) => {
            "cidboot locks PCR17-31 without extending them, so every cidboot document has that value"
        }
        0..=2 => "a debug-mode enclave has PCR0-2 at zero whatever code it runs",
        _ => "a PCR at zero is one nothing extended, which every enclave that does not use it has",
    };
    Some(format!(
        "--pcr {index}={} pins nothing: {why}",
        if value.is_empty() { "(empty)" } else { "zeros" }
    ))
}

impl Policy {
    /// True if the policy ties a document to something that tells one enclave from another: a
    /// PCR value other than zeros ([`void_pin`]), or a measured field.
    pub fn is_pinned(&self) -> bool {
        self.pcrs.iter().any(|(i, v)| void_pin(*i, v).is_none())
            || self
                .measurements
                .as_ref()
                .is_some_and(Measurements::pins_something)
    }

    /// The pins that pin nothing, each with the reason ([`void_pin`]; expected measurements
    /// that name no image).
    pub fn void_pins(&self) -> Vec<String> {
        self.pcrs
            .iter()
            .filter_map(|(i, v)| void_pin(*i, v))
            .chain(self.measurements.as_ref().and_then(Measurements::void))
            .collect()
    }
}

/// The pinned AWS root, after checking the embedded copy against its published fingerprint.
pub fn aws_root() -> Result<Vec<u8>, VerifyError> {
    let der = pem_cert(AWS_ROOT_G1_PEM)?;
    let fp = hex::encode(Sha256::digest(&der));
    if fp != AWS_ROOT_G1_SHA256 {
        return Err(VerifyError::Root(format!(
            "embedded AWS root has fingerprint {fp}, expected {AWS_ROOT_G1_SHA256}"
        )));
    }
    Ok(der)
}

/// The first certificate of a PEM text.
pub fn pem_cert(pem: &str) -> Result<Vec<u8>, VerifyError> {
    use rustls_pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|c| c.to_vec())
        .map_err(|e| VerifyError::Root(e.to_string()))
}

/// Accepts raw CBOR, or base64 (standard or URL-safe, whitespace ignored).
pub fn decode_input(bytes: &[u8]) -> Result<Vec<u8>, VerifyError> {
    use base64::Engine;
    if matches!(bytes.first(), Some(0x84) | Some(0xd2)) {
        return Ok(bytes.to_vec());
    }
    let text: String = String::from_utf8_lossy(bytes)
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(&text)
        .or_else(|_| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text.trim_end_matches('='))
        })
        .map_err(|e| VerifyError::Encoding(e.to_string()))
}

/// The outcome of one check.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// It held.
    Pass,
    /// It did not: the document is not verified.
    Fail,
    /// Not checked, on the user's explicit, insecure request.
    Skipped,
}

/// One named check and what it found.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// A stable name (`signature`, `chain`, `pcr16`, ...).
    pub name: String,
    /// Whether it held.
    pub status: Status,
    /// What was compared, in words.
    pub detail: String,
}

/// The result of verifying one document: every check, and what it established.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// True if and only if no check failed.
    pub ok: bool,
    /// The document carries an ES384 signature (as opposed to the emulator's unsigned form).
    pub signed: bool,
    /// Some checks were skipped by --insecure-unsigned.
    pub insecure: bool,
    /// Milliseconds since the epoch at which validity was checked.
    pub at_ms: u64,
    /// Every check, in the order made.
    pub checks: Vec<Check>,
    /// The document's payload, when it could be parsed.
    pub document: Option<Document>,
    /// What the event log measured, present only when the log was sound and replayed to the
    /// document's PCR16.
    pub measured: Option<Measured>,
}

struct Checks(Vec<Check>);

impl Checks {
    fn add(&mut self, name: impl Into<String>, result: Result<String, String>) {
        let (status, detail) = match result {
            Ok(d) => (Status::Pass, d),
            Err(d) => (Status::Fail, d),
        };
        self.0.push(Check {
            name: name.into(),
            status,
            detail,
        });
    }
    fn skip(&mut self, name: &str, why: &str) {
        self.0.push(Check {
            name: name.into(),
            status: Status::Skipped,
            detail: why.into(),
        });
    }
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Verifies `doc` (raw CBOR bytes, exactly as received) against `policy`.
pub fn verify(doc: &[u8], policy: &Policy) -> Report {
    let mut c = Checks(Vec::new());
    let mut report = Report {
        ok: false,
        signed: false,
        insecure: false,
        at_ms: 0,
        checks: Vec::new(),
        document: None,
        measured: None,
    };
    let parsed = parse_cose(doc).map_err(|e| e.to_string()).and_then(|cose| {
        let d = Document::parse(&cose.payload).map_err(|e| e.to_string())?;
        Ok((cose, d))
    });
    let (cose, d) = match parsed {
        Ok(p) => p,
        Err(e) => {
            c.add("structure", Err(e));
            report.checks = c.0;
            return report;
        }
    };
    c.add(
        "structure",
        Ok(format!(
            "COSE_Sign1 ({}), payload of {} bytes",
            if cose.tagged { "tagged" } else { "untagged" },
            cose.payload.len()
        )),
    );
    let at = match policy.at {
        At::Document => UNIX_EPOCH + Duration::from_millis(d.timestamp),
        At::Now => SystemTime::now(),
        At::Time(t) => t,
    };
    report.at_ms = ms(at);
    report.signed = cose.alg == Some(ALG_ES384);
    let emulated = !report.signed
        && cose.signature.iter().all(|b| *b == 0)
        && d.certificate.iter().all(|b| *b == 0);
    c.add(
        "digest",
        if d.digest == "SHA384" {
            Ok("SHA384".into())
        } else {
            Err(format!("digest is {:?}, not SHA384", d.digest))
        },
    );
    if emulated && policy.insecure_unsigned {
        report.insecure = true;
        let why = "INSECURE: skipped by --insecure-unsigned (an emulated NSM's unsigned document proves nothing about hardware)";
        for n in ["signature", "root", "chain", "validity"] {
            c.skip(n, why);
        }
    } else if !report.signed {
        c.add(
            "signature",
            Err(match cose.alg {
                Some(a) => format!(
                    "algorithm {a} is not ES384 (-35); the document is not signed by an NSM"
                ),
                None => "the protected header names no algorithm".into(),
            }),
        );
    } else {
        chain_checks(&mut c, &d, policy, at);
        c.add(
            "signature",
            check_signature(
                &cose.protected,
                &cose.payload,
                &cose.signature,
                &d.certificate,
            ),
        );
    }
    for (i, want) in &policy.pcrs {
        c.add(
            format!("pcr{i}"),
            match d.pcrs.get(i) {
                Some(v) if v == want => Ok(hex::encode(v)),
                Some(v) => Err(format!(
                    "is {}, expected {}",
                    hex::encode(v),
                    hex::encode(want)
                )),
                None => Err("not in the document (documents list only locked PCRs)".into()),
            },
        );
    }
    // Locked but never extended by cidboot: any other value means something else extended them.
    for i in UNUSED_PCRS {
        if let (Some(v), false) = (d.pcrs.get(&i), policy.pcrs.contains_key(&i)) {
            c.add(
                format!("pcr{i}"),
                if v.iter().all(|b| *b == 0) && v.len() == 48 {
                    Ok("48 zero bytes (locked, never extended)".into())
                } else {
                    Err(format!(
                        "is {}, expected 48 zero bytes (cidboot never extends it; pin it with --pcr {i}=HEX if this is intended)",
                        hex::encode(v)
                    ))
                },
            );
        }
    }
    if !policy.require_locked.is_empty() {
        let absent: Vec<String> = policy
            .require_locked
            .iter()
            .filter(|i| !d.pcrs.contains_key(i))
            .map(|i| format!("PCR{i}"))
            .collect();
        c.add(
            "locked",
            if absent.is_empty() {
                Ok(format!(
                    "{} required PCRs listed",
                    policy.require_locked.len()
                ))
            } else {
                Err(format!(
                    "{} not in the document, so not locked",
                    absent.join(", ")
                ))
            },
        );
    }
    if let Some(m) = &policy.measurements {
        report.measured = measurement_checks(&mut c, &d, m);
    }
    if !policy.is_pinned() {
        let mut why = "nothing is pinned (no PCR, no image, no measured field): the document is not tied to any EIF or image".to_string();
        for v in policy.void_pins() {
            why = format!("{why}; {v}");
        }
        if policy.allow_unpinned {
            c.skip("pinned", &format!("INSECURE: {why}"));
        } else {
            c.add("pinned", Err(why));
        }
    }
    for (name, want, have) in [
        ("nonce", &policy.nonce, &d.nonce),
        ("user_data", &policy.user_data, &d.user_data),
    ] {
        if let Some(w) = want {
            c.add(
                name,
                match have {
                    Some(h) if h == w => Ok(hex::encode(h)),
                    Some(h) => Err(format!(
                        "is {}, expected {}",
                        hex::encode(h),
                        hex::encode(w)
                    )),
                    None => Err("absent from the document".into()),
                },
            );
        }
    }
    report.ok = c.0.iter().all(|k| k.status != Status::Fail);
    report.checks = c.0;
    report.document = Some(d);
    report
}

/// The `measurements` check, then one check per expected field, read only from a sound log.
fn measurement_checks(c: &mut Checks, d: &Document, m: &Measurements) -> Option<Measured> {
    let result = match d.pcrs.get(&measure::PCR_INDEX) {
        Some(pcr16) => measure::check_log(&m.log, pcr16).map_err(|e| e.to_string()),
        None => Err("the document lists no PCR16".to_string()),
    };
    let measured = match result {
        Ok(f) => {
            c.add(
                "measurements",
                Ok(format!(
                    "{} events recomputed from their data; they replay to the document's PCR16",
                    f.events
                )),
            );
            Some(f)
        }
        Err(e) => {
            c.add("measurements", Err(e));
            None
        }
    };
    // `have` is None when the log was refused: nothing is read from it then.
    let mut field = |name: String, want: Option<String>, have: Option<String>| {
        let Some(want) = want else { return };
        c.add(
            name,
            match have {
                None => Err("not read: the event log was refused".into()),
                Some(h) if h == want => Ok(h),
                Some(h) => Err(format!("the log measures {h}, expected {want}")),
            },
        );
    };
    let get = |f: &dyn Fn(&Measured) -> String| measured.as_ref().map(f);
    field(
        "manifest".into(),
        m.manifest_digest.clone(),
        get(&|f| f.manifest_digest.clone()),
    );
    field(
        "cid".into(),
        m.cid.map(|x| x.to_string()),
        get(&|f| f.cid.to_string()),
    );
    field(
        "config_digest".into(),
        m.config_digest.clone(),
        get(&|f| f.config_digest.clone()),
    );
    field(
        "runtime_config".into(),
        m.runtime_config_digest.clone(),
        get(&|f| f.runtime_config_digest.clone()),
    );
    for (name, digest) in &m.helpers {
        let have = get(&|f| {
            f.helpers
                .get(name)
                .cloned()
                .unwrap_or_else(|| format!("no helper named {name}"))
        });
        field(format!("helper:{name}"), Some(digest.clone()), have);
    }
    if !m.helpers.is_empty() {
        let extra: Option<Vec<&String>> = measured.as_ref().map(|f| {
            f.helpers
                .keys()
                .filter(|n| !m.helpers.contains_key(*n))
                .collect()
        });
        c.add(
            "helpers",
            match extra {
                None => Err("not read: the event log was refused".into()),
                Some(x) if x.is_empty() => Ok(format!("exactly the {} expected", m.helpers.len())),
                Some(x) => Err(format!("the log also measures helpers not expected: {x:?}")),
            },
        );
    }
    measured
}

fn check_signature(
    protected: &[u8],
    payload: &[u8],
    sig: &[u8],
    leaf: &[u8],
) -> Result<String, String> {
    if sig.len() != 96 {
        return Err(format!("signature is {} bytes (ES384 is 96)", sig.len()));
    }
    let (_, cert) =
        x509_parser::parse_x509_certificate(leaf).map_err(|e| format!("leaf certificate: {e}"))?;
    let key = cert.public_key().subject_public_key.data.to_vec();
    let tbs = crate::document::sig_structure(protected, payload);
    UnparsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, key)
        .verify(&tbs, sig)
        .map(|_| "ES384 over the payload as received, by the leaf's key".to_string())
        .map_err(|_| "ES384 signature does not verify with the leaf certificate's key".to_string())
}

fn chain_checks(c: &mut Checks, d: &Document, policy: &Policy, at: SystemTime) {
    c.add("root", match d.cabundle.first() {
        Some(r) if *r == policy.root_der => Ok(format!("sha256:{}", hex::encode(Sha256::digest(r)))),
        Some(r) => Err(format!("cabundle[0] (sha256:{}) is not the pinned root (sha256:{})", hex::encode(Sha256::digest(r)), hex::encode(Sha256::digest(&policy.root_der)))),
        None => Err("the document carries no CA bundle, so it is not rooted at the pinned root (self-signed?)".into()),
    });
    // Order: cabundle is root first, each certificate issued by the one before it, and the
    // leaf issued by the last.
    let order = (|| {
        let mut certs = Vec::new();
        for der in d.cabundle.iter().chain(std::iter::once(&d.certificate)) {
            let (_, cert) = x509_parser::parse_x509_certificate(der)
                .map_err(|e| format!("unparseable certificate: {e}"))?;
            certs.push(cert);
        }
        for pair in certs.windows(2) {
            if pair[1].issuer().as_raw() != pair[0].subject().as_raw() {
                return Err(format!(
                    "{} is not issued by {} (the chain is out of order)",
                    pair[1].subject(),
                    pair[0].subject()
                ));
            }
        }
        let secs = at
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        for cert in &certs {
            let v = cert.validity();
            if secs < v.not_before.timestamp() || secs > v.not_after.timestamp() {
                return Ok(Err(format!(
                    "{} is valid {} to {}, not at the chosen instant",
                    cert.subject(),
                    v.not_before,
                    v.not_after
                )));
            }
        }
        Ok(Ok(format!(
            "{} certificates valid at the chosen instant",
            certs.len()
        )))
    })();
    let validity = match order {
        Err(e) => {
            c.add("chain", Err(e));
            return;
        }
        Ok(v) => v,
    };
    c.add("validity", validity);
    let anchor =
        match webpki::anchor_from_trusted_cert(&CertificateDer::from(policy.root_der.as_slice())) {
            Ok(a) => a.to_owned(),
            Err(e) => {
                c.add("chain", Err(format!("pinned root: {e}")));
                return;
            }
        };
    let leaf_der = CertificateDer::from(d.certificate.as_slice());
    let inters: Vec<CertificateDer> = d
        .cabundle
        .iter()
        .skip(1)
        .map(|c| CertificateDer::from(c.as_slice()))
        .collect();
    let time = UnixTime::since_unix_epoch(at.duration_since(UNIX_EPOCH).unwrap_or_default());
    let result = webpki::EndEntityCert::try_from(&leaf_der)
        .map_err(|e| format!("leaf: {e}"))
        .and_then(|ee| {
            ee.verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &[anchor],
                &inters,
                time,
                webpki::KeyUsage::client_auth(),
                None,
                None,
            )
            .map(|_| format!("leaf -> {} intermediates -> pinned root", inters.len()))
            .map_err(|e| format!("path validation: {e:?}"))
        });
    c.add("chain", result);
}
