//! Envelopes the parent could send instead of KMS's: each is refused with an error naming what
//! and where, without a panic, and without allocating what a length claims (the test's
//! allocator records the largest allocation).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use cidboot_cms::{CmsError, Envelope, MAX_DEPTH, MAX_ENCRYPTED_CONTENT, MAX_ENVELOPE};
use common::ber::{indefinite, tlv, OID_AES128_CBC, OID_SHA1};
use common::{key_and_recipient, plaintext, Parts, Recipient, OAEP_SHA256};

/// The system allocator, recording per thread the largest single allocation.
struct Recording;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn record(size: usize) {
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

// SAFETY: every call is forwarded to the system allocator unchanged; recording only writes a
// thread-local `Cell`, which does not allocate.
unsafe impl GlobalAlloc for Recording {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: the caller's contract is passed on as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Recording = Recording;

/// Parses `input`, returning the error and the largest allocation made meanwhile.
fn parse_err(input: &[u8]) -> (CmsError, usize) {
    LARGEST.with(|l| l.set(0));
    let r = Envelope::parse(input);
    let largest = LARGEST.with(Cell::get);
    match r {
        Ok(e) => panic!("accepted: {e:?}"),
        Err(e) => (e, largest),
    }
}

/// A KMS-shaped envelope of a 17-byte plaintext (no key is needed to parse it).
fn kms_shaped() -> Parts {
    let recipient = Recipient::foreign();
    Parts::of(&recipient.encrypt(&plaintext(17), true, true))
}

fn assert_unsupported(e: &CmsError, field: &str, found: &str) {
    match e {
        CmsError::Unsupported { path, found: f, .. } => {
            assert!(path.ends_with(field), "{e}");
            assert!(f.contains(found), "{e}");
        }
        other => panic!("expected unsupported {field}, got {other}"),
    }
}

#[test]
fn truncated_at_every_byte() {
    let parts = kms_shaped();
    let der = Recipient::foreign().encrypt(&plaintext(17), false, true);
    for envelope in [parts.aws_shape(), der] {
        Envelope::parse(&envelope).unwrap();
        for n in 0..envelope.len() {
            let (e, largest) = parse_err(&envelope[..n]);
            assert!(
                matches!(
                    e,
                    CmsError::Truncated { .. } | CmsError::LengthOverrun { .. }
                ) || (n == 0 && matches!(e, CmsError::Missing { offset: 0, .. })),
                "cut at {n}: {e}"
            );
            assert!(e.to_string().contains("offset"), "{e}");
            assert!(largest <= envelope.len() + 1024, "cut at {n}: {largest}");
        }
    }
}

#[test]
fn a_truncated_answer_does_not_open() {
    let (key, recipient) = key_and_recipient();
    let envelope = recipient.encrypt(&plaintext(17), true, true);
    let e = key.open(&envelope[..envelope.len() - 1]).unwrap_err();
    assert!(matches!(e, CmsError::Truncated { .. }), "{e}");
}

#[test]
fn a_length_past_what_remains() {
    let mut parts = kms_shaped();
    let mut key = tlv(0x04, &parts.encrypted_key);
    key[2] += 1; // 0x04 0x82 0x01 0x00 claims 0x0200 bytes
    parts.raw_encrypted_key = Some(key);
    let (e, _) = parse_err(&parts.aws_shape());
    match &e {
        CmsError::LengthOverrun {
            path,
            length,
            remaining,
            ..
        } => {
            assert!(path.ends_with("encryptedKey"), "{e}");
            assert_eq!(*length, 512);
            assert_eq!(*remaining, 256);
        }
        other => panic!("{other}"),
    }
}

#[test]
fn a_claimed_length_of_100_mib_allocates_nothing_of_it() {
    let claim: &[u8] = &[0x84, 0x06, 0x40, 0x00, 0x00];
    // The outermost element.
    let mut outer = vec![0x30];
    outer.extend_from_slice(claim);
    outer.extend_from_slice(&[0x06, 0x01, 0x00]);
    // A content chunk inside an otherwise well-formed envelope.
    let mut parts = kms_shaped();
    let mut chunk = vec![0x04];
    chunk.extend_from_slice(claim);
    chunk.extend_from_slice(&[0; 64]);
    parts.raw_content = Some(indefinite(0xa0, &[chunk]));
    for input in [outer, parts.aws_shape()] {
        let (e, largest) = parse_err(&input);
        match &e {
            CmsError::LengthOverrun { length, .. } => assert_eq!(*length, 100 << 20),
            other => panic!("{other}"),
        }
        assert!(largest < 4096, "largest allocation {largest}");
    }
}

#[test]
fn content_over_its_limit_is_refused_before_it_is_copied() {
    let mut parts = kms_shaped();
    parts.content = vec![0; MAX_ENCRYPTED_CONTENT + 16];
    parts.chunk = 64 * 1024;
    let (e, largest) = parse_err(&parts.aws_shape());
    assert!(
        matches!(e, CmsError::TooLarge { max, .. } if max == MAX_ENCRYPTED_CONTENT),
        "{e}"
    );
    // The content was copied chunk by chunk up to its limit (which the recorder saw), and
    // no further.
    assert!(
        (MAX_ENCRYPTED_CONTENT / 2..=2 * MAX_ENCRYPTED_CONTENT).contains(&largest),
        "largest allocation {largest}"
    );

    let (e, largest) = parse_err(&vec![0x30; MAX_ENVELOPE + 1]);
    assert!(matches!(e, CmsError::InputTooLarge { .. }), "{e}");
    assert!(largest < 4096, "largest allocation {largest}");
}

#[test]
fn nesting_deeper_than_the_cap() {
    let mut parts = kms_shaped();
    let mut content = tlv(0x04, &parts.content);
    for _ in 0..MAX_DEPTH {
        content = indefinite(0x24, &[content]);
    }
    parts.raw_content = Some(indefinite(0xa0, &[content]));
    let (e, _) = parse_err(&parts.aws_shape());
    match &e {
        CmsError::TooDeep { path, max, .. } => {
            assert_eq!(*max, MAX_DEPTH);
            assert!(path.contains("encryptedContent.chunk"), "{e}");
        }
        other => panic!("{other}"),
    }
    // Within the cap, the same nesting is valid BER.
    let mut parts = kms_shaped();
    let mut content = tlv(0x04, &parts.content);
    for _ in 0..5 {
        content = indefinite(0x24, &[content]);
    }
    parts.raw_content = Some(indefinite(0xa0, &[content]));
    let parsed = Envelope::parse(&parts.aws_shape()).unwrap();
    assert_eq!(parsed.encrypted_content(), parts.content.as_slice());
}

#[test]
fn an_indefinite_length_on_a_primitive() {
    let mut parts = kms_shaped();
    parts.raw_version = Some(vec![0x02, 0x80, 0x02, 0x00, 0x00]);
    let (e, _) = parse_err(&parts.aws_shape());
    assert!(
        matches!(&e, CmsError::IndefinitePrimitive { path, tag: 0x02, .. }
            if path.ends_with("KeyTransRecipientInfo.version")),
        "{e}"
    );
    let mut parts = kms_shaped();
    let mut key = vec![0x04, 0x80];
    key.extend_from_slice(&parts.encrypted_key);
    key.extend_from_slice(&[0, 0]);
    parts.raw_encrypted_key = Some(key);
    let (e, _) = parse_err(&parts.aws_shape());
    assert!(
        matches!(&e, CmsError::IndefinitePrimitive { path, tag: 0x04, .. }
            if path.ends_with("encryptedKey")),
        "{e}"
    );
}

#[test]
fn a_wrong_content_type() {
    let mut envelope = kms_shaped().aws_shape();
    // id-envelopedData (…7.3) becomes id-signedData (…7.2).
    assert_eq!(envelope[12], 0x03);
    envelope[12] = 0x02;
    let (e, _) = parse_err(&envelope);
    assert_unsupported(&e, "ContentInfo.contentType", "1.2.840.113549.1.7.2");
    assert!(e.to_string().contains("offset 2"), "{e}");
}

#[test]
fn sha1_oaep_is_refused() {
    // openssl's default OAEP digest: the parameters say nothing, which means SHA-1.
    let recipient = Recipient::foreign();
    let envelope = recipient.encrypt_with(
        &plaintext(5),
        &["-aes-256-cbc", "-keyid"],
        &["rsa_padding_mode:oaep"],
    );
    let (e, _) = parse_err(&envelope);
    assert_unsupported(&e, "hashAlgorithm", "SHA-1 (the default");
    // SHA-1 named explicitly.
    let envelope = recipient.encrypt_with(
        &plaintext(5),
        &["-aes-256-cbc", "-keyid"],
        &["rsa_padding_mode:oaep", "rsa_oaep_md:sha1"],
    );
    let (e, _) = parse_err(&envelope);
    assert_unsupported(&e, "hashAlgorithm", "SHA-1");
    let mut parts = kms_shaped();
    parts.oaep_hash = OID_SHA1;
    let (e, _) = parse_err(&parts.aws_shape());
    assert_unsupported(&e, "hashAlgorithm.algorithm", "SHA-1 (1.3.14.3.2.26)");
    // SHA-256 for OAEP but SHA-1 for MGF1.
    let envelope = recipient.encrypt_with(
        &plaintext(5),
        &["-aes-256-cbc", "-keyid"],
        &[OAEP_SHA256[0], OAEP_SHA256[1], "rsa_mgf1_md:sha1"],
    );
    let (e, _) = parse_err(&envelope);
    assert_unsupported(&e, "maskGenAlgorithm", "SHA-1 (the default");
    let mut parts = kms_shaped();
    parts.mgf_hash = OID_SHA1;
    let (e, _) = parse_err(&parts.aws_shape());
    assert_unsupported(&e, "maskGenAlgorithm.parameters.algorithm", "SHA-1");
}

#[test]
fn pkcs1_v1_5_is_refused() {
    let envelope = Recipient::foreign().encrypt_with(&plaintext(5), &["-aes-256-cbc"], &[]);
    let (e, _) = parse_err(&envelope);
    assert_unsupported(&e, "keyEncryptionAlgorithm.algorithm", "rsaEncryption");
}

#[test]
fn aes_128_is_refused() {
    let envelope = Recipient::foreign().encrypt_with(
        &plaintext(5),
        &["-aes-128-cbc", "-keyid", "-stream"],
        &OAEP_SHA256,
    );
    let (e, _) = parse_err(&envelope);
    assert_unsupported(&e, "contentEncryptionAlgorithm.algorithm", "AES-128-CBC");
    let mut parts = kms_shaped();
    parts.content_alg = OID_AES128_CBC;
    let (e, _) = parse_err(&parts.aws_shape());
    assert_unsupported(
        &e,
        "contentEncryptionAlgorithm.algorithm",
        "2.16.840.1.101.3.4.1.2",
    );
}

#[test]
fn a_wrong_padding() {
    for size in [0, 17] {
        let (key, recipient) = key_and_recipient();
        let mut envelope = recipient.encrypt(&plaintext(size), true, true);
        // Flipping a bit of the block before the last flips the same bit of the last
        // plaintext block: its padding (0x10 or 0x0f) becomes 0x11 or 0x0e.
        let iv = *Envelope::parse(&envelope).unwrap().iv();
        let iv_at = envelope.windows(16).position(|w| w == iv).unwrap();
        let at = if size == 0 {
            iv_at + 15
        } else {
            let (chunks, _) = common::walk_chunks(&envelope, iv_at + 16);
            assert_eq!(chunks, 2);
            // [0] 0x80, chunk 0x04 0x10, 16 bytes: the first block's last byte.
            iv_at + 16 + 2 + 2 + 15
        };
        envelope[at] ^= 0x01;
        let e = key.open(&envelope).unwrap_err();
        assert!(matches!(e, CmsError::Padding { .. }), "size {size}: {e}");
    }
}

#[test]
fn content_not_in_whole_blocks() {
    let (key, recipient) = key_and_recipient();
    let mut parts = Parts::of(&recipient.encrypt(&plaintext(17), true, true));
    parts.content.pop();
    let e = key.open(&parts.aws_shape()).unwrap_err();
    assert!(matches!(e, CmsError::BlockLength { len: 31, .. }), "{e}");
    let (key, recipient) = key_and_recipient();
    let mut parts = Parts::of(&recipient.encrypt(&plaintext(17), true, true));
    parts.content.clear();
    let e = key.open(&parts.aws_shape()).unwrap_err();
    assert!(matches!(e, CmsError::BlockLength { len: 0, .. }), "{e}");
}

#[test]
fn a_key_that_is_not_ours() {
    let envelope = Recipient::foreign().encrypt(&plaintext(17), true, true);
    let (key, _) = key_and_recipient();
    let e = key.open(&envelope).unwrap_err();
    assert!(matches!(e, CmsError::Unwrap { .. }), "{e}");
    // A wrapped key of another size than our modulus (an RSA-3072 recipient).
    let tmp = tempfile::tempdir().unwrap();
    common::openssl(tmp.path(), &["genrsa", "-out", "rsa.pem", "3072"]);
    let der = common::openssl(
        tmp.path(),
        &["pkey", "-in", "rsa.pem", "-pubout", "-outform", "DER"],
    );
    let envelope = Recipient::for_public_key(&der).encrypt(&plaintext(17), true, true);
    let (key, _) = key_and_recipient();
    let e = key.open(&envelope).unwrap_err();
    assert!(
        matches!(
            e,
            CmsError::WrappedKeyLength {
                len: 384,
                modulus: 256,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn trailing_garbage() {
    let envelope = kms_shaped().aws_shape();
    for garbage in [&[0x00][..], &[0x04, 0x00], &[0xff; 7]] {
        let mut input = envelope.clone();
        input.extend_from_slice(garbage);
        let (e, _) = parse_err(&input);
        assert!(
            matches!(&e, CmsError::TrailingData { offset, .. } if *offset == envelope.len()),
            "{e}"
        );
    }
    // Inside: a NULL after the EncryptedContentInfo's last field.
    let mut parts = kms_shaped();
    parts.raw_content = Some([tlv(0x80, &parts.content), vec![0x05, 0x00]].concat());
    let (e, _) = parse_err(&parts.aws_shape());
    assert!(
        matches!(&e, CmsError::TrailingData { path, tag: 0x05, .. }
            if path.ends_with("encryptedContentInfo")),
        "{e}"
    );
}

#[test]
fn shapes_kms_never_sends() {
    // Two recipients.
    let mut parts = kms_shaped();
    parts.more_recipients = vec![tlv(0x30, &[0x02, 0x01, 0x02])];
    let (e, _) = parse_err(&parts.aws_shape());
    assert_unsupported(&e, "recipientInfos", "more than one");
    // A key-agreement recipient instead.
    let mut envelope = kms_shaped().aws_shape();
    let at = envelope
        .windows(3)
        .position(|w| w == [0x31, 0x82, 0x01])
        .unwrap();
    envelope[at + 4] = 0xa1;
    let (e, _) = parse_err(&envelope);
    assert_unsupported(&e, "recipientInfos", "KeyAgreeRecipientInfo");
    // Versions that do not match their recipient identifier.
    let mut parts = kms_shaped();
    parts.raw_version = Some(vec![0x02, 0x01, 0x00]);
    let (e, _) = parse_err(&parts.aws_shape());
    assert_unsupported(&e, "KeyTransRecipientInfo.version", "0 with a version 2");
    let mut parts = kms_shaped();
    parts.raw_version = Some(vec![0x02, 0x01, 0x03]);
    let (e, _) = parse_err(&parts.aws_shape());
    assert_unsupported(&e, "KeyTransRecipientInfo.version", "3");
    // Detached content.
    let mut parts = kms_shaped();
    parts.raw_content = Some(Vec::new());
    let (e, _) = parse_err(&parts.aws_shape());
    assert!(
        matches!(&e, CmsError::Missing { path, .. } if path.ends_with("encryptedContent")),
        "{e}"
    );
}

/// Every single-byte change of a KMS-shaped envelope parses or is refused: never a panic.
#[test]
fn every_byte_flipped() {
    let envelope = kms_shaped().aws_shape();
    for i in 0..envelope.len() {
        for x in [0x01, 0x80, 0xff] {
            let mut input = envelope.clone();
            input[i] ^= x;
            let _ = Envelope::parse(&input);
        }
    }
}
