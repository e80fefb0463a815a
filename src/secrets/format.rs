//! How a secret's value is written where the workload reads it (`format` of `[[secrets]]`).

use base64::Engine as _;
use serde::Deserialize;
use zeroize::Zeroizing;

/// Bytes a value must have to be delivered as a mnemonic: 24 words of BIP-39.
pub const MNEMONIC_BYTES: usize = 32;

/// `format` of a `[[secrets]]` entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The bytes as sealed. Into an environment variable only if they are UTF-8 without NUL.
    #[default]
    Raw,
    /// Standard base64, with padding.
    Base64,
    /// Lowercase hex.
    Hex,
    /// The 24-word English BIP-39 phrase of a 32-byte value, words separated by one space (as
    /// EigenCloud hands an app its mnemonic).
    Mnemonic,
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::Raw => "raw",
            Format::Base64 => "base64",
            Format::Hex => "hex",
            Format::Mnemonic => "mnemonic",
        })
    }
}

impl Format {
    /// The value as the workload gets it (no newline is added). Fails, with the reason, for a
    /// mnemonic of a value that is not [`MNEMONIC_BYTES`] long.
    pub fn encode(self, value: &[u8]) -> Result<Zeroizing<Vec<u8>>, String> {
        Ok(Zeroizing::new(match self {
            Format::Raw => value.to_vec(),
            Format::Base64 => base64::engine::general_purpose::STANDARD
                .encode(value)
                .into_bytes(),
            Format::Hex => hex::encode(value).into_bytes(),
            Format::Mnemonic => {
                if value.len() != MNEMONIC_BYTES {
                    return Err(format!(
                        "format \"mnemonic\" needs a {MNEMONIC_BYTES}-byte value (24 words), but this one is {} bytes (seal one with `cidboot seal --generate`, or choose another format)",
                        value.len()
                    ));
                }
                // The phrase is kept in wiped memory by the crate, and copied into wiped memory.
                let m = <bip0039::Mnemonic>::from_entropy(value.to_vec())
                    .map_err(|e| format!("BIP-39: {e}"))?;
                m.phrase().as_bytes().to_vec()
            }
        }))
    }

    /// The value as an environment variable's: text without NUL. Only `raw` can fail here.
    pub fn encode_env(self, value: &[u8]) -> Result<Zeroizing<String>, String> {
        let bytes = self.encode(value)?;
        if bytes.contains(&0) {
            return Err(
                "its value has a NUL byte, which no environment variable can hold: deliver it with format = \"base64\" or \"hex\", or in a file".into(),
            );
        }
        match std::str::from_utf8(&bytes) {
            Ok(s) => Ok(Zeroizing::new(s.to_string())),
            Err(_) => Err(
                "its value is not UTF-8 text, which cidboot does not put in an environment variable: deliver it with format = \"base64\" or \"hex\", or in a file".into(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_write_the_value_as_documented() {
        let v = b"\x00\xffhi";
        assert_eq!(Format::Raw.encode(v).unwrap().as_slice(), v);
        assert_eq!(Format::Base64.encode(v).unwrap().as_slice(), b"AP9oaQ==");
        assert_eq!(Format::Hex.encode(v).unwrap().as_slice(), b"00ff6869");
        assert_eq!(
            Format::Raw.encode_env(b"p@ss word").unwrap().as_str(),
            "p@ss word"
        );
        let e = Format::Raw.encode_env(b"a\0b").unwrap_err();
        assert!(e.contains("NUL") && e.contains("base64"), "{e}");
        assert!(Format::Raw
            .encode_env(b"\xff")
            .unwrap_err()
            .contains("UTF-8"));
        assert_eq!(Format::Hex.encode_env(b"a\0b").unwrap().as_str(), "610062");
    }

    /// The published BIP-39 test vectors (trezor's vectors.json, English, 256-bit entropy).
    #[test]
    fn a_mnemonic_is_the_bip39_phrase_of_32_bytes() {
        let abandon = format!("{}art", "abandon ".repeat(23));
        assert_eq!(
            Format::Mnemonic.encode(&[0; 32]).unwrap().as_slice(),
            abandon.as_bytes()
        );
        let legal = "legal winner thank year wave sausage worth useful legal winner thank year wave sausage worth useful legal winner thank year wave sausage worth title";
        assert_eq!(
            Format::Mnemonic.encode(&[0x7f; 32]).unwrap().as_slice(),
            legal.as_bytes()
        );
        let zoo = format!("{}vote", "zoo ".repeat(23));
        assert_eq!(
            Format::Mnemonic.encode(&[0xff; 32]).unwrap().as_slice(),
            zoo.as_bytes()
        );
        for n in [0, 16, 31, 33] {
            let e = Format::Mnemonic.encode(&vec![1; n]).unwrap_err();
            assert!(
                e.contains("32-byte value") && e.contains(&format!("{n} bytes")),
                "{e}"
            );
        }
    }
}
