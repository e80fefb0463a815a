//! A software NSM with the device's semantics, signing real ES384 documents under a test CA,
//! so the whole verify path runs off Nitro hardware. It proves nothing about hardware: a
//! verifier must never trust its root in production.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P384_SHA384,
};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{EcdsaKeyPair, ECDSA_P384_SHA384_FIXED_SIGNING};
use sha2::{Digest, Sha384};

use super::document::{build_cose, es384_protected, sig_structure, Document};
use super::{check_fields, Nsm, NsmError, FIRST_EXTENDABLE_PCR, PCR_COUNT};

fn sw(e: impl std::fmt::Display) -> NsmError {
    NsmError::Software(e.to_string())
}

/// A test certificate authority: the root a verifier pins with `--root` in tests.
pub struct TestCa {
    root_pem: String,
    root_der: Vec<u8>,
    key: KeyPair,
    issuer: rcgen::Certificate,
}

impl TestCa {
    /// A fresh P-384 root, as the software NSM's stand-in for the AWS Nitro root.
    pub fn generate() -> Result<TestCa, NsmError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).map_err(sw)?;
        let p = ca_params()?;
        let cert = p.self_signed(&key).map_err(sw)?;
        Ok(TestCa {
            root_pem: cert.pem(),
            root_der: cert.der().to_vec(),
            key,
            issuer: cert,
        })
    }

    /// Loads a CA written by [`TestCa::root_pem`] and [`TestCa::key_pem`].
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<TestCa, NsmError> {
        let key = KeyPair::from_pem(key_pem).map_err(sw)?;
        // Leaves are signed with the key under the CA's name; both are all the issuer needs.
        let issuer = ca_params()?.self_signed(&key).map_err(sw)?;
        let root_der = rustls_pki_types::pem::PemObject::from_pem_slice(cert_pem.as_bytes())
            .map(|c: rustls_pki_types::CertificateDer<'static>| c.to_vec())
            .map_err(sw)?;
        // Leaves name the issuer by the fixed test name: a CA of another name would sign
        // documents whose chain cannot verify, so refuse it here, by name.
        let subject = |der: &[u8]| {
            x509_parser::parse_x509_certificate(der)
                .map(|(_, c)| (c.subject().as_raw().to_vec(), c.subject().to_string()))
                .map_err(sw)
        };
        let (given, name) = subject(&root_der)?;
        if given != subject(issuer.der())?.0 {
            return Err(NsmError::Software(format!(
                "the CA certificate's subject is {name:?}: the software NSM signs only under a CA it generated (written by --nsm-root-out)"
            )));
        }
        Ok(TestCa {
            root_pem: cert_pem.to_string(),
            root_der,
            key,
            issuer,
        })
    }

    /// The root certificate a verifier pins (`cidboot verify --root`).
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// The root's private key, so a later run can sign under the same root.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }
}

/// The test CA's name, validity and constraints (the same for a generated and a loaded CA).
fn ca_params() -> Result<CertificateParams, NsmError> {
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(sw)?;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.distinguished_name.push(
        DnType::CommonName,
        "cidboot software NSM test root (NOT AWS)",
    );
    p.distinguished_name
        .push(DnType::OrganizationName, "cidboot tests");
    p.not_before = rcgen::date_time_ymd(2020, 1, 1);
    p.not_after = rcgen::date_time_ymd(2050, 1, 1);
    Ok(p)
}

struct Pcrs {
    values: [[u8; 48]; PCR_COUNT as usize],
    locked: [bool; PCR_COUNT as usize],
}

/// The software NSM.
pub struct SoftwareNsm {
    pcrs: Mutex<Pcrs>,
    signer: EcdsaKeyPair,
    leaf: Vec<u8>,
    cabundle: Vec<Vec<u8>>,
    module_id: String,
    rng: SystemRandom,
}

fn offset(d: Duration, later: bool) -> time::OffsetDateTime {
    let now = time::OffsetDateTime::now_utc();
    let d = time::Duration::try_from(d).unwrap_or(time::Duration::ZERO);
    if later {
        now + d
    } else {
        now - d
    }
}

impl SoftwareNsm {
    /// A module whose PCR0-15 hold `boot_pcrs` (zeros where not given) and are locked, with a
    /// fresh intermediate and a three-hour leaf under `ca`, as AWS issues them.
    pub fn new(ca: &TestCa, boot_pcrs: &[(u16, [u8; 48])]) -> Result<SoftwareNsm, NsmError> {
        let ikey = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).map_err(sw)?;
        let mut ip = CertificateParams::new(Vec::<String>::new()).map_err(sw)?;
        ip.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ip.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        ip.distinguished_name
            .push(DnType::CommonName, "cidboot software NSM instance CA");
        ip.not_before = offset(Duration::from_secs(3600), false);
        ip.not_after = offset(Duration::from_secs(24 * 3600), true);
        let inter = ip.signed_by(&ikey, &ca.issuer, &ca.key).map_err(sw)?;
        let lkey = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).map_err(sw)?;
        let mut lp = CertificateParams::new(Vec::<String>::new()).map_err(sw)?;
        lp.is_ca = IsCa::ExplicitNoCa;
        lp.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let module_id = format!(
            "cidboot-software-nsm-{:016x}",
            u64::from_be_bytes(random8()?)
        );
        lp.distinguished_name
            .push(DnType::CommonName, module_id.clone());
        lp.not_before = offset(Duration::from_secs(300), false);
        lp.not_after = offset(Duration::from_secs(3 * 3600), true);
        let leaf = lp.signed_by(&lkey, &inter, &ikey).map_err(sw)?;
        let rng = SystemRandom::new();
        let signer = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P384_SHA384_FIXED_SIGNING,
            &lkey.serialize_der(),
            &rng,
        )
        .map_err(sw)?;
        let mut values = [[0u8; 48]; PCR_COUNT as usize];
        for (i, v) in boot_pcrs {
            if *i < FIRST_EXTENDABLE_PCR {
                values[*i as usize] = *v;
            }
        }
        let mut locked = [false; PCR_COUNT as usize];
        locked[..FIRST_EXTENDABLE_PCR as usize].fill(true);
        Ok(SoftwareNsm {
            pcrs: Mutex::new(Pcrs { values, locked }),
            signer,
            leaf: leaf.der().to_vec(),
            cabundle: vec![ca.root_der.clone(), inter.der().to_vec()],
            module_id,
            rng,
        })
    }

    /// Signs an arbitrary payload as this module would: for tests and tools that need
    /// documents the device would never produce (other encodings, altered chains).
    pub fn sign_payload(&self, payload: &[u8]) -> Result<Vec<u8>, NsmError> {
        let protected = es384_protected();
        let sig = self
            .signer
            .sign(&self.rng, &sig_structure(&protected, payload))
            .map_err(|_| sw("signing failed"))?;
        Ok(build_cose(&protected, payload, sig.as_ref()))
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, Pcrs> {
        // A poisoned lock only means another thread panicked mid-update of plain arrays.
        self.pcrs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn random8() -> Result<[u8; 8], NsmError> {
    let mut b = [0u8; 8];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| sw("no randomness"))?;
    Ok(b)
}

fn check_index(index: u16) -> Result<usize, NsmError> {
    if index >= PCR_COUNT {
        return Err(NsmError::InvalidIndex(index));
    }
    Ok(index as usize)
}

impl Nsm for SoftwareNsm {
    fn describe_pcr(&self, index: u16) -> Result<(bool, Vec<u8>), NsmError> {
        let i = check_index(index)?;
        let s = self.lock_state();
        Ok((s.locked[i], s.values[i].to_vec()))
    }

    fn extend_pcr(&self, index: u16, data: &[u8]) -> Result<Vec<u8>, NsmError> {
        let i = check_index(index)?;
        super::check_extend(data)?;
        let mut s = self.lock_state();
        if s.locked[i] {
            return Err(NsmError::ReadOnlyIndex(index));
        }
        let mut h = Sha384::new();
        h.update(s.values[i]);
        h.update(data);
        s.values[i] = h.finalize().into();
        Ok(s.values[i].to_vec())
    }

    fn lock_pcr(&self, index: u16) -> Result<(), NsmError> {
        let i = check_index(index)?;
        self.lock_state().locked[i] = true;
        Ok(())
    }

    fn lock_pcrs(&self, range: u16) -> Result<(), NsmError> {
        if range > PCR_COUNT {
            return Err(NsmError::InvalidIndex(range));
        }
        self.lock_state().locked[..range as usize].fill(true);
        Ok(())
    }

    fn attestation(
        &self,
        user_data: Option<&[u8]>,
        nonce: Option<&[u8]>,
        public_key: Option<&[u8]>,
    ) -> Result<Vec<u8>, NsmError> {
        check_fields(user_data, nonce, public_key)?;
        let pcrs = {
            let s = self.lock_state();
            (0..PCR_COUNT)
                .filter(|i| s.locked[*i as usize])
                .map(|i| (i, s.values[i as usize].to_vec()))
                .collect()
        };
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        let doc = Document {
            module_id: self.module_id.clone(),
            digest: "SHA384".into(),
            timestamp,
            pcrs,
            certificate: self.leaf.clone(),
            cabundle: self.cabundle.clone(),
            public_key: public_key.map(<[u8]>::to_vec),
            user_data: user_data.map(<[u8]>::to_vec),
            nonce: nonce.map(<[u8]>::to_vec),
        };
        self.sign_payload(&doc.encode())
    }

    fn get_random(&self) -> Result<Vec<u8>, NsmError> {
        let mut b = vec![0u8; 256];
        self.rng.fill(&mut b).map_err(|_| sw("no randomness"))?;
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loaded_ca_signs_under_its_own_name_and_a_foreign_one_is_refused() {
        let ca = TestCa::generate().unwrap();
        let again = TestCa::load(ca.root_pem(), &ca.key_pem()).unwrap();
        assert_eq!(again.root_der, ca.root_der);

        let key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
        let mut p = ca_params().unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name
            .push(DnType::CommonName, "someone else's CA");
        let foreign = p.self_signed(&key).unwrap();
        let e = TestCa::load(&foreign.pem(), &key.serialize_pem())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("someone else's CA"), "{e}");
        assert!(e.contains("a CA it generated"), "{e}");
    }

    #[test]
    fn measuring_locks_every_pcr_and_refuses_a_pre_extended_one() {
        let ca = TestCa::generate().unwrap();
        let nsm = SoftwareNsm::new(&ca, &[]).unwrap();
        let v = crate::nsm::measure_and_lock(&nsm, 16, &[b"a".to_vec(), b"b".to_vec()]).unwrap();
        assert_eq!(
            v,
            crate::measure::replay([b"a".to_vec(), b"b".to_vec()]).to_vec()
        );
        for i in 16..PCR_COUNT {
            assert!(nsm.describe_pcr(i).unwrap().0, "PCR{i} unlocked");
            assert_eq!(nsm.extend_pcr(i, b"late"), Err(NsmError::ReadOnlyIndex(i)));
        }
        let doc =
            crate::nsm::document::parse_cose(&nsm.attestation(None, None, None).unwrap()).unwrap();
        assert_eq!(Document::parse(&doc.payload).unwrap().pcrs.len(), 32);
        // Something extended PCR17 before cidboot: the measurement is refused.
        let nsm = SoftwareNsm::new(&ca, &[]).unwrap();
        nsm.extend_pcr(17, b"earlier").unwrap();
        let e = crate::nsm::measure_and_lock(&nsm, 16, &[b"a".to_vec()]).unwrap_err();
        assert!(
            e.to_string().contains("PCR17 was extended before cidboot"),
            "{e}"
        );
    }

    #[test]
    fn has_the_device_semantics() {
        let ca = TestCa::generate().unwrap();
        let nsm = SoftwareNsm::new(&ca, &[]).unwrap();
        assert_eq!(nsm.extend_pcr(3, b"x"), Err(NsmError::ReadOnlyIndex(3)));
        assert_eq!(nsm.extend_pcr(32, b"x"), Err(NsmError::InvalidIndex(32)));
        assert!(matches!(
            nsm.extend_pcr(16, &[0; 513]),
            Err(NsmError::InputTooLarge { .. })
        ));
        let v = nsm.extend_pcr(16, b"event").unwrap();
        assert_eq!(v, crate::measure::replay([b"event".to_vec()]).to_vec());
        // Unlocked PCRs are not in documents.
        let doc =
            crate::nsm::document::parse_cose(&nsm.attestation(None, None, None).unwrap()).unwrap();
        let d = Document::parse(&doc.payload).unwrap();
        assert!(!d.pcrs.contains_key(&16) && d.pcrs.len() == 16);
        nsm.lock_pcr(16).unwrap();
        assert_eq!(
            nsm.extend_pcr(16, b"more"),
            Err(NsmError::ReadOnlyIndex(16))
        );
        let doc = crate::nsm::document::parse_cose(
            &nsm.attestation(Some(b"u"), Some(b"n"), None).unwrap(),
        )
        .unwrap();
        let d = Document::parse(&doc.payload).unwrap();
        assert_eq!(d.pcrs[&16], v);
        assert_eq!(
            (
                d.user_data.as_deref(),
                d.nonce.as_deref(),
                d.public_key.as_deref()
            ),
            (Some(&b"u"[..]), Some(&b"n"[..]), None)
        );
        assert!(matches!(
            nsm.attestation(None, Some(&[0; 513]), None),
            Err(NsmError::InputTooLarge { what: "nonce", .. })
        ));
        assert_eq!(nsm.get_random().unwrap().len(), 256);
    }
}
