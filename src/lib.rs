//! cidboot: boot an OCI image named by an IPFS CID, verified end to end.
//!
//! Modules follow the direction data flows: a [`reference`] names content, [`fetch`] retrieves
//! it trustlessly over a [`transport`], [`oci`] checks it against its descriptors, and
//! [`publish`] is the publisher's side (packing and serving CARs).

pub mod api;
pub mod apply;
pub mod boot;
pub mod cli;
pub mod config;
pub mod fetch;
pub mod host;
pub mod init;
pub mod launch;
pub mod measure;
pub mod nsm;
pub mod oci;
pub mod publish;
pub mod reference;
pub mod relay;
pub mod transport;
pub mod verify;
