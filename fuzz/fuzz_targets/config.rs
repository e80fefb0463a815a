//! The runtime configuration parser.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = cidboot::config::Loaded::parse(data.to_vec());
});
