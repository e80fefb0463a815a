//! What a verifier needs, and nothing an enclave or a network needs: the attestation document
//! format ([`document`]), its verification against a pinned root ([`attestation`]), and
//! cidboot's PCR16 event log with its replay ([`measure`]). It has no async runtime, no HTTP
//! and no system calls, so a verifier service can embed it.

#![warn(missing_docs)]

pub mod attestation;
pub mod document;
pub mod measure;
