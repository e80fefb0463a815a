//! cidboot: boot an OCI image named by an IPFS CID, verified end to end.
//!
//! Modules follow the direction data flows: a [`reference`](mod@reference) names content, [`fetch`] retrieves
//! it trustlessly over a [`transport`], [`oci`] checks it against its descriptors, and
//! [`publish`] is the publisher's side (packing and serving CARs).
//!
//! Every public item is documented (`missing_docs`, denied in CI by `-D warnings`); an error
//! enum documents its variants by their `#[error]` messages.
#![warn(missing_docs)]

pub mod api;
pub mod apply;
pub mod boot;
pub mod cli;
pub mod config;
pub mod fetch;
pub mod host;
pub mod init;
pub mod kms;
pub mod launch;
/// The PCR16 event log (in the verifier crate, which the verifier side shares).
pub use cidboot_verify::measure;
pub mod nsm;
pub mod oci;
pub mod ocicrypt;
pub mod publish;
pub mod reference;
pub mod relay;
pub mod scratch;
pub mod secrets;
pub mod transparent;
pub mod transport;
/// Attestation documents against a pinned root (the verifier crate).
pub use cidboot_verify::attestation as verify;
