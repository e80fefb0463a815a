//! The transparent egress resolver: a query read, answered for an allowlist, and the answer
//! checked against it (its id, and an address only for an allowlisted name).
#![no_main]
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let allow = Arc::new(
        cidboot::relay::allow::Allowlist::new(&["*.example.com:443", "db.test:5432"])
            .expect("patterns"),
    );
    let names = Arc::new(cidboot::transparent::names::Names::new(16));
    let resolver = cidboot::transparent::resolver::Resolver::new(allow.clone(), names, 1_000_000);
    let Some(answer) = resolver.answer(data) else {
        return;
    };
    assert!(answer.len() >= 12);
    assert_eq!(&answer[..2], &data[..2], "the id is echoed");
    assert!(answer[2] & 0x80 != 0, "an answer is a response");
    let answers = u16::from_be_bytes([answer[6], answer[7]]);
    if answers > 0 {
        let q = cidboot::transparent::dns::parse(data).expect("answered with a record");
        assert!(allow.names(q.name.as_deref().expect("a host name")));
    }
});
