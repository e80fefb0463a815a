//! The calls an enclave makes: `Decrypt`, `GenerateDataKey` and `GenerateRandom` with a
//! `Recipient`. Each call makes a fresh RSA key ([`cidboot_cms::RecipientKey`]), puts its
//! public half in an NSM attestation document, and sends the document; KMS checks the key
//! policy's `kms:RecipientAttestation:*` conditions against the document's PCRs and answers
//! with `CiphertextForRecipient`, the plaintext encrypted to that key, which only this process
//! can open. The key opens one answer and is gone.

use cidboot_cms::RecipientKey;
use serde_json::Value;
use zeroize::Zeroizing;

use super::ops::{self, DataKey, EncryptionContext, Secret};
use super::{Call, KmsClient, KmsError};
use crate::nsm::Nsm;

/// The PCRs an `AccessDeniedException` names: those a key policy pins.
const POLICY_PCRS: [u16; 4] = [0, 1, 2, 16];

/// A fresh key and the attestation document that carries its public half.
struct Attested {
    key: RecipientKey,
    document: Vec<u8>,
}

async fn attest(call: &Call, nsm: &dyn Nsm) -> Result<Attested, KmsError> {
    let fail = |reason: String| KmsError::Attestation {
        call: call.clone(),
        reason,
    };
    // RSA key generation takes a few seconds in an emulated enclave: off the async threads.
    let key = tokio::task::spawn_blocking(RecipientKey::generate)
        .await
        .map_err(|e| fail(format!("generating the RSA key: {e}")))?
        .map_err(|e| fail(format!("generating the RSA key: {e}")))?;
    let document = nsm
        .attestation(None, None, Some(&key.public_key_der()))
        .map_err(|e| fail(e.to_string()))?;
    Ok(Attested { key, document })
}

/// `PCR0=…, PCR1=…, PCR2=…, PCR16=…` as the document carried them, in hex.
fn pcrs_of(document: &[u8]) -> String {
    use crate::nsm::document::{parse_cose, Document};
    let doc = match parse_cose(document).and_then(|c| Document::parse(&c.payload)) {
        Ok(d) => d,
        Err(e) => return format!("PCRs that could not be read back ({e})"),
    };
    POLICY_PCRS
        .iter()
        .map(|i| match doc.pcrs.get(i) {
            Some(v) => format!("PCR{i}={}", hex::encode(v)),
            None => format!("PCR{i}=(not in the document: unlocked)"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl KmsClient {
    /// One call with a `Recipient`: the answer's JSON and the key that opens it. An
    /// `AccessDeniedException` names the PCRs the document carried.
    async fn call_attested(
        &self,
        call: &Call,
        nsm: &dyn Nsm,
        body: impl FnOnce(&[u8]) -> Result<Vec<u8>, KmsError>,
    ) -> Result<(Value, RecipientKey), KmsError> {
        let a = attest(call, nsm).await?;
        let body = body(&a.document)?;
        match self.call(call, body).await {
            Ok(v) => Ok((v, a.key)),
            Err(KmsError::Kms {
                call,
                status,
                code,
                message,
            }) if code == "AccessDeniedException" => Err(KmsError::AccessDenied {
                call,
                status,
                message,
                pcrs: pcrs_of(&a.document),
            }),
            Err(e) => Err(e),
        }
    }

    /// Opens the answer's `CiphertextForRecipient` with `key`. An answer that also carries a
    /// `Plaintext` is refused: KMS sends it null or empty to a call with a `Recipient`.
    fn open(call: &Call, v: &Value, key: RecipientKey) -> Result<Secret, KmsError> {
        if ops::blob(call, v, "Plaintext")?.is_some_and(|p| !p.is_empty()) {
            return Err(KmsError::Response {
                call: call.clone(),
                reason: "a Plaintext in the answer to a call with a Recipient".into(),
            });
        }
        let sealed = ops::required(call, v, "CiphertextForRecipient")?;
        key.open(&sealed).map_err(|e| KmsError::Recipient {
            call: call.clone(),
            reason: e.to_string(),
        })
    }

    /// `Decrypt` with a `Recipient`: KMS releases the plaintext only if the key policy admits
    /// the attestation document `nsm` makes, and only encrypted to this process.
    pub async fn decrypt_attested(
        &self,
        nsm: &dyn Nsm,
        key_id: Option<&str>,
        ciphertext: &[u8],
        context: &EncryptionContext,
    ) -> Result<Secret, KmsError> {
        let call = Call::new("Decrypt", key_id);
        ops::check_ciphertext(&call, ciphertext)?;
        let (v, key) = self
            .call_attested(&call, nsm, |doc| {
                ops::decrypt_body(&call, key_id, ciphertext, context, Some(doc))
            })
            .await?;
        Self::open(&call, &v, key)
    }

    /// `GenerateDataKey` with a `Recipient`: a new data key, its plaintext opened here and its
    /// `CiphertextBlob` to keep.
    pub async fn generate_data_key_attested(
        &self,
        nsm: &dyn Nsm,
        key_id: &str,
        number_of_bytes: u32,
        context: &EncryptionContext,
    ) -> Result<DataKey, KmsError> {
        let call = Call::new("GenerateDataKey", Some(key_id));
        ops::check_key_id(&call, key_id)?;
        ops::check_count(&call, number_of_bytes)?;
        let (v, key) = self
            .call_attested(&call, nsm, |doc| {
                ops::data_key_body(&call, key_id, number_of_bytes, context, Some(doc))
            })
            .await?;
        let ciphertext = ops::required(&call, &v, "CiphertextBlob")?;
        let plaintext = Self::open(&call, &v, key)?;
        ops::check_length(&call, &plaintext, number_of_bytes)?;
        Ok(DataKey {
            plaintext,
            ciphertext,
            key_id: ops::key_of(&v, Some(key_id)),
        })
    }

    /// `GenerateRandom` with a `Recipient`: random bytes from KMS that only this process sees.
    pub async fn generate_random_attested(
        &self,
        nsm: &dyn Nsm,
        number_of_bytes: u32,
    ) -> Result<Secret, KmsError> {
        let call = Call::new("GenerateRandom", None);
        ops::check_count(&call, number_of_bytes)?;
        let (v, key) = self
            .call_attested(&call, nsm, |doc| {
                ops::random_body(&call, number_of_bytes, Some(doc))
            })
            .await?;
        let plaintext: Zeroizing<Vec<u8>> = Self::open(&call, &v, key)?;
        ops::check_length(&call, &plaintext, number_of_bytes)?;
        Ok(plaintext)
    }

    /// One attested call of the KMS proxy ([`super::proxy`]): `fields`, checked by the proxy,
    /// with a `Recipient` added. Returns the answer's JSON and its plaintext, opened here.
    pub(super) async fn call_opened(
        &self,
        nsm: &dyn Nsm,
        call: &Call,
        fields: serde_json::Map<String, Value>,
    ) -> Result<(Value, Secret), KmsError> {
        let (v, key) = self
            .call_attested(call, nsm, |doc| {
                let mut fields = fields;
                fields.insert("Recipient".into(), ops::recipient(doc));
                Ok(ops::body(&Value::Object(fields)))
            })
            .await?;
        let plaintext = Self::open(call, &v, key)?;
        Ok((v, plaintext))
    }
}
