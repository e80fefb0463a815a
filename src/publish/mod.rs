//! The publisher's side: packing an OCI layout into a CAR, and serving CARs as a trustless
//! gateway for development, tests and air-gapped operators.

pub mod artifact;
pub mod pack;
pub mod serve;
