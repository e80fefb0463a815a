//! What crosses between the enclave and its parent, used by both sides: the egress proxy and
//! its allowlist, port forwarding, the log and status channel, the boot configuration (and the
//! sealed secrets), and the AWS credentials for the enclave's KMS calls.

pub mod allow;
pub mod bootcfg;
pub mod credentials;
pub mod forward;
pub mod logs;
pub mod proxy;
pub mod splice;

/// The byte a Nitro enclave sends its parent once booted, and gets back.
pub const HEARTBEAT: u8 = 0xB7;
/// The parent's vsock port for the enclave's egress (HTTP CONNECT).
pub const EGRESS_PORT: u32 = 8000;
/// The parent's vsock port that hands the enclave its configuration, when none is baked in.
pub const BOOT_PORT: u32 = 8001;
/// The parent's vsock port for the enclave's logs and final status.
pub const LOGS_PORT: u32 = 8002;
/// The parent's vsock port that hands the enclave AWS credentials for its KMS calls.
pub const CREDENTIALS_PORT: u32 = 8003;
/// Where the enclave sends its boot heartbeat: answered by Nitro's own responder, or by
/// `cidboot host`'s `[heartbeat]` for an emulated enclave.
pub const HEARTBEAT_PORT: u32 = 9000;
