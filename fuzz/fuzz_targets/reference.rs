//! Image references, CIDs and platforms from arbitrary strings.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = cidboot::reference::ImageRef::parse(s);
        let _ = cidboot::reference::parse_cid(s);
        let _ = s.parse::<cidboot::oci::Platform>();
        let _ = s.parse::<cidboot::transport::addr::Addr>();
    }
});
