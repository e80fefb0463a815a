//! The CMS EnvelopedData reader (KMS's `CiphertextForRecipient`) on arbitrary bytes: refused by
//! name or parsed within its limits, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(e) = cidboot_cms::Envelope::parse(data) {
        assert!(e.version() == 0 || e.version() == 2);
        assert!(e.encrypted_key().len() <= cidboot_cms::MAX_ENCRYPTED_KEY);
        assert!(e.encrypted_content().len() <= cidboot_cms::MAX_ENCRYPTED_CONTENT);
        assert!(e.encrypted_content().len() <= data.len());
    }
});
