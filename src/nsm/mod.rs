//! The Nitro Secure Module behind a small trait: the device in an enclave, and a software
//! module with the device's semantics for development and tests.
//!
//! Trust boundary: only cidboot talks to the NSM. The workload gets documents through the
//! attestation API, whose inputs are bounded here.

pub mod device;
/// The attestation document format (the verifier crate's).
pub use cidboot_verify::document;
#[cfg(feature = "software-nsm")]
pub mod software;

/// Largest `user_data`, `nonce` or `public_key` put in a document (some verifiers reject
/// more, though the NSM accepts up to 1024).
pub const MAX_ATTESTATION_FIELD: usize = 512;
/// Largest data passed to ExtendPCR.
pub const MAX_EXTEND_DATA: usize = 512;
/// PCRs an NSM has; 0-15 are locked at boot, 16-31 are the enclave's own.
pub const PCR_COUNT: u16 = 32;
/// The first PCR an enclave may extend: cidboot's measurement goes into it.
pub const FIRST_EXTENDABLE_PCR: u16 = 16;

/// Why an NSM request failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[allow(missing_docs)] // each variant's #[error] message is its documentation
pub enum NsmError {
    #[error("PCR{0} does not exist")]
    InvalidIndex(u16),
    #[error("PCR{0} is locked (read-only)")]
    ReadOnlyIndex(u16),
    #[error("{what} is {len} bytes, over the {max}-byte limit")]
    InputTooLarge {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("the NSM device is not available: {0}")]
    Unavailable(String),
    #[error("the NSM answered {0}")]
    Device(String),
    #[error("the software NSM failed: {0}")]
    Software(String),
    #[error("{0}")]
    EifPcrs(String),
}

/// What cidboot needs from an NSM.
pub trait Nsm: Send + Sync {
    /// `(locked, value)` of a PCR.
    fn describe_pcr(&self, index: u16) -> Result<(bool, Vec<u8>), NsmError>;
    /// `PCR = SHA-384(PCR || data)`; returns the new value.
    fn extend_pcr(&self, index: u16, data: &[u8]) -> Result<Vec<u8>, NsmError>;
    /// Makes one PCR read-only until the enclave ends.
    fn lock_pcr(&self, index: u16) -> Result<(), NsmError>;
    /// Locks PCR0 up to `range - 1` (NSM LockPCRs).
    fn lock_pcrs(&self, range: u16) -> Result<(), NsmError>;
    /// A COSE_Sign1 attestation document.
    fn attestation(
        &self,
        user_data: Option<&[u8]>,
        nonce: Option<&[u8]>,
        public_key: Option<&[u8]>,
    ) -> Result<Vec<u8>, NsmError>;
    /// Random bytes from the NSM's generator.
    fn get_random(&self) -> Result<Vec<u8>, NsmError>;
}

/// Checks the three attestation inputs against the emission limit.
pub fn check_fields(
    user_data: Option<&[u8]>,
    nonce: Option<&[u8]>,
    public_key: Option<&[u8]>,
) -> Result<(), NsmError> {
    for (what, v) in [
        ("user_data", user_data),
        ("nonce", nonce),
        ("public_key", public_key),
    ] {
        if let Some(v) = v {
            if v.len() > MAX_ATTESTATION_FIELD {
                return Err(NsmError::InputTooLarge {
                    what,
                    len: v.len(),
                    max: MAX_ATTESTATION_FIELD,
                });
            }
        }
    }
    Ok(())
}

/// Checks data for ExtendPCR against the request limit.
pub fn check_extend(data: &[u8]) -> Result<(), NsmError> {
    if data.len() > MAX_EXTEND_DATA {
        return Err(NsmError::InputTooLarge {
            what: "extend data",
            len: data.len(),
            max: MAX_EXTEND_DATA,
        });
    }
    Ok(())
}

/// Extends `index` with every event of a log, then locks every PCR, so that nothing later
/// (the workload included) can add a measurement a verifier would have to interpret. The
/// other extendable PCRs must still be zero: a value there means something extended them
/// before cidboot.
pub fn measure_and_lock(
    nsm: &dyn Nsm,
    index: u16,
    events: &[Vec<u8>],
) -> Result<Vec<u8>, NsmError> {
    let mut value = Vec::new();
    for e in events {
        value = nsm.extend_pcr(index, e)?;
    }
    nsm.lock_pcrs(PCR_COUNT)?;
    for i in FIRST_EXTENDABLE_PCR..PCR_COUNT {
        let (locked, v) = nsm.describe_pcr(i)?;
        if !locked {
            return Err(NsmError::Device(format!(
                "PCR{i} is still unlocked after LockPCRs"
            )));
        }
        if i != index && v.iter().any(|b| *b != 0) {
            return Err(NsmError::Device(format!(
                "PCR{i} was extended before cidboot measured ({})",
                hex::encode(&v)
            )));
        }
    }
    Ok(value)
}

/// Largest PCR file read (`eif_build`'s JSON is under 1 KiB).
pub const MAX_EIF_PCRS: usize = 64 * 1024;

/// PCR0, PCR1 and PCR2 from the JSON that `eif_build`, `nitro-cli build-enclave` and
/// scripts/build-eif.sh print: `{"Measurements": {"PCR0": HEX, …}}`, or the same keys at the
/// top level. Each must be 48 bytes of hex.
pub fn parse_eif_pcrs(json: &[u8]) -> Result<[(u16, [u8; 48]); 3], NsmError> {
    if json.len() > MAX_EIF_PCRS {
        return Err(NsmError::EifPcrs(format!(
            "{} bytes, over the {MAX_EIF_PCRS}-byte limit",
            json.len()
        )));
    }
    let v: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| NsmError::EifPcrs(e.to_string()))?;
    let m = v.get("Measurements").unwrap_or(&v);
    let mut out = [(0u16, [0u8; 48]); 3];
    for (i, slot) in (0u16..).zip(out.iter_mut()) {
        let k = format!("PCR{i}");
        let val = m
            .get(&k)
            .and_then(|x| x.as_str())
            .ok_or_else(|| NsmError::EifPcrs(format!("no {k}")))?;
        let bytes: [u8; 48] = hex::decode(val)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| NsmError::EifPcrs(format!(
                "{k} is {val:?}, not 48 bytes of hex: a PCR is a SHA-384, 96 hex digits, as eif_build and nitro-cli build-enclave print it"
            )))?;
        *slot = (i, bytes);
    }
    Ok(out)
}
