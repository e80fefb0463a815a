//! The publisher's side: packing an OCI layout into a CAR, and serving CARs as a trustless
//! gateway for development, tests and air-gapped operators; uploading CARs to where the field
//! keeps content.

pub mod artifact;
pub mod pack;
pub mod serve;
pub mod upload;
