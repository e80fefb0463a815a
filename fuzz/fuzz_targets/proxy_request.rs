//! The egress proxy's request-head parser and allowlist.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((host, port)) = cidboot::relay::proxy::parse_request_target(data) {
        let allow = cidboot::relay::allow::Allowlist::new(&["*.example.com:443", "10.0.0.1:*"])
            .expect("patterns");
        let _ = allow.check(&host, port);
    }
});
