//! The enclave's side of the `Recipient` exchange: an RSA key pair made in this process, its
//! public half for the attestation document, and the one decryption it is made for.
//!
//! RSA-2048, as AWS's own Nitro Enclaves SDK uses. Its SubjectPublicKeyInfo is 294 bytes, well
//! under the 512 bytes cidboot puts in an attestation field (RSA-4096's, 550, would not fit).
//! A key is generated for every exchange, and generation time is what the choice weighs.
//! Measured with AWS-LC (20 keys each): on a 2-core x86-64 host, RSA-2048 takes 0.07-0.13 s
//! (median) against 0.2-0.7 s for RSA-3072; in a guest of the QEMU (TCG) that emulates the
//! enclave, 0.5 s (median; 0.8 s at the 90th percentile, 3.6 s at worst) against 2.0 s (3.6 s,
//! 4.0 s), for each secret at boot. RSA-3072's margin buys little for a key that lives for one
//! exchange: it never leaves the enclave's memory and is dropped after its one decryption.
//!
//! RSAES-OAEP is AWS-LC's (through `aws-lc-rs`): its OAEP decoding runs in constant time and
//! the private-key operation is blinded, so the time a decryption takes says nothing about the
//! padding (the Marvin attack, RUSTSEC-2023-0071, that the `rsa` crate carries). [`open`]
//! consumes the key besides: one key, one decryption, so there is no oracle to ask twice.
//!
//! [`open`]: RecipientKey::open

use aws_lc_rs::cipher::{
    DecryptionContext, PaddedBlockDecryptingKey, UnboundCipherKey, AES_256, AES_256_KEY_LEN,
};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::iv::FixedLength;
use aws_lc_rs::rsa::{
    KeySize, OaepPrivateDecryptingKey, PrivateDecryptingKey, OAEP_SHA256_MGF1SHA256,
};
use zeroize::Zeroizing;

use crate::envelope::{Envelope, AES_BLOCK};
use crate::CmsError;

/// The modulus size of the keys generated.
pub const KEY_BITS: usize = 2048;

/// An ephemeral RSA key pair for one `Recipient` exchange with AWS KMS.
pub struct RecipientKey {
    key: PrivateDecryptingKey,
    public_der: Vec<u8>,
}

impl std::fmt::Debug for RecipientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecipientKey")
            .field("bits", &self.key.key_size_bits())
            .finish_non_exhaustive()
    }
}

impl RecipientKey {
    /// A fresh RSA-2048 key pair, generated in this process (AWS-LC's generator, seeded from
    /// the kernel's random pool, which cidboot seeds from the NSM at boot). It blocks for the
    /// generation (see above: up to seconds in an emulated enclave), so async code calls it on
    /// a blocking thread; the key is `Send`.
    pub fn generate() -> Result<RecipientKey, CmsError> {
        let key = PrivateDecryptingKey::generate(KeySize::Rsa2048)
            .map_err(|_| CmsError::KeyGeneration("AWS-LC could not generate an RSA-2048 key"))?;
        let public_der = key
            .public_key()
            .as_der()
            .map_err(|_| CmsError::KeyGeneration("AWS-LC could not encode the public key"))?
            .as_ref()
            .to_vec();
        Ok(RecipientKey { key, public_der })
    }

    /// The public key as KMS expects it in the attestation document's `public_key`: a DER
    /// SubjectPublicKeyInfo (X.509's, `rsaEncryption` with NULL parameters), as AWS's Nitro
    /// Enclaves SDK puts it there.
    pub fn public_key_der(&self) -> Vec<u8> {
        self.public_der.clone()
    }

    /// Opens a `CiphertextForRecipient`: the envelope is parsed and checked whole, then the
    /// content key is unwrapped with RSAES-OAEP-SHA-256, and the content decrypted with
    /// AES-256-CBC, its PKCS#7 padding checked. Consumes the key: one key, one decryption.
    ///
    /// The content key and the buffers of the decryption are zeroed when dropped, the
    /// plaintext when the caller drops it.
    pub fn open(self, ciphertext_for_recipient: &[u8]) -> Result<Zeroizing<Vec<u8>>, CmsError> {
        let mut envelope = Envelope::parse(ciphertext_for_recipient)?;
        let content_key = self.unwrap_key(&envelope)?;

        let at = envelope.encrypted_content_offset();
        let mut buffer = Zeroizing::new(envelope.take_encrypted_content());
        if buffer.is_empty() || buffer.len() % AES_BLOCK != 0 {
            return Err(CmsError::BlockLength {
                offset: at,
                len: buffer.len(),
            });
        }
        let cipher = UnboundCipherKey::new(&AES_256, content_key.as_slice())
            .and_then(PaddedBlockDecryptingKey::cbc_pkcs7)
            .map_err(|_| CmsError::ContentKeyLength {
                len: content_key.len(),
            })?;
        let iv = DecryptionContext::Iv128(FixedLength::from(*envelope.iv()));
        let plaintext_len = cipher
            .decrypt(buffer.as_mut_slice(), iv)
            .map_err(|_| CmsError::Padding { offset: at })?
            .len();
        buffer.truncate(plaintext_len);
        Ok(buffer)
    }

    /// The content-encryption key, unwrapped (and the key pair dropped with it).
    fn unwrap_key(self, envelope: &Envelope) -> Result<Zeroizing<Vec<u8>>, CmsError> {
        let offset = envelope.encrypted_key_offset();
        let wrapped = envelope.encrypted_key();
        let modulus = self.key.key_size_bytes();
        if wrapped.len() != modulus {
            return Err(CmsError::WrappedKeyLength {
                offset,
                len: wrapped.len(),
                modulus,
            });
        }
        let oaep = OaepPrivateDecryptingKey::new(self.key)
            .map_err(|_| CmsError::KeyGeneration("AWS-LC refused the key for RSAES-OAEP"))?;
        let mut out = Zeroizing::new(vec![0u8; oaep.min_output_size()]);
        let len = oaep
            .decrypt(&OAEP_SHA256_MGF1SHA256, wrapped, out.as_mut_slice(), None)
            .map_err(|_| CmsError::Unwrap { offset })?
            .len();
        if len != AES_256_KEY_LEN {
            return Err(CmsError::ContentKeyLength { len });
        }
        out.truncate(len);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_can_move_to_and_from_a_blocking_thread() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<RecipientKey>();
        let key = std::thread::spawn(RecipientKey::generate)
            .join()
            .unwrap()
            .unwrap();
        assert_eq!(key.public_key_der().len(), 294);
        assert!(format!("{key:?}").contains("2048"));
    }
}
