//! The typed KMS operations. Those without a `Recipient` (here) send and return the plaintext
//! inside TLS, through JSON buffers that are not wiped: they are the operator's (`Encrypt`,
//! `GenerateDataKeyWithoutPlaintext`) and the tests'. The enclave's calls carry a `Recipient`
//! (`recipient.rs`), so that the plaintext never leaves KMS unencrypted.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use super::{Call, KmsClient, KmsError, MAX_GENERATED, MAX_PLAINTEXT};

/// A plaintext, wiped from memory when dropped.
pub type Secret = Zeroizing<Vec<u8>>;

/// An encryption context: names and values bound to a ciphertext, which `Decrypt` must give
/// again exactly.
pub type EncryptionContext = BTreeMap<String, String>;

/// Largest `CiphertextBlob` KMS makes or takes.
pub const MAX_CIPHERTEXT: usize = 6144;
/// Longest key identifier (id, ARN, alias name or alias ARN) KMS takes.
pub const MAX_KEY_ID: usize = 2048;

/// A ciphertext and the key it is under, as KMS names it (the key's ARN).
#[derive(Debug, Clone)]
pub struct Encrypted {
    /// `CiphertextBlob`.
    pub ciphertext: Vec<u8>,
    /// The key's ARN.
    pub key_id: String,
}

/// A data key: its plaintext, and the same under the KMS key.
pub struct DataKey {
    /// The key itself.
    pub plaintext: Secret,
    /// `CiphertextBlob`: the key encrypted under the KMS key, to keep.
    pub ciphertext: Vec<u8>,
    /// The KMS key's ARN.
    pub key_id: String,
}

pub(super) fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// Checks a key identifier before it goes anywhere.
pub(super) fn check_key_id(call: &Call, key_id: &str) -> Result<(), KmsError> {
    if key_id.is_empty() || key_id.len() > MAX_KEY_ID || key_id.chars().any(char::is_control) {
        return Err(KmsError::Input {
            call: call.clone(),
            reason: format!(
                "the key id must be 1 to {MAX_KEY_ID} characters without control characters"
            ),
        });
    }
    Ok(())
}

pub(super) fn check_count(call: &Call, n: u32) -> Result<(), KmsError> {
    if n == 0 || n > MAX_GENERATED {
        return Err(KmsError::Input {
            call: call.clone(),
            reason: format!("NumberOfBytes {n} is not 1..={MAX_GENERATED}"),
        });
    }
    Ok(())
}

pub(super) fn check_ciphertext(call: &Call, c: &[u8]) -> Result<(), KmsError> {
    if c.is_empty() || c.len() > MAX_CIPHERTEXT {
        return Err(KmsError::Input {
            call: call.clone(),
            reason: format!(
                "the ciphertext is {} bytes; KMS ciphertexts are 1 to {MAX_CIPHERTEXT}",
                c.len()
            ),
        });
    }
    Ok(())
}

/// A base64 blob field of an answer; `Ok(None)` when absent or null.
pub(super) fn blob(call: &Call, v: &Value, field: &str) -> Result<Option<Vec<u8>>, KmsError> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => base64::engine::general_purpose::STANDARD
            .decode(s)
            .map(Some)
            .map_err(|e| KmsError::Response {
                call: call.clone(),
                reason: format!("{field} is not base64: {e}"),
            }),
        Some(_) => Err(KmsError::Response {
            call: call.clone(),
            reason: format!("{field} is not a string"),
        }),
    }
}

pub(super) fn required(call: &Call, v: &Value, field: &str) -> Result<Vec<u8>, KmsError> {
    blob(call, v, field)?.ok_or_else(|| KmsError::Response {
        call: call.clone(),
        reason: format!("no {field}"),
    })
}

/// The answer's `KeyId` (the key's ARN), or `fallback` if KMS sent none.
pub(super) fn key_of(v: &Value, fallback: Option<&str>) -> String {
    v.get("KeyId")
        .and_then(Value::as_str)
        .or(fallback)
        .unwrap_or("")
        .to_string()
}

pub(super) fn body(v: &Value) -> Vec<u8> {
    // Serializing a Value built by json! cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

impl KmsClient {
    /// `Encrypt`: `plaintext` (1 to [`MAX_PLAINTEXT`] bytes) under `key_id`, bound to `context`.
    pub async fn encrypt(
        &self,
        key_id: &str,
        plaintext: &[u8],
        context: &EncryptionContext,
    ) -> Result<Encrypted, KmsError> {
        let call = Call::new("Encrypt", Some(key_id));
        check_key_id(&call, key_id)?;
        if plaintext.is_empty() || plaintext.len() > MAX_PLAINTEXT {
            return Err(KmsError::Input {
                call,
                reason: format!(
                    "the plaintext is {} bytes; KMS encrypts 1 to {MAX_PLAINTEXT}",
                    plaintext.len()
                ),
            });
        }
        let req = body(&json!({
            "KeyId": key_id,
            "Plaintext": b64(plaintext),
            "EncryptionContext": context,
        }));
        let v = self.call(&call, req).await?;
        Ok(Encrypted {
            ciphertext: required(&call, &v, "CiphertextBlob")?,
            key_id: key_of(&v, Some(key_id)),
        })
    }

    /// `GenerateDataKeyWithoutPlaintext`: `number_of_bytes` random bytes that nobody sees,
    /// returned only under `key_id`, bound to `context`.
    pub async fn generate_data_key_without_plaintext(
        &self,
        key_id: &str,
        number_of_bytes: u32,
        context: &EncryptionContext,
    ) -> Result<Encrypted, KmsError> {
        let call = Call::new("GenerateDataKeyWithoutPlaintext", Some(key_id));
        check_key_id(&call, key_id)?;
        check_count(&call, number_of_bytes)?;
        let v = self
            .call(
                &call,
                body(&json!({
                    "KeyId": key_id,
                    "NumberOfBytes": number_of_bytes,
                    "EncryptionContext": context,
                })),
            )
            .await?;
        Ok(Encrypted {
            ciphertext: required(&call, &v, "CiphertextBlob")?,
            key_id: key_of(&v, Some(key_id)),
        })
    }

    /// `Decrypt` without a `Recipient`: the plaintext comes back over TLS. `key_id`, when
    /// given, must be the key the ciphertext is under (KMS checks).
    pub async fn decrypt(
        &self,
        key_id: Option<&str>,
        ciphertext: &[u8],
        context: &EncryptionContext,
    ) -> Result<Secret, KmsError> {
        let call = Call::new("Decrypt", key_id);
        let v = self
            .call(
                &call,
                decrypt_body(&call, key_id, ciphertext, context, None)?,
            )
            .await?;
        Ok(Zeroizing::new(required(&call, &v, "Plaintext")?))
    }

    /// `GenerateDataKey` without a `Recipient`.
    pub async fn generate_data_key(
        &self,
        key_id: &str,
        number_of_bytes: u32,
        context: &EncryptionContext,
    ) -> Result<DataKey, KmsError> {
        let call = Call::new("GenerateDataKey", Some(key_id));
        let v = self
            .call(
                &call,
                data_key_body(&call, key_id, number_of_bytes, context, None)?,
            )
            .await?;
        Ok(DataKey {
            plaintext: Zeroizing::new(required(&call, &v, "Plaintext")?),
            ciphertext: required(&call, &v, "CiphertextBlob")?,
            key_id: key_of(&v, Some(key_id)),
        })
    }

    /// `GenerateRandom` without a `Recipient`.
    pub async fn generate_random(&self, number_of_bytes: u32) -> Result<Secret, KmsError> {
        let call = Call::new("GenerateRandom", None);
        let v = self
            .call(&call, random_body(&call, number_of_bytes, None)?)
            .await?;
        let p = Zeroizing::new(required(&call, &v, "Plaintext")?);
        check_length(&call, &p, number_of_bytes)?;
        Ok(p)
    }
}

/// The `Recipient` parameter: the attestation document, and the only algorithm KMS offers.
pub(super) fn recipient(document: &[u8]) -> Value {
    json!({
        "KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256",
        "AttestationDocument": b64(document),
    })
}

pub(super) fn decrypt_body(
    call: &Call,
    key_id: Option<&str>,
    ciphertext: &[u8],
    context: &EncryptionContext,
    document: Option<&[u8]>,
) -> Result<Vec<u8>, KmsError> {
    check_ciphertext(call, ciphertext)?;
    let mut v = json!({
        "CiphertextBlob": b64(ciphertext),
        "EncryptionContext": context,
    });
    if let Some(k) = key_id {
        check_key_id(call, k)?;
        v["KeyId"] = json!(k);
    }
    if let Some(d) = document {
        v["Recipient"] = recipient(d);
    }
    Ok(body(&v))
}

pub(super) fn data_key_body(
    call: &Call,
    key_id: &str,
    number_of_bytes: u32,
    context: &EncryptionContext,
    document: Option<&[u8]>,
) -> Result<Vec<u8>, KmsError> {
    check_key_id(call, key_id)?;
    check_count(call, number_of_bytes)?;
    let mut v = json!({
        "KeyId": key_id,
        "NumberOfBytes": number_of_bytes,
        "EncryptionContext": context,
    });
    if let Some(d) = document {
        v["Recipient"] = recipient(d);
    }
    Ok(body(&v))
}

pub(super) fn random_body(
    call: &Call,
    number_of_bytes: u32,
    document: Option<&[u8]>,
) -> Result<Vec<u8>, KmsError> {
    check_count(call, number_of_bytes)?;
    let mut v = json!({ "NumberOfBytes": number_of_bytes });
    if let Some(d) = document {
        v["Recipient"] = recipient(d);
    }
    Ok(body(&v))
}

/// A generated value must be exactly as long as asked: a shorter one is not what KMS makes.
pub(super) fn check_length(call: &Call, got: &[u8], asked: u32) -> Result<(), KmsError> {
    if u32::try_from(got.len()) != Ok(asked) {
        return Err(KmsError::Response {
            call: call.clone(),
            reason: format!("{} bytes, not the {asked} asked for", got.len()),
        });
    }
    Ok(())
}
