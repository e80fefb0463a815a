//! The KMS proxy's reading of the workload's requests: the target header and each operation's
//! body. Whatever it takes must be what KMS's model allows.
#![no_main]
use cidboot::kms::proxy::request::{parse, Op};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Op::from_target(std::str::from_utf8(data).ok());
    for op in [Op::Decrypt, Op::GenerateDataKey, Op::GenerateRandom] {
        if let Ok(r) = parse(op, data) {
            assert!(r.fields.keys().all(|k| k != "Recipient"));
            if op != Op::Decrypt {
                assert!(r.length.is_some_and(|n| (1..=1024).contains(&n)));
            }
            let _ = serde_json::to_vec(&r.fields).expect("the fields serialize");
        }
    }
});
