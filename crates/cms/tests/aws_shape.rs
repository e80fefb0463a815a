//! What AWS KMS sends, built from what openssl made: the fields of an `openssl cms -encrypt`
//! envelope re-encoded in the shape of KMS's `CiphertextForRecipient` (the vector in AWS's
//! Nitro Enclaves SDK): indefinite lengths, version 2, a 32-byte subjectKeyIdentifier,
//! explicit NULL parameters in the OAEP algorithms, the content in chunks. The cryptography is
//! openssl's; only the encoding changes, and the envelope still opens to the plaintext.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

mod common;

use cidboot_cms::{Envelope, RecipientId};
use common::ber::{indefinite, tlv};
use common::{key_and_recipient, plaintext, Parts};

#[test]
fn kms_shaped_envelopes_open_to_their_plaintext() {
    for size in [0, 17, 4096] {
        let (key, recipient) = key_and_recipient();
        let plain = plaintext(size);
        let parts = Parts::of(&recipient.encrypt(&plain, false, true));
        let envelope = parts.aws_shape();

        // The shape of AWS's vector: ContentInfo, [0] and EnvelopedData indefinite, version 2,
        // a definite SET of one KeyTransRecipientInfo, version 2, a 32-byte [0] key
        // identifier, id-RSAES-OAEP whose SHA-256 and MGF1 carry explicit NULLs.
        let prefix: &[u8] = &[
            0x30, 0x80, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x03, 0xa0,
            0x80, 0x30, 0x80, 0x02, 0x01, 0x02, 0x31, 0x82,
        ];
        assert_eq!(&envelope[..prefix.len()], prefix);
        let ktri = &envelope[prefix.len() + 2..];
        assert_eq!(&ktri[..2], &[0x30, 0x82]);
        assert_eq!(&ktri[4..9], &[0x02, 0x01, 0x02, 0x80, 0x20]);
        let sha256_null: &[u8] = &[
            0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05,
            0x00,
        ];
        let nulls = envelope
            .windows(sha256_null.len())
            .filter(|w| *w == sha256_null)
            .count();
        assert_eq!(nulls, 2, "the OAEP hash and MGF1's, each with NULL");
        // Content, EncryptedContentInfo, EnvelopedData, [0] and ContentInfo each end with an
        // end-of-contents marker.
        assert_eq!(&envelope[envelope.len() - 10..], &[0; 10]);
        assert!(envelope.windows(3).any(|w| w == [0xa0, 0x80, 0x04]));

        let parsed = Envelope::parse(&envelope).unwrap();
        assert_eq!(parsed.version(), 2);
        assert_eq!(
            parsed.recipient(),
            &RecipientId::SubjectKeyIdentifier(vec![0x5a; 32])
        );
        let opened = key.open(&envelope).unwrap();
        assert!(*opened == plain, "size {size}");
    }
}

/// BER lets every string come in chunks, and any constructed element have an indefinite
/// length: the key identifier, the wrapped key and the content nested a level deeper.
#[test]
fn every_string_may_come_in_chunks() {
    let (key, recipient) = key_and_recipient();
    let plain = plaintext(100);
    let mut parts = Parts::of(&recipient.encrypt(&plain, true, true));
    let key_chunks: Vec<Vec<u8>> = parts
        .encrypted_key
        .chunks(100)
        .map(|c| tlv(0x04, c))
        .collect();
    parts.raw_encrypted_key = Some(indefinite(0x24, &key_chunks));
    let (first, rest) = parts.content.split_at(32);
    parts.raw_content = Some(indefinite(
        0xa0,
        &[
            tlv(0x04, first),
            indefinite(0x24, &[tlv(0x04, &rest[..16]), tlv(0x04, &rest[16..])]),
        ],
    ));
    parts.chunk = 1;
    let envelope = parts.aws_shape();
    let parsed = Envelope::parse(&envelope).unwrap();
    assert_eq!(parsed.encrypted_key(), parts.encrypted_key.as_slice());
    assert_eq!(parsed.encrypted_content(), parts.content.as_slice());
    assert!(*key.open(&envelope).unwrap() == plain);
}
