//! Envelopes made by an independent tool, `openssl cms -encrypt`, to a `RecipientKey`'s public
//! key open to exactly their plaintext: streamed (BER, indefinite lengths, chunked content, as
//! KMS sends) and not (DER), with a subjectKeyIdentifier (`-keyid`, as KMS) and with
//! issuerAndSerialNumber, at the sizes around the AES block and up to 1 MiB.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

mod common;

use cidboot_cms::{Envelope, RecipientId, RecipientKey};
use common::{key_and_recipient, plaintext, walk_chunks};

const SIZES: [usize; 7] = [0, 1, 15, 16, 17, 4096, 1024 * 1024];

/// Where the encrypted content's element starts: right after the IV, which ends the
/// (definite) content-encryption AlgorithmIdentifier.
fn content_offset(envelope: &[u8]) -> usize {
    let iv = *Envelope::parse(envelope).unwrap().iv();
    let at = envelope
        .windows(16)
        .position(|w| w == iv)
        .expect("the IV is in the envelope");
    at + 16
}

fn round_trip(stream: bool, keyid: bool) {
    for size in SIZES {
        let (key, recipient) = key_and_recipient();
        let plain = plaintext(size);
        let envelope = recipient.encrypt(&plain, stream, keyid);

        let parsed = Envelope::parse(&envelope).unwrap();
        let at = content_offset(&envelope);
        if stream {
            // BER as KMS sends it: indefinite lengths from the outermost element on, and the
            // content as a constructed [0] of OCTET STRING chunks.
            assert_eq!(&envelope[..2], &[0x30, 0x80], "size {size}: not indefinite");
            let (chunks, total) = walk_chunks(&envelope, at);
            assert_eq!(total, parsed.encrypted_content().len(), "size {size}");
            assert_eq!(total, (size / 16 + 1) * 16, "size {size}");
            if size >= 16 {
                assert!(chunks > 1, "size {size}: {chunks} chunk(s)");
            }
        } else {
            // DER: definite lengths, the content one primitive [0].
            assert_eq!(envelope[0], 0x30);
            assert_ne!(
                envelope[1], 0x80,
                "size {size}: DER has no indefinite length"
            );
            assert_eq!(
                envelope[at], 0x80,
                "size {size}: content is not a primitive [0]"
            );
        }
        match (keyid, parsed.recipient()) {
            (true, RecipientId::SubjectKeyIdentifier(ski)) => assert_eq!(ski.len(), 20),
            (false, RecipientId::IssuerAndSerialNumber(raw)) => assert_eq!(raw[0], 0x30),
            (_, other) => panic!("keyid {keyid}: {other:?}"),
        }
        assert_eq!(parsed.version(), if keyid { 2 } else { 0 });

        let opened = key.open(&envelope).unwrap();
        assert!(*opened == plain, "size {size}: plaintext differs");
    }
}

#[test]
fn streamed_with_key_identifier_as_kms_sends() {
    round_trip(true, true);
}

#[test]
fn der_with_key_identifier() {
    round_trip(false, true);
}

#[test]
fn streamed_with_issuer_and_serial_number() {
    round_trip(true, false);
}

#[test]
fn der_with_issuer_and_serial_number() {
    round_trip(false, false);
}

#[test]
fn the_public_key_is_a_der_subject_public_key_info_of_rsa_2048() {
    let key = RecipientKey::generate().unwrap();
    let der = key.public_key_der();
    assert_eq!(der.len(), 294);
    assert!(
        der.len() <= 512,
        "over the attestation document's public_key budget"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pub.der"), &der).unwrap();
    let text = common::openssl(
        dir.path(),
        &[
            "pkey", "-pubin", "-inform", "DER", "-in", "pub.der", "-noout", "-text",
        ],
    );
    let text = String::from_utf8(text).unwrap();
    assert!(text.contains("Public-Key: (2048 bit)"), "{text}");
    // Two keys are two keys.
    assert_ne!(der, RecipientKey::generate().unwrap().public_key_der());
}
