//! Attestation documents: real AWS documents, the documents that must be rejected, mutations,
//! and the software NSM's documents.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use cidboot::nsm::document::{parse_cose, Document};
use cidboot::nsm::software::{SoftwareNsm, TestCa};
use cidboot::nsm::Nsm;
use cidboot::verify::{self, At, Policy, Report, Status};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/attestation")
}

fn real_docs() -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(fixtures())
        .expect("../shared/fixtures/attestation beside the checkout")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cose"))
        .filter(|p| {
            !p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("NEGATIVE")
        })
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    assert_eq!(v.len(), 10, "expected the ten real AWS documents");
    v
}

fn aws(at: At) -> Policy {
    Policy {
        root_der: verify::aws_root().unwrap(),
        at,
        pcrs: BTreeMap::new(),
        nonce: None,
        user_data: None,
        insecure_unsigned: false,
        require_locked: Default::default(),
        measurements: None,
        // These policies check the signature, chain and fields; pinning is tested on its own.
        allow_unpinned: true,
    }
}

fn failed(r: &Report) -> Vec<String> {
    r.checks
        .iter()
        .filter(|c| c.status == Status::Fail)
        .map(|c| c.name.clone())
        .collect()
}

#[test]
fn embedded_root_matches_the_published_fingerprint() {
    let der = verify::aws_root().unwrap();
    let file = verify::pem_cert(
        &std::fs::read_to_string(fixtures().join("aws-nitro-enclaves-root-G1.pem")).unwrap(),
    )
    .unwrap();
    assert_eq!(der, file);
}

#[test]
fn real_documents_verify_at_their_own_time_and_are_expired_now() {
    for (name, doc) in real_docs() {
        let r = verify::verify(&doc, &aws(At::Document));
        assert!(r.ok && r.signed, "{name}: {:?}", r.checks);
        let r = verify::verify(&doc, &aws(At::Now));
        assert!(!r.ok, "{name} verified now");
        assert!(
            failed(&r).contains(&"validity".to_string()),
            "{name}: {:?}",
            r.checks
        );
    }
}

#[test]
fn both_negative_documents_are_rejected() {
    for (name, why) in [
        ("NEGATIVE-nitrite-selfsigned.cose", "root"),
        ("NEGATIVE-oyster-custom-root.cose", "root"),
    ] {
        let doc = std::fs::read(fixtures().join(name)).unwrap();
        for at in [At::Document, At::Now] {
            let r = verify::verify(&doc, &aws(at));
            assert!(!r.ok, "{name} accepted");
            assert!(
                failed(&r).contains(&why.to_string()),
                "{name}: {:?}",
                r.checks
            );
        }
        // Not even the insecure mode lets a signed document through.
        let r = verify::verify(
            &doc,
            &Policy {
                insecure_unsigned: true,
                ..aws(At::Document)
            },
        );
        assert!(!r.ok && !r.insecure, "{name}");
    }
}

/// Byte ranges of the protected header, payload and signature inside a document.
fn regions(doc: &[u8]) -> [(usize, usize); 3] {
    let c = parse_cose(doc).unwrap();
    let find = |needle: &[u8]| doc.windows(needle.len()).position(|w| w == needle).unwrap();
    let p = find(&c.protected);
    let pl = find(&c.payload);
    let s = find(&c.signature);
    [
        (p, c.protected.len()),
        (pl, c.payload.len()),
        (s, c.signature.len()),
    ]
}

#[test]
fn any_flipped_byte_in_signature_payload_or_protected_header_is_rejected() {
    let (_, doc) = real_docs()
        .into_iter()
        .find(|(n, _)| n.starts_with("nitro-attest"))
        .unwrap();
    let policy = aws(At::Document);
    assert!(verify::verify(&doc, &policy).ok);
    let mut tried = 0;
    for (start, len) in regions(&doc) {
        for i in start..start + len {
            let mut m = doc.clone();
            m[i] ^= 0x01;
            let r = verify::verify(&m, &policy);
            assert!(!r.ok, "a flip at byte {i} was accepted");
            tried += 1;
        }
    }
    assert!(tried > 4000, "{tried}");
}

#[test]
fn tagged_documents_and_indefinite_length_payloads_verify_as_received() {
    // Tag 18 around a real document.
    let (_, doc) = real_docs().remove(0);
    let mut tagged = vec![0xd2];
    tagged.extend_from_slice(&doc);
    assert!(verify::verify(&tagged, &aws(At::Document)).ok);
    // An indefinite-length payload map, signed as such: re-encoding it would break the signature.
    let ca = TestCa::generate().unwrap();
    let nsm = SoftwareNsm::new(&ca, &[]).unwrap();
    let c = parse_cose(&nsm.attestation(None, Some(b"n"), None).unwrap()).unwrap();
    assert_eq!(c.payload[0], 0xa9, "a definite map of nine entries");
    let mut indef = c.payload.clone();
    indef[0] = 0xbf;
    indef.push(0xff);
    let signed = nsm.sign_payload(&indef).unwrap();
    let policy = Policy {
        root_der: verify::pem_cert(ca.root_pem()).unwrap(),
        ..aws(At::Now)
    };
    let r = verify::verify(&signed, &policy);
    assert!(r.ok, "{:?}", r.checks);
    assert_eq!(r.document.unwrap().nonce.as_deref(), Some(&b"n"[..]));
}

#[test]
fn a_swapped_chain_and_the_wrong_root_are_rejected() {
    // A real document whose cabundle is reordered: the signature and the chain both fail.
    let (_, doc) = real_docs()
        .into_iter()
        .find(|(n, _)| n.starts_with("qos"))
        .unwrap();
    let c = parse_cose(&doc).unwrap();
    let mut d = Document::parse(&c.payload).unwrap();
    let n = d.cabundle.len();
    d.cabundle.swap(n - 1, n - 2);
    let swapped = cidboot::nsm::document::build_cose(&c.protected, &d.encode(), &c.signature);
    let r = verify::verify(&swapped, &aws(At::Document));
    assert!(!r.ok);
    let f = failed(&r);
    assert!(
        f.contains(&"chain".to_string()) && f.contains(&"signature".to_string()),
        "{:?}",
        r.checks
    );
    // The same swap, validly signed by the software NSM: only the chain can catch it.
    let ca = TestCa::generate().unwrap();
    let nsm = SoftwareNsm::new(&ca, &[]).unwrap();
    let c = parse_cose(&nsm.attestation(None, None, None).unwrap()).unwrap();
    let mut d = Document::parse(&c.payload).unwrap();
    d.cabundle.swap(0, 1);
    let signed = nsm.sign_payload(&d.encode()).unwrap();
    let test_root = Policy {
        root_der: verify::pem_cert(ca.root_pem()).unwrap(),
        ..aws(At::Now)
    };
    let r = verify::verify(&signed, &test_root);
    assert!(!r.ok);
    assert!(
        failed(&r).contains(&"chain".to_string()) && failed(&r).contains(&"root".to_string()),
        "{:?}",
        r.checks
    );
    // A real document against a different root.
    let (_, doc) = real_docs().remove(0);
    let r = verify::verify(
        &doc,
        &Policy {
            at: At::Document,
            ..test_root
        },
    );
    assert!(
        failed(&r).contains(&"root".to_string()) && failed(&r).contains(&"chain".to_string()),
        "{:?}",
        r.checks
    );
}

#[test]
fn pcr_nonce_and_user_data_mismatches_are_rejected() {
    let (_, doc) = real_docs()
        .into_iter()
        .find(|(n, _)| n.starts_with("nitrite-maxsize"))
        .unwrap();
    let d = Document::parse(&parse_cose(&doc).unwrap().payload).unwrap();
    let good = Policy {
        pcrs: BTreeMap::from([
            (0, d.pcrs[&0].clone()),
            (1, d.pcrs[&1].clone()),
            (2, d.pcrs[&2].clone()),
        ]),
        nonce: d.nonce.clone(),
        user_data: d.user_data.clone(),
        ..aws(At::Document)
    };
    assert!(verify::verify(&doc, &good).ok);
    let mut pcr = good.clone();
    pcr.pcrs.insert(2, vec![0xee; 48]);
    assert_eq!(failed(&verify::verify(&doc, &pcr)), vec!["pcr2"]);
    let mut missing = good.clone();
    missing.pcrs.insert(16, vec![0; 48]);
    assert_eq!(failed(&verify::verify(&doc, &missing)), vec!["pcr16"]);
    let nonce = Policy {
        nonce: Some(b"other".to_vec()),
        ..good.clone()
    };
    assert_eq!(failed(&verify::verify(&doc, &nonce)), vec!["nonce"]);
    let ud = Policy {
        user_data: Some(b"other".to_vec()),
        ..good
    };
    assert_eq!(failed(&verify::verify(&doc, &ud)), vec!["user_data"]);
}

#[test]
fn software_nsm_documents_verify_with_the_test_root_only() {
    let ca = TestCa::generate().unwrap();
    let nsm = SoftwareNsm::new(&ca, &[(0, [7u8; 48])]).unwrap();
    nsm.extend_pcr(16, b"x").unwrap();
    nsm.lock_pcr(16).unwrap();
    let doc = nsm
        .attestation(Some(b"ud"), Some(b"nonce"), Some(b"pk"))
        .unwrap();
    let test_root = Policy {
        root_der: verify::pem_cert(ca.root_pem()).unwrap(),
        pcrs: BTreeMap::from([(0, vec![7u8; 48]), (16, nsm.describe_pcr(16).unwrap().1)]),
        nonce: Some(b"nonce".to_vec()),
        user_data: Some(b"ud".to_vec()),
        ..aws(At::Now)
    };
    let r = verify::verify(&doc, &test_root);
    assert!(r.ok, "{:?}", r.checks);
    let r = verify::verify(
        &doc,
        &Policy {
            root_der: verify::aws_root().unwrap(),
            ..test_root.clone()
        },
    );
    assert!(!r.ok && failed(&r).contains(&"root".to_string()));
    // A CA written out and loaded again signs documents the same root verifies.
    let again = TestCa::load(ca.root_pem(), &ca.key_pem()).unwrap();
    let doc = SoftwareNsm::new(&again, &[])
        .unwrap()
        .attestation(None, None, None)
        .unwrap();
    assert!(
        verify::verify(
            &doc,
            &Policy {
                pcrs: BTreeMap::new(),
                nonce: None,
                user_data: None,
                ..test_root
            }
        )
        .ok
    );
}

#[test]
fn insecure_mode_accepts_only_the_emulators_unsigned_shape() {
    // The emulated NSM's document: protected {1: -1}, zeroed signature and certificate.
    let ca = TestCa::generate().unwrap();
    let nsm = SoftwareNsm::new(&ca, &[]).unwrap();
    let c = parse_cose(&nsm.attestation(None, Some(b"n"), None).unwrap()).unwrap();
    let mut d = Document::parse(&c.payload).unwrap();
    d.certificate = vec![0; d.certificate.len()];
    d.cabundle = vec![vec![0; 100]];
    let protected = [0xa1, 0x01, 0x20]; // {1: -1}
    let unsigned = cidboot::nsm::document::build_cose(&protected, &d.encode(), &[0u8; 64]);
    let strict = aws(At::Now);
    let r = verify::verify(&unsigned, &strict);
    assert!(!r.ok && failed(&r) == vec!["signature"], "{:?}", r.checks);
    let insecure = Policy {
        insecure_unsigned: true,
        nonce: Some(b"n".to_vec()),
        ..strict.clone()
    };
    let r = verify::verify(&unsigned, &insecure);
    assert!(r.ok && r.insecure, "{:?}", r.checks);
    assert!(r
        .checks
        .iter()
        .any(|c| c.status == Status::Skipped && c.detail.contains("INSECURE")));
    // PCRs and nonces still count in insecure mode.
    let wrong = Policy {
        nonce: Some(b"x".to_vec()),
        ..insecure.clone()
    };
    assert!(!verify::verify(&unsigned, &wrong).ok);
    // A signed document with a bad signature stays a failure in insecure mode.
    let (_, doc) = real_docs().remove(0);
    let mut bad = doc.clone();
    let n = bad.len();
    bad[n - 1] ^= 1;
    let r = verify::verify(
        &bad,
        &Policy {
            at: At::Document,
            nonce: None,
            ..insecure
        },
    );
    assert!(
        !r.ok && !r.insecure && failed(&r) == vec!["signature"],
        "{:?}",
        r.checks
    );
}

#[test]
fn hostile_documents_fail_cleanly() {
    for bad in [
        vec![],
        vec![0x84],
        vec![0x84, 0x40, 0xa0, 0x40, 0x40],
        vec![0x9f; 100_000],
        vec![0xd2; 64],
        {
            let mut v = vec![0x84, 0x40, 0xa0, 0x5b];
            v.extend_from_slice(&u64::MAX.to_be_bytes());
            v
        },
    ] {
        let r = verify::verify(&bad, &aws(At::Now));
        assert!(!r.ok && failed(&r) == vec!["structure"], "{:?}", r.checks);
    }
}

#[test]
fn a_policy_that_pins_nothing_fails_unless_allowed() {
    // A production enclave's document (a debug-mode one has PCR0 at zeros, which pins nothing).
    let doc = std::fs::read(fixtures().join("nitro-attest-2025-01-06.cose")).unwrap();
    let strict = Policy {
        allow_unpinned: false,
        ..aws(At::Document)
    };
    assert!(!strict.is_pinned());
    let r = verify::verify(&doc, &strict);
    assert_eq!(failed(&r), vec!["pinned"], "{:?}", r.checks);
    // A nonce is no pin; a PCR is.
    let r = verify::verify(
        &doc,
        &Policy {
            nonce: Some(b"x".to_vec()),
            ..strict.clone()
        },
    );
    assert!(failed(&r).contains(&"pinned".to_string()));
    let d = Document::parse(&parse_cose(&doc).unwrap().payload).unwrap();
    let pinned = Policy {
        pcrs: BTreeMap::from([(0, d.pcrs[&0].clone())]),
        ..strict
    };
    assert!(verify::verify(&doc, &pinned).ok);
    let r = verify::verify(&doc, &aws(At::Document));
    assert!(r.ok);
    assert!(r
        .checks
        .iter()
        .any(|c| c.name == "pinned" && c.status == Status::Skipped));
}

#[test]
fn a_pcr_every_enclave_shares_is_no_pin() {
    // A debug-mode document from a real enclave: its PCR0-2 are zeros, whatever it ran.
    let doc = std::fs::read(fixtures().join("evervault-debug-2023-09-18.cose")).unwrap();
    let d = Document::parse(&parse_cose(&doc).unwrap().payload).unwrap();
    let strict = Policy {
        allow_unpinned: false,
        ..aws(At::Document)
    };
    assert!(d.pcrs[&0].iter().all(|b| *b == 0), "a debug-mode document");
    let zeros = Policy {
        pcrs: (0..3).map(|i| (i, d.pcrs[&i].clone())).collect(),
        ..strict.clone()
    };
    assert!(!zeros.is_pinned());
    let r = verify::verify(&doc, &zeros);
    // Each PCR holds, yet the document is not verified: nothing told this enclave from another.
    assert_eq!(failed(&r), vec!["pinned"], "{:?}", r.checks);
    let pinned = r.checks.iter().find(|c| c.name == "pinned").unwrap();
    assert!(
        pinned
            .detail
            .contains("--pcr 0=zeros pins nothing: a debug-mode enclave"),
        "{}",
        pinned.detail
    );
    // A real production document: its unused PCRs (zeros) pin nothing; its PCR0 does.
    let doc = std::fs::read(fixtures().join("nitro-attest-2025-01-06.cose")).unwrap();
    let d = Document::parse(&parse_cose(&doc).unwrap().payload).unwrap();
    let (unused, value) = d
        .pcrs
        .iter()
        .find(|(_, v)| v.iter().all(|b| *b == 0))
        .expect("a PCR the enclave does not use");
    let only_unused = Policy {
        pcrs: BTreeMap::from([(*unused, value.clone())]),
        ..strict.clone()
    };
    let r = verify::verify(&doc, &only_unused);
    assert_eq!(failed(&r), vec!["pinned"], "{:?}", r.checks);
    let with_pcr0 = Policy {
        pcrs: BTreeMap::from([(*unused, value.clone()), (0, d.pcrs[&0].clone())]),
        ..strict
    };
    assert!(with_pcr0.is_pinned());
    assert!(verify::verify(&doc, &with_pcr0).ok);
    assert_eq!(
        verify::void_pin(17, &[0; 48]).unwrap(),
        "--pcr 17=zeros pins nothing: cidboot locks PCR17-31 without extending them, so every cidboot document has that value"
    );
}

#[test]
fn the_library_returns_the_fields_of_a_sound_log_only() {
    use cidboot::measure::{EventLog, Inputs};
    let ca = TestCa::generate().unwrap();
    let nsm = SoftwareNsm::new(&ca, &[]).unwrap();
    let cid = cidboot::reference::raw_cid(b"image");
    let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
    let log = EventLog::new(Inputs {
        reference: &format!("ipfs://{cid}"),
        root_cid: &cid,
        manifest_digest: &d('a'),
        config_digest: &d('c'),
        encrypted_layers: None,
        helpers: vec![("kms-client".into(), d('1'))],
        helper_images: vec![],
        runtime_config_digest: &d('e'),
    });
    let events: Vec<Vec<u8>> = log.events.iter().map(|e| e.digest_bytes()).collect();
    cidboot::nsm::measure_and_lock(&nsm, 16, &events).unwrap();
    let doc = nsm.attestation(None, None, None).unwrap();
    let json = serde_json::to_vec(&log).unwrap();
    let policy = Policy {
        root_der: verify::pem_cert(ca.root_pem()).unwrap(),
        measurements: Some(verify::Measurements {
            log: json.clone(),
            manifest_digest: Some(d('a')),
            cid: Some(cid),
            helpers: BTreeMap::from([("kms-client".into(), d('1'))]),
            ..Default::default()
        }),
        allow_unpinned: false,
        ..aws(At::Now)
    };
    let r = verify::verify(&doc, &policy);
    assert!(r.ok, "{:?}", r.checks);
    // The helpers and the runtime configuration alone hold for any image booted with them.
    let no_image = Policy {
        measurements: Some(verify::Measurements {
            log: json.clone(),
            runtime_config_digest: Some(d('e')),
            helpers: BTreeMap::from([("kms-client".into(), d('1'))]),
            ..Default::default()
        }),
        ..policy.clone()
    };
    assert!(!no_image.is_pinned());
    let n = verify::verify(&doc, &no_image);
    assert_eq!(failed(&n), vec!["pinned"], "{:?}", n.checks);
    let pinned = n.checks.iter().find(|c| c.name == "pinned").unwrap();
    assert!(pinned.detail.contains("pin no image"), "{}", pinned.detail);
    let m = r.measured.unwrap();
    assert_eq!(
        (m.manifest_digest.as_str(), m.cid, m.pcr16.as_str()),
        (d('a').as_str(), cid, log.pcr16.as_str())
    );
    assert_eq!(m.helpers["kms-client"], d('1'));
    // The manifest event's value of another image over this image's data and digests.
    let mut forged: serde_json::Value = serde_json::from_slice(&json).unwrap();
    forged["events"][2]["value"] = d('b').into();
    let mut m = policy.measurements.clone().unwrap();
    m.log = forged.to_string().into_bytes();
    m.manifest_digest = Some(d('b'));
    let r = verify::verify(
        &doc,
        &Policy {
            measurements: Some(m),
            ..policy.clone()
        },
    );
    assert!(r.measured.is_none());
    assert_eq!(
        failed(&r),
        vec![
            "measurements",
            "manifest",
            "cid",
            "helper:kms-client",
            "helpers"
        ]
    );
    let c = r.checks.iter().find(|c| c.name == "measurements").unwrap();
    assert!(
        c.detail.contains("event 3 (manifest-digest)"),
        "{}",
        c.detail
    );
    // An extra helper that the verifier did not expect.
    let mut m = policy.measurements.clone().unwrap();
    m.helpers = BTreeMap::from([("tls-client".into(), d('1'))]);
    let r = verify::verify(
        &doc,
        &Policy {
            measurements: Some(m),
            ..policy
        },
    );
    assert_eq!(
        failed(&r),
        vec!["helper:tls-client", "helpers"],
        "{:?}",
        r.checks
    );
}
