//! What the tests share: envelopes made by `openssl cms` to a [`RecipientKey`]'s public key,
//! and a small BER writer to re-encode them or build hostile ones.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use cidboot_cms::RecipientKey;

/// Runs openssl, failing the test with its stderr if it fails.
pub fn openssl(dir: &Path, args: &[&str]) -> Vec<u8> {
    let o = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

/// A directory with a self-signed certificate over a public key (DER SubjectPublicKeyInfo),
/// signed by a throwaway EC key, with a subjectKeyIdentifier (which `-keyid` needs).
pub struct Recipient {
    pub dir: tempfile::TempDir,
}

impl Recipient {
    /// A certificate over `public_key_der`.
    pub fn for_public_key(public_key_der: &[u8]) -> Recipient {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("pub.der"), public_key_der).unwrap();
        openssl(
            d,
            &[
                "pkey", "-pubin", "-inform", "DER", "-in", "pub.der", "-out", "pub.pem",
            ],
        );
        openssl(
            d,
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                "sign.pem",
            ],
        );
        std::fs::write(d.join("ext.cnf"), "subjectKeyIdentifier=hash\n").unwrap();
        openssl(
            d,
            &[
                "req",
                "-new",
                "-key",
                "sign.pem",
                "-subj",
                "/CN=cidboot-cms-test",
                "-out",
                "req.pem",
            ],
        );
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "req.pem",
                "-signkey",
                "sign.pem",
                "-force_pubkey",
                "pub.pem",
                "-extfile",
                "ext.cnf",
                "-days",
                "1",
                "-out",
                "cert.pem",
            ],
        );
        Recipient { dir }
    }

    /// A certificate over a fresh RSA key of openssl's own (not any `RecipientKey`).
    pub fn foreign() -> Recipient {
        let tmp = tempfile::tempdir().unwrap();
        openssl(tmp.path(), &["genrsa", "-out", "rsa.pem", "2048"]);
        let der = openssl(
            tmp.path(),
            &["pkey", "-in", "rsa.pem", "-pubout", "-outform", "DER"],
        );
        Recipient::for_public_key(&der)
    }

    pub fn cert(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    /// `openssl cms -encrypt` of `plaintext` to this certificate, `-binary -outform DER`, with
    /// `options` before `-recip` and `keyopts` (each passed as `-keyopt`) after it.
    pub fn encrypt_with(&self, plaintext: &[u8], options: &[&str], keyopts: &[&str]) -> Vec<u8> {
        let d = self.dir.path();
        std::fs::write(d.join("plain"), plaintext).unwrap();
        let mut args = vec![
            "cms", "-encrypt", "-binary", "-outform", "DER", "-in", "plain",
        ];
        args.extend_from_slice(options);
        args.extend_from_slice(&["-recip", "cert.pem"]);
        for k in keyopts {
            args.extend_from_slice(&["-keyopt", k]);
        }
        args.extend_from_slice(&["-out", "env.der"]);
        openssl(d, &args);
        std::fs::read(d.join("env.der")).unwrap()
    }

    /// KMS's shape from openssl: `-stream -keyid -aes-256-cbc`, RSAES-OAEP with SHA-256.
    pub fn encrypt(&self, plaintext: &[u8], stream: bool, keyid: bool) -> Vec<u8> {
        let mut options = vec!["-aes-256-cbc"];
        if stream {
            options.push("-stream");
        }
        if keyid {
            options.push("-keyid");
        }
        self.encrypt_with(plaintext, &options, &OAEP_SHA256)
    }
}

/// The `-keyopt`s of KMS's `RSAES_OAEP_SHA_256` (openssl sets MGF1 to the OAEP digest).
pub const OAEP_SHA256: [&str; 2] = ["rsa_padding_mode:oaep", "rsa_oaep_md:sha256"];

/// A fresh key and a certificate over its public key.
pub fn key_and_recipient() -> (RecipientKey, Recipient) {
    let key = RecipientKey::generate().unwrap();
    let recipient = Recipient::for_public_key(&key.public_key_der());
    (key, recipient)
}

/// Deterministic test bytes.
pub fn plaintext(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

/// BER writing: definite TLVs, indefinite constructed ones, and chunked strings.
pub mod ber {
    /// A definite-length element.
    pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let len = content.len();
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let bytes = len.to_be_bytes();
            let skip = bytes.iter().take_while(|b| **b == 0).count();
            out.push(0x80 | (bytes.len() - skip) as u8);
            out.extend_from_slice(&bytes[skip..]);
        }
        out.extend_from_slice(content);
        out
    }

    /// A constructed element with an indefinite length.
    pub fn indefinite(tag: u8, parts: &[Vec<u8>]) -> Vec<u8> {
        let mut out = vec![tag, 0x80];
        for p in parts {
            out.extend_from_slice(p);
        }
        out.extend_from_slice(&[0, 0]);
        out
    }

    /// A constructed definite-length element.
    pub fn seq(tag: u8, parts: &[Vec<u8>]) -> Vec<u8> {
        tlv(tag, &parts.concat())
    }

    /// `bytes` as an indefinite constructed string of `tag` made of OCTET STRING chunks.
    pub fn chunked(tag: u8, bytes: &[u8], chunk: usize) -> Vec<u8> {
        let parts: Vec<Vec<u8>> = bytes.chunks(chunk).map(|c| tlv(0x04, c)).collect();
        indefinite(tag, &parts)
    }

    pub const OID_ENVELOPED_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x03];
    pub const OID_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01];
    pub const OID_RSAES_OAEP: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x07];
    pub const OID_MGF1: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x08];
    pub const OID_SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
    pub const OID_SHA1: &[u8] = &[0x2b, 0x0e, 0x03, 0x02, 0x1a];
    pub const OID_AES256_CBC: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x2a];
    pub const OID_AES128_CBC: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x02];

    /// An AlgorithmIdentifier with an explicit NULL parameter.
    pub fn alg_null(oid: &[u8]) -> Vec<u8> {
        seq(0x30, &[tlv(0x06, oid), vec![0x05, 0x00]])
    }
}

/// The parts of an envelope, to re-encode in other shapes.
#[derive(Clone)]
pub struct Parts {
    pub version: u8,
    pub ski: Vec<u8>,
    pub oaep_hash: &'static [u8],
    pub mgf_hash: &'static [u8],
    pub content_alg: &'static [u8],
    pub encrypted_key: Vec<u8>,
    pub iv: Vec<u8>,
    pub content: Vec<u8>,
    pub chunk: usize,
    /// Elements written as given instead of the ones these fields make.
    pub raw_version: Option<Vec<u8>>,
    pub raw_encrypted_key: Option<Vec<u8>>,
    pub raw_content: Option<Vec<u8>>,
    /// More RecipientInfos after the first.
    pub more_recipients: Vec<Vec<u8>>,
}

impl Parts {
    /// The fields of an envelope (parsed by the crate; what it makes of them is checked by
    /// opening the re-encoded envelope).
    pub fn of(envelope: &[u8]) -> Parts {
        let e = cidboot_cms::Envelope::parse(envelope).unwrap();
        Parts {
            version: 2,
            // AWS's identifier is a 32-byte hash.
            ski: vec![0x5a; 32],
            oaep_hash: ber::OID_SHA256,
            mgf_hash: ber::OID_SHA256,
            content_alg: ber::OID_AES256_CBC,
            encrypted_key: e.encrypted_key().to_vec(),
            iv: e.iv().to_vec(),
            content: e.encrypted_content().to_vec(),
            chunk: 48,
            raw_version: None,
            raw_encrypted_key: None,
            raw_content: None,
            more_recipients: Vec::new(),
        }
    }

    /// Encoded as AWS KMS encodes `CiphertextForRecipient` (the shape of the vector in AWS's
    /// Nitro Enclaves SDK): indefinite lengths around the EnvelopedData and the content, a
    /// definite recipientInfos, version 2 with a subjectKeyIdentifier, explicit NULL
    /// parameters in the OAEP algorithms, the content in OCTET STRING chunks.
    pub fn aws_shape(&self) -> Vec<u8> {
        use ber::*;
        let oaep_params = seq(
            0x30,
            &[
                seq(0xa0, &[alg_null(self.oaep_hash)]),
                seq(
                    0xa1,
                    &[seq(0x30, &[tlv(0x06, OID_MGF1), alg_null(self.mgf_hash)])],
                ),
            ],
        );
        let version = tlv(0x02, &[self.version]);
        let ktri = seq(
            0x30,
            &[
                self.raw_version.clone().unwrap_or_else(|| version.clone()),
                tlv(0x80, &self.ski),
                seq(0x30, &[tlv(0x06, OID_RSAES_OAEP), oaep_params]),
                self.raw_encrypted_key
                    .clone()
                    .unwrap_or_else(|| tlv(0x04, &self.encrypted_key)),
            ],
        );
        let recipients = [vec![ktri], self.more_recipients.clone()].concat();
        let eci = indefinite(
            0x30,
            &[
                tlv(0x06, OID_DATA),
                seq(0x30, &[tlv(0x06, self.content_alg), tlv(0x04, &self.iv)]),
                self.raw_content
                    .clone()
                    .unwrap_or_else(|| chunked(0xa0, &self.content, self.chunk)),
            ],
        );
        let ed = indefinite(0x30, &[version, seq(0x31, &recipients), eci]);
        indefinite(
            0x30,
            &[tlv(0x06, OID_ENVELOPED_DATA), indefinite(0xa0, &[ed])],
        )
    }
}

/// Walks the chunks of an indefinite `[0]` encrypted content that starts at `at` (its
/// identifier octet), returning their number and total length.
pub fn walk_chunks(bytes: &[u8], at: usize) -> (usize, usize) {
    assert_eq!(
        &bytes[at..at + 2],
        &[0xa0, 0x80],
        "content is not an indefinite [0]"
    );
    let mut pos = at + 2;
    let (mut count, mut total) = (0, 0);
    while bytes[pos..pos + 2] != [0, 0] {
        assert_eq!(
            bytes[pos], 0x04,
            "chunk at {pos} is not a primitive OCTET STRING"
        );
        let (len, header) = match bytes[pos + 1] {
            l if l < 0x80 => (l as usize, 2),
            l => {
                let n = (l & 0x7f) as usize;
                let v = bytes[pos + 2..pos + 2 + n]
                    .iter()
                    .fold(0usize, |a, b| a << 8 | *b as usize);
                (v, 2 + n)
            }
        };
        pos += header + len;
        count += 1;
        total += len;
    }
    (count, total)
}
