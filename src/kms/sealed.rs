//! Sealed secrets: what `cidboot seal` prints and what a secrets file holds. The file is not
//! measured (rotating a value must not change PCR16 or the key policy); each ciphertext is
//! bound to its name by the encryption context `{"cidboot:secret": NAME}`, so that a
//! ciphertext sealed for one name cannot be opened as another.
//!
//! ```toml
//! [[secrets]]
//! name = "db-password"
//! key_id = "arn:aws:kms:us-east-1:111122223333:key/…"
//! ciphertext = "AQICAHh…"   # base64 of KMS's CiphertextBlob
//! ```

use std::collections::BTreeSet;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::ops::{EncryptionContext, MAX_CIPHERTEXT, MAX_KEY_ID};

/// The encryption-context key that binds a ciphertext to its secret's name.
pub const CONTEXT_KEY: &str = "cidboot:secret";
/// Longest secret name.
pub const MAX_NAME: usize = 64;
/// Most secrets in one file.
pub const MAX_SECRETS: usize = 256;
/// Largest secrets file: [`MAX_SECRETS`] entries of the largest ciphertext fit.
pub const MAX_SECRETS_FILE: usize = 4 << 20;

/// Why a secret's name or a secrets file was refused.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each variant's #[error] message is its documentation
pub enum SealedError {
    #[error(
        "secret name {0:?}: use 1 to 64 of A-Z a-z 0-9 . _ -, starting with a letter or digit"
    )]
    Name(String),
    #[error("the secrets file is {size} bytes, over the {max}-byte limit")]
    TooLarge { size: usize, max: usize },
    #[error("the secrets file is not valid: {0}")]
    Parse(String),
    #[error("the secrets file has {count} secrets, over the limit of {max}")]
    TooMany { count: usize, max: usize },
    #[error("secret {name:?} is in the secrets file twice")]
    Duplicate { name: String },
    #[error("secret {name:?}: {reason}")]
    Entry { name: String, reason: String },
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
}

/// Checks a secret's name: it becomes an encryption-context value, an environment variable's
/// source and a file name under `/run/secrets`, so it is plain and short.
pub fn check_name(name: &str) -> Result<(), SealedError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(SealedError::Name(name.to_string()))
    }
}

/// The encryption context a secret named `name` is sealed and opened with.
pub fn context(name: &str) -> EncryptionContext {
    EncryptionContext::from([(CONTEXT_KEY.to_string(), name.to_string())])
}

/// One sealed secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealedSecret {
    /// The secret's name, bound into the ciphertext's encryption context.
    pub name: String,
    /// The KMS key it is sealed under, as KMS named it (the key's ARN).
    pub key_id: String,
    /// KMS's `CiphertextBlob`, base64.
    pub ciphertext: String,
}

impl SealedSecret {
    /// An entry for `name` from KMS's answer.
    pub fn new(name: &str, key_id: &str, ciphertext: &[u8]) -> Result<SealedSecret, SealedError> {
        let s = SealedSecret {
            name: name.to_string(),
            key_id: key_id.to_string(),
            ciphertext: base64::engine::general_purpose::STANDARD.encode(ciphertext),
        };
        s.check()?;
        Ok(s)
    }

    /// The ciphertext's bytes.
    pub fn ciphertext_bytes(&self) -> Result<Vec<u8>, SealedError> {
        let b = base64::engine::general_purpose::STANDARD
            .decode(self.ciphertext.trim())
            .map_err(|e| self.bad(format!("ciphertext is not base64: {e}")))?;
        if b.is_empty() || b.len() > MAX_CIPHERTEXT {
            return Err(self.bad(format!(
                "ciphertext is {} bytes; KMS ciphertexts are 1 to {MAX_CIPHERTEXT}",
                b.len()
            )));
        }
        Ok(b)
    }

    /// The entry as a secrets file carries it: a `[[secrets]]` table.
    pub fn to_toml(&self) -> String {
        let q = |s: &str| toml_string(s);
        format!(
            "[[secrets]]\nname = {}\nkey_id = {}\nciphertext = {}\n",
            q(&self.name),
            q(&self.key_id),
            q(&self.ciphertext)
        )
    }

    fn bad(&self, reason: String) -> SealedError {
        SealedError::Entry {
            name: self.name.clone(),
            reason,
        }
    }

    fn check(&self) -> Result<(), SealedError> {
        check_name(&self.name)?;
        if self.key_id.is_empty()
            || self.key_id.len() > MAX_KEY_ID
            || self.key_id.chars().any(char::is_control)
        {
            return Err(self.bad(format!(
                "key_id must be 1 to {MAX_KEY_ID} characters without control characters"
            )));
        }
        self.ciphertext_bytes().map(|_| ())
    }
}

/// A TOML basic string: every value here is printable ASCII without quotes or backslashes
/// (names and base64 are checked; a key id is escaped anyway).
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A secrets file: the sealed values a boot is given, by name.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsFile {
    /// The entries, each named once.
    #[serde(default)]
    pub secrets: Vec<SealedSecret>,
}

impl SecretsFile {
    /// Parses and checks a secrets file: at most [`MAX_SECRETS_FILE`] bytes and
    /// [`MAX_SECRETS`] entries, unknown keys refused, each name valid and given once, each
    /// ciphertext base64 of a KMS-sized blob.
    pub fn parse(bytes: &[u8]) -> Result<SecretsFile, SealedError> {
        if bytes.len() > MAX_SECRETS_FILE {
            return Err(SealedError::TooLarge {
                size: bytes.len(),
                max: MAX_SECRETS_FILE,
            });
        }
        let text = std::str::from_utf8(bytes)
            .map_err(|e| SealedError::Parse(format!("not UTF-8: {e}")))?;
        let f: SecretsFile = toml::from_str(text).map_err(|e| SealedError::Parse(e.to_string()))?;
        if f.secrets.len() > MAX_SECRETS {
            return Err(SealedError::TooMany {
                count: f.secrets.len(),
                max: MAX_SECRETS,
            });
        }
        let mut seen = BTreeSet::new();
        for s in &f.secrets {
            s.check()?;
            if !seen.insert(s.name.as_str()) {
                return Err(SealedError::Duplicate {
                    name: s.name.clone(),
                });
            }
        }
        Ok(f)
    }

    /// Reads (at most [`MAX_SECRETS_FILE`] bytes) and parses the secrets file at `path`;
    /// returns its bytes too, exactly as read.
    pub fn load(path: &std::path::Path) -> Result<(Vec<u8>, SecretsFile), SealedError> {
        use std::io::Read;
        let err = |source| SealedError::Read {
            path: path.display().to_string(),
            source,
        };
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_SECRETS_FILE as u64 + 1).read_to_end(&mut bytes))
            .map_err(err)?;
        let f = SecretsFile::parse(&bytes)?;
        Ok((bytes, f))
    }

    /// The entry named `name`.
    pub fn get(&self, name: &str) -> Option<&SealedSecret> {
        self.secrets.iter().find(|s| s.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain_and_short() {
        for ok in ["a", "db-password", "APP_KEY.v2", &"x".repeat(64), "0day"] {
            check_name(ok).unwrap();
        }
        for bad in [
            "",
            ".hidden",
            "-flag",
            "_x",
            "a/b",
            "..",
            "a b",
            "é",
            &"x".repeat(65),
            "a\n",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_entry_prints_as_a_secrets_file_reads_it() {
        let a =
            SealedSecret::new("api-token", "arn:aws:kms:us-east-1:1:key/k", b"\x01\x02ct").unwrap();
        let b = SealedSecret::new("seed", "arn:aws:kms:us-east-1:1:key/k", &[7; 200]).unwrap();
        let text = format!("{}\n{}", a.to_toml(), b.to_toml());
        let f = SecretsFile::parse(text.as_bytes()).unwrap();
        assert_eq!(f.secrets, vec![a.clone(), b]);
        assert_eq!(
            f.get("api-token").unwrap().ciphertext_bytes().unwrap(),
            b"\x01\x02ct"
        );
        assert_eq!(context("api-token")[CONTEXT_KEY], "api-token");
        assert_eq!(SecretsFile::parse(b"").unwrap().secrets.len(), 0);
    }

    #[test]
    fn a_bad_secrets_file_is_refused_with_the_reason() {
        let ok = SealedSecret::new("a", "k", b"c").unwrap().to_toml();
        for (text, want) in [
            (format!("{ok}{ok}"), "twice".to_string()),
            (
                ok.replace("name = \"a\"", "name = \"../a\""),
                "secret name".into(),
            ),
            (
                ok.replace("ciphertext = \"Yw==\"", "ciphertext = \"@@\""),
                "not base64".into(),
            ),
            (
                ok.replace("ciphertext = \"Yw==\"", "ciphertext = \"\""),
                "1 to 6144".into(),
            ),
            (format!("{ok}extra = 1\n"), "unknown field".into()),
            ("[[secret]]\n".into(), "unknown field".into()),
            (
                "[[secrets]]\nname = \"x\"\nkey_id = \"k\"\nciphertext = \"Yw==\"\n"
                    .repeat(MAX_SECRETS + 1),
                "over the limit".into(),
            ),
        ] {
            let e = SecretsFile::parse(text.as_bytes()).unwrap_err().to_string();
            assert!(e.contains(&want), "{text}: {e}");
        }
        let big = vec![b'#'; MAX_SECRETS_FILE + 1];
        assert!(matches!(
            SecretsFile::parse(&big),
            Err(SealedError::TooLarge { .. })
        ));
    }
}
