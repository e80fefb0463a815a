//! What crosses between the enclave and its parent, used by both sides: the egress proxy and
//! its allowlist, port forwarding, the log and status channel, and the boot configuration.

pub mod allow;
pub mod bootcfg;
pub mod forward;
pub mod logs;
pub mod proxy;
pub mod splice;
