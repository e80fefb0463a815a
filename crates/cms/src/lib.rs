//! The enclave's cryptography for AWS KMS's `Recipient` exchange. [`RecipientKey`] is an
//! ephemeral RSA key pair whose public half goes into the NSM attestation document; KMS wraps
//! its answer to it, and [`RecipientKey::open`] opens that `CiphertextForRecipient` (a CMS
//! EnvelopedData) inside the enclave, so the plaintext never exists outside it.
//!
//! The envelope crosses the parent instance, which is untrusted: [`Envelope::parse`] reads it
//! with a bounded BER reader (AWS sends indefinite lengths and chunked content, which DER
//! parsers refuse), every length checked before use, and accepts exactly KMS's shape:
//! RSAES-OAEP with SHA-256 and MGF1-SHA-256, AES-256-CBC. Note that the content is not
//! authenticated (CBC, no MAC): whoever can rewrite KMS's answer can encrypt a value of their
//! own to this key, so the answer must come over TLS that ends in the enclave.
//!
//! The crate has no async runtime, no HTTP and no system calls: the KMS client is the caller's.

#![warn(missing_docs)]

mod ber;
pub mod envelope;
mod key;

pub use ber::MAX_DEPTH;
pub use envelope::{
    Envelope, RecipientId, MAX_ENCRYPTED_CONTENT, MAX_ENCRYPTED_KEY, MAX_ENVELOPE,
    MAX_KEY_IDENTIFIER,
};
pub use key::{RecipientKey, KEY_BITS};

/// What is wrong with an envelope, or with opening it. Parsing errors name the field (its path
/// in the schema) and the offset in the input of the element at fault.
#[derive(Debug, thiserror::Error)]
pub enum CmsError {
    /// The whole envelope is over [`MAX_ENVELOPE`].
    #[error("CMS envelope of {len} bytes is over the {max}-byte limit")]
    InputTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The input ends inside an element.
    #[error("CMS {path} at offset {offset}: the input ends inside the element")]
    Truncated {
        /// The field.
        path: String,
        /// Where the missing bytes should be.
        offset: usize,
    },
    /// A length runs past the end of the input or of the enclosing element.
    #[error(
        "CMS {path} at offset {offset}: length {length} runs past the {remaining} bytes left \
         in the input or the enclosing element"
    )]
    LengthOverrun {
        /// The field.
        path: String,
        /// Where the element starts.
        offset: usize,
        /// The length it claims.
        length: u64,
        /// The bytes there are.
        remaining: usize,
    },
    /// Constructed elements nest deeper than [`MAX_DEPTH`].
    #[error("CMS {path} at offset {offset}: nested deeper than {max} levels")]
    TooDeep {
        /// The field.
        path: String,
        /// Where the element one level too deep starts.
        offset: usize,
        /// The limit.
        max: usize,
    },
    /// A primitive element with an indefinite length, which BER does not allow.
    #[error("CMS {path} at offset {offset}: indefinite length on primitive tag 0x{tag:02x}")]
    IndefinitePrimitive {
        /// The field.
        path: String,
        /// Where the element starts.
        offset: usize,
        /// Its identifier octet.
        tag: u8,
    },
    /// An element other than the one the schema has here.
    #[error("CMS {path} at offset {offset}: expected {expected}, found tag 0x{found:02x}")]
    UnexpectedTag {
        /// The field.
        path: String,
        /// Where the element starts.
        offset: usize,
        /// What belongs here.
        expected: &'static str,
        /// The identifier octet found.
        found: u8,
    },
    /// A required element is missing: the enclosing one ends before it.
    #[error("CMS {path} at offset {offset}: missing {expected}")]
    Missing {
        /// The field.
        path: String,
        /// Where it should be.
        offset: usize,
        /// What is missing.
        expected: &'static str,
    },
    /// An encoding BER does not allow, or CMS does not use.
    #[error("CMS {path} at offset {offset}: {what}")]
    Malformed {
        /// The field.
        path: String,
        /// Where the element starts.
        offset: usize,
        /// What is wrong.
        what: String,
    },
    /// Well-formed, but not what KMS sends (an algorithm, version or structure refused).
    #[error("CMS {path} at offset {offset}: unsupported {what}: {found} (accepted: {supported})")]
    Unsupported {
        /// The field.
        path: String,
        /// Where the element starts.
        offset: usize,
        /// What was checked.
        what: &'static str,
        /// What was found.
        found: String,
        /// What is accepted.
        supported: &'static str,
    },
    /// Something follows where an element or the input should end.
    #[error("CMS {path} at offset {offset}: trailing data (tag 0x{tag:02x}) where it should end")]
    TrailingData {
        /// The element that should end.
        path: String,
        /// Where the extra data starts.
        offset: usize,
        /// Its first octet.
        tag: u8,
    },
    /// A string is longer than its limit.
    #[error("CMS {path} at offset {offset}: more than {max} bytes")]
    TooLarge {
        /// The field.
        path: String,
        /// Where the element starts.
        offset: usize,
        /// The limit.
        max: usize,
    },
    /// The RSA key could not be made or used.
    #[error("RSA key: {0}")]
    KeyGeneration(&'static str),
    /// The wrapped key is not the size of this key's modulus: it was wrapped to another key.
    #[error(
        "CMS encryptedKey at offset {offset}: {len} bytes, not the {modulus} of this key's \
         modulus (wrapped to another key)"
    )]
    WrappedKeyLength {
        /// Where the element starts.
        offset: usize,
        /// Its length.
        len: usize,
        /// This key's modulus in bytes.
        modulus: usize,
    },
    /// RSAES-OAEP-SHA-256 decryption failed: the key was wrapped to another key, or altered.
    #[error(
        "CMS encryptedKey at offset {offset}: RSAES-OAEP-SHA-256 unwrap failed (wrapped to \
         another key, or altered)"
    )]
    Unwrap {
        /// Where the element starts.
        offset: usize,
    },
    /// The unwrapped content key is not an AES-256 key.
    #[error("CMS content key: {len} bytes, not the 32 of AES-256")]
    ContentKeyLength {
        /// Its length.
        len: usize,
    },
    /// The encrypted content is not a whole, non-zero number of AES blocks.
    #[error(
        "CMS encryptedContent at offset {offset}: {len} bytes, not a whole number of 16-byte \
         blocks"
    )]
    BlockLength {
        /// Where the element starts.
        offset: usize,
        /// Its length.
        len: usize,
    },
    /// AES-256-CBC decryption ended in a bad PKCS#7 padding: the content was altered, or
    /// encrypted under another key.
    #[error(
        "CMS encryptedContent at offset {offset}: bad PKCS#7 padding after AES-256-CBC \
         decryption (altered, or encrypted under another key)"
    )]
    Padding {
        /// Where the element starts.
        offset: usize,
    },
}
