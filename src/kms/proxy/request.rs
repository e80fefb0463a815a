//! The workload's request, read as strictly as KMS reads it: only the three operations, only
//! the fields KMS's own model gives each (anything else is refused by name), every field of the
//! type and within the bounds KMS documents. What goes on to KMS is rebuilt from the checked
//! values, never the workload's bytes.

use base64::Engine as _;
use http::StatusCode;
use serde_json::{Map, Value};

use super::reply::Refusal;
use crate::kms::{MAX_CIPHERTEXT, MAX_GENERATED, MAX_KEY_ID};

/// Most grant tokens in one request (KMS's own limit).
pub const MAX_GRANT_TOKENS: usize = 10;
/// Longest grant token (KMS's own limit).
pub const MAX_GRANT_TOKEN: usize = 8192;
/// Most bytes of names and values together in one encryption context (cidboot's bound: a
/// context is a few short strings).
pub const MAX_CONTEXT: usize = 8192;
/// The encryption-context names cidboot keeps for itself ([`crate::kms::sealed::CONTEXT_KEY`]
/// among them). A `Decrypt` with one would open a sealed secret the configuration hands to
/// cidboot alone; a `GenerateDataKey` would make a ciphertext under a secret's name whose
/// value the workload knows, which a parent could then serve as that secret.
pub const RESERVED_CONTEXT: &str = "cidboot:";
/// Longest custom key store id (KMS's own limit).
pub const MAX_KEY_STORE_ID: usize = 64;

/// The operations the proxy forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `TrentService.Decrypt`.
    Decrypt,
    /// `TrentService.GenerateDataKey`.
    GenerateDataKey,
    /// `TrentService.GenerateRandom`.
    GenerateRandom,
}

impl Op {
    /// The operation's name, as in `X-Amz-Target: TrentService.<name>`.
    pub fn name(self) -> &'static str {
        match self {
            Op::Decrypt => "Decrypt",
            Op::GenerateDataKey => "GenerateDataKey",
            Op::GenerateRandom => "GenerateRandom",
        }
    }

    /// The operation an `X-Amz-Target` header names, or why it is refused.
    pub fn from_target(target: Option<&str>) -> Result<Op, Refusal> {
        let Some(target) = target else {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                "UnknownOperationException",
                "no X-Amz-Target header: the KMS proxy serves the AWS KMS JSON API (X-Amz-Target: TrentService.Decrypt, TrentService.GenerateDataKey or TrentService.GenerateRandom)",
            ));
        };
        let shown: String = target.chars().take(128).collect();
        match target.strip_prefix("TrentService.") {
            Some("Decrypt") => Ok(Op::Decrypt),
            Some("GenerateDataKey") => Ok(Op::GenerateDataKey),
            Some("GenerateRandom") => Ok(Op::GenerateRandom),
            Some(_) => Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                "UnsupportedOperationException",
                format!("{shown:?} is not forwarded: the KMS proxy forwards only TrentService.Decrypt, TrentService.GenerateDataKey and TrentService.GenerateRandom, each with the enclave's attestation"),
            )),
            None => Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                "UnknownOperationException",
                format!("X-Amz-Target {shown:?} is not an AWS KMS operation (TrentService.<Operation>)"),
            )),
        }
    }
}

/// A checked request, ready to go to KMS with a `Recipient`.
#[derive(Debug)]
pub struct Request {
    /// Which operation.
    pub op: Op,
    /// The key named, for messages and logs.
    pub key: Option<String>,
    /// The fields to send, rebuilt from the checked values.
    pub fields: Map<String, Value>,
    /// How many bytes the answer's plaintext must have (`GenerateDataKey`, `GenerateRandom`).
    pub length: Option<u32>,
}

/// What a field may hold.
#[derive(Clone, Copy)]
enum Kind {
    Blob {
        max: usize,
    },
    KeyId,
    Context,
    GrantTokens,
    Count,
    Text {
        max: usize,
    },
    OneOf(&'static [&'static str]),
    ListOf(&'static [&'static str]),
    Bool,
    /// A field of KMS's that the proxy does not pass on, with the reason.
    Refused(&'static str),
}

const RECIPIENT: Kind = Kind::Refused(
    "the KMS proxy adds the enclave's own Recipient and answers with the Plaintext; to get a CiphertextForRecipient for a key of your own, call KMS itself (through the egress proxy) with a document from the attestation API",
);

const DECRYPT: &[(&str, Kind)] = &[
    (
        "CiphertextBlob",
        Kind::Blob {
            max: MAX_CIPHERTEXT,
        },
    ),
    ("EncryptionContext", Kind::Context),
    ("GrantTokens", Kind::GrantTokens),
    ("KeyId", Kind::KeyId),
    (
        "EncryptionAlgorithm",
        Kind::OneOf(&[
            "SYMMETRIC_DEFAULT",
            "RSAES_OAEP_SHA_1",
            "RSAES_OAEP_SHA_256",
            "SM2PKE",
        ]),
    ),
    ("Recipient", RECIPIENT),
    ("DryRun", Kind::Bool),
    ("DryRunModifiers", Kind::ListOf(&["IGNORE_CIPHERTEXT"])),
];

const GENERATE_DATA_KEY: &[(&str, Kind)] = &[
    ("KeyId", Kind::KeyId),
    ("EncryptionContext", Kind::Context),
    ("NumberOfBytes", Kind::Count),
    ("KeySpec", Kind::OneOf(&["AES_256", "AES_128"])),
    ("GrantTokens", Kind::GrantTokens),
    ("Recipient", RECIPIENT),
    ("DryRun", Kind::Bool),
];

const GENERATE_RANDOM: &[(&str, Kind)] = &[
    ("NumberOfBytes", Kind::Count),
    (
        "CustomKeyStoreId",
        Kind::Text {
            max: MAX_KEY_STORE_ID,
        },
    ),
    ("Recipient", RECIPIENT),
];

fn invalid(msg: impl Into<String>) -> Refusal {
    Refusal::new(StatusCode::BAD_REQUEST, "ValidationException", msg)
}

fn malformed(msg: impl Into<String>) -> Refusal {
    Refusal::new(StatusCode::BAD_REQUEST, "SerializationException", msg)
}

/// Checks one field's value; returns what to send on.
fn check(name: &str, kind: Kind, v: Value) -> Result<Value, Refusal> {
    let string = |v: Value| match v {
        Value::String(s) => Ok(s),
        _ => Err(malformed(format!("{name} must be a string"))),
    };
    match kind {
        Kind::Blob { max } => {
            let s = string(v)?;
            // Checked on the encoding first, so nothing is decoded past the limit.
            if s.len() > max.div_ceil(3) * 4 {
                return Err(invalid(format!("{name} is over {max} bytes")));
            }
            let b = base64::engine::general_purpose::STANDARD
                .decode(&s)
                .map_err(|e| malformed(format!("{name} is not base64: {e}")))?;
            if b.is_empty() || b.len() > max {
                return Err(invalid(format!(
                    "{name} is {} bytes; KMS takes 1 to {max}",
                    b.len()
                )));
            }
            Ok(Value::String(
                base64::engine::general_purpose::STANDARD.encode(&b),
            ))
        }
        Kind::KeyId => {
            let s = string(v)?;
            if s.is_empty() || s.len() > MAX_KEY_ID || s.chars().any(char::is_control) {
                return Err(invalid(format!(
                    "{name} must be 1 to {MAX_KEY_ID} characters without control characters"
                )));
            }
            Ok(Value::String(s))
        }
        Kind::Text { max } => {
            let s = string(v)?;
            if s.is_empty() || s.len() > max {
                return Err(invalid(format!("{name} must be 1 to {max} characters")));
            }
            Ok(Value::String(s))
        }
        Kind::Context => {
            let Value::Object(m) = v else {
                return Err(malformed(format!("{name} must be an object of strings")));
            };
            let mut total = 0usize;
            for (k, v) in &m {
                if k.starts_with(RESERVED_CONTEXT) {
                    let shown: String = k.chars().take(64).collect();
                    return Err(invalid(format!(
                        "{name} name {shown:?} is reserved: names starting with {RESERVED_CONTEXT:?} bind cidboot's own sealed secrets (such as an image's decryption key), which the proxy neither opens nor makes for the workload"
                    )));
                }
                let Value::String(s) = v else {
                    return Err(malformed(format!(
                        "{name} {k:?}: the value must be a string"
                    )));
                };
                total = total.saturating_add(k.len()).saturating_add(s.len());
            }
            if total > MAX_CONTEXT {
                return Err(invalid(format!(
                    "{name} holds {total} bytes of names and values, over the proxy's limit of {MAX_CONTEXT}"
                )));
            }
            Ok(Value::Object(m))
        }
        Kind::GrantTokens => {
            let Value::Array(a) = v else {
                return Err(malformed(format!("{name} must be a list of strings")));
            };
            if a.len() > MAX_GRANT_TOKENS {
                return Err(invalid(format!(
                    "{name} has {} tokens; KMS takes at most {MAX_GRANT_TOKENS}",
                    a.len()
                )));
            }
            for t in &a {
                match t {
                    Value::String(s) if !s.is_empty() && s.len() <= MAX_GRANT_TOKEN => {}
                    Value::String(_) => {
                        return Err(invalid(format!(
                            "each of {name} must be 1 to {MAX_GRANT_TOKEN} characters"
                        )))
                    }
                    _ => return Err(malformed(format!("{name} must be a list of strings"))),
                }
            }
            Ok(Value::Array(a))
        }
        Kind::Count => {
            let n = match &v {
                Value::Number(n) if n.is_i64() || n.is_u64() => n.as_i64(),
                _ => return Err(malformed(format!("{name} must be an integer"))),
            };
            match n {
                Some(n) if (1..=i64::from(MAX_GENERATED)).contains(&n) => Ok(v),
                _ => Err(invalid(format!(
                    "{name} {v} is not 1 to {MAX_GENERATED}, the bytes KMS makes in one call"
                ))),
            }
        }
        Kind::OneOf(allowed) => {
            let s = string(v)?;
            if !allowed.contains(&s.as_str()) {
                let shown: String = s.chars().take(64).collect();
                return Err(invalid(format!(
                    "{name} {shown:?} is not one of {}",
                    allowed.join(", ")
                )));
            }
            Ok(Value::String(s))
        }
        Kind::ListOf(allowed) => {
            let Value::Array(a) = v else {
                return Err(malformed(format!("{name} must be a list of strings")));
            };
            if a.len() > allowed.len()
                || !a
                    .iter()
                    .all(|x| x.as_str().is_some_and(|s| allowed.contains(&s)))
            {
                return Err(invalid(format!(
                    "{name} may hold only {}, each once",
                    allowed.join(", ")
                )));
            }
            Ok(Value::Array(a))
        }
        Kind::Bool => match v {
            Value::Bool(_) => Ok(v),
            _ => Err(malformed(format!("{name} must be true or false"))),
        },
        Kind::Refused(why) => Err(invalid(format!("{name} is not accepted: {why}"))),
    }
}

/// Reads and checks the body of a request for `op`.
pub fn parse(op: Op, body: &[u8]) -> Result<Request, Refusal> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| malformed(format!("the body is not JSON: {e}")))?;
    let Value::Object(given) = v else {
        return Err(malformed("the body must be a JSON object"));
    };
    let schema = match op {
        Op::Decrypt => DECRYPT,
        Op::GenerateDataKey => GENERATE_DATA_KEY,
        Op::GenerateRandom => GENERATE_RANDOM,
    };
    let mut fields = Map::new();
    for (name, v) in given {
        let Some((_, kind)) = schema.iter().find(|(n, _)| *n == name) else {
            let shown: String = name.chars().take(64).collect();
            return Err(invalid(format!(
                "{shown:?} is not a field of {} (the proxy takes {})",
                op.name(),
                schema
                    .iter()
                    .filter(|(_, k)| !matches!(k, Kind::Refused(_)))
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        // As in the AWS JSON protocol, null is the same as absent.
        if v.is_null() {
            continue;
        }
        let checked = check(&name, *kind, v)?;
        fields.insert(name, checked);
    }
    let key = fields
        .get("KeyId")
        .and_then(Value::as_str)
        .map(str::to_string);
    let count = fields
        .get("NumberOfBytes")
        .and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok());
    let length = match op {
        Op::Decrypt => {
            let dry_ignore = fields.get("DryRun") == Some(&Value::Bool(true))
                && fields
                    .get("DryRunModifiers")
                    .and_then(Value::as_array)
                    .is_some_and(|a| a.iter().any(|m| m == "IGNORE_CIPHERTEXT"));
            if !fields.contains_key("CiphertextBlob") && !dry_ignore {
                return Err(invalid("CiphertextBlob is required"));
            }
            None
        }
        Op::GenerateDataKey => {
            if key.is_none() {
                return Err(invalid("KeyId is required"));
            }
            let spec = fields.get("KeySpec").and_then(Value::as_str);
            match (count, spec) {
                (Some(n), None) => Some(n),
                (None, Some("AES_128")) => Some(16),
                (None, Some(_)) => Some(32),
                (None, None) => {
                    return Err(invalid(
                        "give KeySpec or NumberOfBytes: the data key's length",
                    ))
                }
                (Some(_), Some(_)) => {
                    return Err(invalid("give KeySpec or NumberOfBytes, not both"))
                }
            }
        }
        Op::GenerateRandom => {
            if count.is_none() {
                return Err(invalid("NumberOfBytes is required"));
            }
            count
        }
    };
    Ok(Request {
        op,
        key,
        fields,
        length,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(op: Op, body: &str) -> Refusal {
        parse(op, body.as_bytes()).unwrap_err()
    }

    #[test]
    fn targets_are_read_by_name() {
        assert_eq!(
            Op::from_target(Some("TrentService.Decrypt")).unwrap(),
            Op::Decrypt
        );
        let e = Op::from_target(Some("TrentService.Encrypt")).unwrap_err();
        assert_eq!(e.code, "UnsupportedOperationException");
        assert!(e
            .message
            .contains("\"TrentService.Encrypt\" is not forwarded"));
        let e = Op::from_target(Some("DynamoDB_20120810.GetItem")).unwrap_err();
        assert_eq!(e.code, "UnknownOperationException");
        let e = Op::from_target(None).unwrap_err();
        assert!(e.message.contains("no X-Amz-Target"), "{}", e.message);
    }

    #[test]
    fn fields_are_checked_and_rebuilt() {
        let r = parse(
            Op::Decrypt,
            br#"{"CiphertextBlob":"AQID","EncryptionContext":{"a":"b"},"GrantTokens":["t"],"KeyId":"alias/k","EncryptionAlgorithm":"SYMMETRIC_DEFAULT","DryRun":null}"#,
        )
        .unwrap();
        assert_eq!(r.key.as_deref(), Some("alias/k"));
        assert_eq!(r.fields["CiphertextBlob"], "AQID");
        assert!(!r.fields.contains_key("DryRun"), "null is absent");
        let r = parse(Op::GenerateDataKey, br#"{"KeyId":"k","KeySpec":"AES_128"}"#).unwrap();
        assert_eq!(r.length, Some(16));
        let r = parse(Op::GenerateDataKey, br#"{"KeyId":"k","NumberOfBytes":64}"#).unwrap();
        assert_eq!(r.length, Some(64));
        let r = parse(Op::GenerateRandom, br#"{"NumberOfBytes":1024}"#).unwrap();
        assert_eq!(r.length, Some(1024));
        let r = parse(
            Op::Decrypt,
            br#"{"DryRun":true,"DryRunModifiers":["IGNORE_CIPHERTEXT"]}"#,
        )
        .unwrap();
        assert!(r.fields.contains_key("DryRunModifiers"));
    }

    #[test]
    fn anything_else_is_refused_with_the_reason() {
        let cases: &[(Op, &str, &str, &str)] = &[
            (Op::Decrypt, "", "SerializationException", "not JSON"),
            (Op::Decrypt, "[1]", "SerializationException", "JSON object"),
            (
                Op::Decrypt,
                "{}",
                "ValidationException",
                "CiphertextBlob is required",
            ),
            (
                Op::Decrypt,
                r#"{"CiphertextBlob":"!!"}"#,
                "SerializationException",
                "not base64",
            ),
            (
                Op::Decrypt,
                r#"{"CiphertextBlob":""}"#,
                "ValidationException",
                "0 bytes",
            ),
            (
                Op::Decrypt,
                r#"{"CiphertextBlob":"AQID","Plaintext":"AQID"}"#,
                "ValidationException",
                "\"Plaintext\" is not a field of Decrypt",
            ),
            (
                Op::Decrypt,
                r#"{"CiphertextBlob":"AQID","Recipient":{}}"#,
                "ValidationException",
                "Recipient is not accepted",
            ),
            (
                Op::Decrypt,
                r#"{"CiphertextBlob":"AQID","EncryptionContext":{"cidboot:secret":"image-key"}}"#,
                "ValidationException",
                "\"cidboot:secret\" is reserved",
            ),
            (
                Op::GenerateDataKey,
                r#"{"KeyId":"k","EncryptionContext":{"a":"b","cidboot:other":"x"}}"#,
                "ValidationException",
                "\"cidboot:other\" is reserved",
            ),
            (
                Op::Decrypt,
                r#"{"CiphertextBlob":"AQID","EncryptionContext":{"a":1}}"#,
                "SerializationException",
                "must be a string",
            ),
            (
                Op::Decrypt,
                r#"{"CiphertextBlob":"AQID","EncryptionAlgorithm":"ROT13"}"#,
                "ValidationException",
                "not one of",
            ),
            (
                Op::Decrypt,
                r#"{"CiphertextBlob":"AQID","KeyId":""}"#,
                "ValidationException",
                "1 to 2048",
            ),
            (
                Op::Decrypt,
                r#"{"CiphertextBlob":"AQID","DryRun":"yes"}"#,
                "SerializationException",
                "true or false",
            ),
            (
                Op::GenerateRandom,
                "{}",
                "ValidationException",
                "NumberOfBytes is required",
            ),
            (
                Op::GenerateRandom,
                r#"{"NumberOfBytes":0}"#,
                "ValidationException",
                "not 1 to 1024",
            ),
            (
                Op::GenerateRandom,
                r#"{"NumberOfBytes":1025}"#,
                "ValidationException",
                "not 1 to 1024",
            ),
            (
                Op::GenerateRandom,
                r#"{"NumberOfBytes":18446744073709551616}"#,
                "SerializationException",
                "integer",
            ),
            (
                Op::GenerateRandom,
                r#"{"NumberOfBytes":1e3}"#,
                "SerializationException",
                "integer",
            ),
            (
                Op::GenerateRandom,
                r#"{"NumberOfBytes":-1}"#,
                "ValidationException",
                "not 1 to 1024",
            ),
            (
                Op::GenerateRandom,
                r#"{"NumberOfBytes":"8"}"#,
                "SerializationException",
                "integer",
            ),
            (
                Op::GenerateDataKey,
                r#"{"NumberOfBytes":8}"#,
                "ValidationException",
                "KeyId is required",
            ),
            (
                Op::GenerateDataKey,
                r#"{"KeyId":"k"}"#,
                "ValidationException",
                "KeySpec or NumberOfBytes",
            ),
            (
                Op::GenerateDataKey,
                r#"{"KeyId":"k","KeySpec":"AES_256","NumberOfBytes":32}"#,
                "ValidationException",
                "not both",
            ),
            (
                Op::GenerateDataKey,
                r#"{"KeyId":"k","KeySpec":"RSA_2048"}"#,
                "ValidationException",
                "not one of",
            ),
        ];
        for (op, body, code, says) in cases {
            let e = refused(*op, body);
            assert_eq!(e.code, *code, "{body}: {}", e.message);
            assert!(e.message.contains(says), "{body}: {}", e.message);
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
        }
        let tokens = format!(
            r#"{{"NumberOfBytes":8,"GrantTokens":[{}]}}"#,
            ["\"t\""; 11].join(",")
        );
        let e = refused(
            Op::GenerateDataKey,
            &tokens.replace("{", "{\"KeyId\":\"k\","),
        );
        assert!(e.message.contains("11 tokens"), "{}", e.message);
        let big = format!(r#"{{"CiphertextBlob":"{}"}}"#, "A".repeat(8196));
        assert!(refused(Op::Decrypt, &big)
            .message
            .contains("over 6144 bytes"));
        let ctx = format!(
            r#"{{"CiphertextBlob":"AQID","EncryptionContext":{{"k":"{}"}}}}"#,
            "v".repeat(MAX_CONTEXT)
        );
        assert!(refused(Op::Decrypt, &ctx)
            .message
            .contains("over the proxy's limit"));
    }
}
