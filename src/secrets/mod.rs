//! Sealed secrets delivered to the workload: EigenCloud's contract (an app gets its secrets in
//! its environment, and its mnemonic) on AWS KMS with attestation.
//!
//! The measured configuration says which secrets the workload gets and how (`[[secrets]]`:
//! name, key, environment variable and/or file, format). The ciphertexts are not measured, so
//! that a value can be rotated without changing PCR16 or the key policy: they come with the
//! boot (the parent's boot service, or `cidboot run --secrets FILE`), each bound to its name by
//! its encryption context. After PCR16-31 are locked, and before any helper or the workload
//! runs, [`open`] asks KMS to decrypt each one with a `Recipient`: KMS releases it only to an
//! attestation document whose PCRs the key policy admits, and only encrypted to a key that
//! exists in this process. A missing or unopenable secret stops the boot, naming it.
//!
//! The plaintexts stay in this process's memory (wiped when dropped) until they reach the
//! workload, and only the workload: its environment, and files on a tmpfs that its sandbox
//! mounts for it at [`DIR`] (`launch::secrets`). Helpers see none of them. Nothing here logs
//! a value.

pub mod format;

use std::collections::BTreeSet;
use std::sync::Arc;

use tracing::info;
use zeroize::Zeroizing;

pub use format::Format;

use crate::config::{RuntimeConfig, Secret};
use crate::kms::sealed::{self, SecretsFile};
use crate::kms::{KmsClient, MAX_KEY_ID};
use crate::nsm::Nsm;

/// Where the workload finds its secret files: a tmpfs of its own sandbox.
pub const DIR: &str = "/run/secrets";
/// Longest environment variable name a secret is delivered in.
pub const MAX_ENV_NAME: usize = 128;
/// Environment variables cidboot sets itself (or gives a default), which no secret may take.
pub const RESERVED_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "http_proxy",
    "https_proxy",
    "NO_PROXY",
    "no_proxy",
];
/// The prefix of the variables cidboot sets for the workload (`CIDBOOT_ATTESTATION_URL`, …).
pub const RESERVED_PREFIX: &str = "CIDBOOT_";

/// Why a secret could not be delivered: the boot stops, naming it.
#[derive(Debug, thiserror::Error)]
#[error("secret {name:?}: {reason}")]
pub struct SecretError {
    /// The secret's name.
    pub name: String,
    /// What went wrong (KMS's answer, with its error code, included).
    pub reason: String,
}

/// Checks `[[secrets]]` when the configuration is read: names as `cidboot seal` takes them and
/// each once, a key, an environment variable and/or a file for each, each variable and file
/// once, no variable cidboot sets itself, and a `[kms]` to ask.
pub fn check_config(cfg: &RuntimeConfig) -> Result<(), String> {
    if let Some(name) = &cfg.decryption_key {
        if !cfg.secrets.iter().any(|s| s.name == *name) {
            return Err(format!(
                "decryption_key = {name:?} names no [[secrets]] entry: add one with name = {name:?} and the key_id it was sealed under"
            ));
        }
    }
    if cfg.secrets.is_empty() {
        return Ok(());
    }
    if cfg.secrets.len() > sealed::MAX_SECRETS {
        return Err(format!(
            "[[secrets]]: {} secrets, over the limit of {}",
            cfg.secrets.len(),
            sealed::MAX_SECRETS
        ));
    }
    if cfg.kms.is_none() {
        return Err(
            "[[secrets]] needs [kms] (region, and endpoint unless it is AWS's): the KMS that opens them".into(),
        );
    }
    let configured_env: BTreeSet<&str> = cfg
        .workload
        .env
        .iter()
        .filter_map(|e| e.split_once('=').map(|(k, _)| k))
        .collect();
    let (mut names, mut vars, mut files) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    for s in &cfg.secrets {
        let bad = |why: String| format!("[[secrets]] {:?}: {why}", s.name);
        sealed::check_name(&s.name).map_err(|e| format!("[[secrets]]: {e}"))?;
        if !names.insert(s.name.as_str()) {
            return Err(bad("named twice".into()));
        }
        let region = cfg.kms.as_ref().map_or("", |k| k.region.as_str());
        check_key_arn(&s.key_id, region).map_err(bad)?;
        if s.env.is_none() && s.file.is_none() && cfg.decryption_key.as_deref() != Some(&s.name) {
            return Err(bad(
                "give env = \"VAR\" and/or file = \"/run/secrets/NAME\": how the workload gets it (only the secret decryption_key names may have neither)"
                    .into(),
            ));
        }
        if let Some(v) = &s.env {
            check_env_name(v).map_err(bad)?;
            if configured_env.contains(v.as_str()) {
                return Err(bad(format!(
                    "env {v:?} is also set by [workload] env; a variable has one source"
                )));
            }
            if !vars.insert(v.as_str()) {
                return Err(bad(format!("env {v:?} is given to another secret too")));
            }
        }
        if let Some(f) = &s.file {
            file_name(f).map_err(bad)?;
            if !files.insert(f.as_str()) {
                return Err(bad(format!("file {f:?} is given to another secret too")));
            }
        }
    }
    Ok(())
}

/// A key's full ARN (`arn:aws:kms:REGION:ACCOUNT:key/ID`) in the `[kms]` region. Anything
/// shorter is resolved in the account of whoever signs the call, and the parent supplies the
/// credentials: a key id or an alias could then name a key of the parent's own, whose policy
/// lets it choose the secret's value. A full ARN names the operator's key and no other.
fn check_key_arn(key_id: &str, region: &str) -> Result<(), String> {
    let bad = |why: &str| {
        Err(format!(
            "key_id {key_id:?}: {why}: give the key's full ARN, arn:aws:kms:{region}:ACCOUNT:key/KEY-ID (a key id or an alias would be resolved in the account of the credentials, which the parent supplies)"
        ))
    };
    if key_id.len() > MAX_KEY_ID {
        return bad(&format!("over {MAX_KEY_ID} characters"));
    }
    let parts: Vec<&str> = key_id.splitn(6, ':').collect();
    let [arn, partition, service, key_region, account, resource] = parts[..] else {
        return bad("not a key ARN");
    };
    let key = resource.strip_prefix("key/").unwrap_or("");
    let word = |w: &str| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase() || b == b'-');
    if arn != "arn"
        || !word(partition)
        || service != "kms"
        || account.len() != 12
        || !account.bytes().all(|b| b.is_ascii_digit())
        || key.is_empty()
        || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return bad("not a key ARN");
    }
    if key_region != region {
        return bad(&format!(
            "the key is in region {key_region:?}, but [kms] asks region {region:?}"
        ));
    }
    Ok(())
}

/// An environment variable name as shells take it, and not one cidboot sets.
fn check_env_name(v: &str) -> Result<(), String> {
    let ok = !v.is_empty()
        && v.len() <= MAX_ENV_NAME
        && !v.as_bytes()[0].is_ascii_digit()
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !ok {
        return Err(format!(
            "env {v:?} is not a variable name (1 to {MAX_ENV_NAME} of A-Z a-z 0-9 _, not starting with a digit)"
        ));
    }
    if RESERVED_ENV.contains(&v) || v.starts_with(RESERVED_PREFIX) {
        return Err(format!(
            "env {v:?} is a variable cidboot sets for the workload itself ({RESERVED_PREFIX}*, {})",
            RESERVED_ENV.join(", ")
        ));
    }
    Ok(())
}

/// The file's name in [`DIR`]: `/run/secrets/NAME`, NAME one component named as secrets are.
pub fn file_name(path: &str) -> Result<&str, String> {
    let name = path
        .strip_prefix(DIR)
        .and_then(|r| r.strip_prefix('/'))
        .ok_or_else(|| {
            format!("file {path:?} must be in {DIR}/ (a tmpfs of the workload's own)")
        })?;
    sealed::check_name(name).map_err(|_| {
        format!("file {path:?}: name it {DIR}/NAME, NAME 1 to 64 of A-Z a-z 0-9 . _ -, starting with a letter or digit (no subdirectory, no `..`)")
    })?;
    Ok(name)
}

/// Refuses, before anything is fetched, a boot whose configuration names a secret that was
/// not handed over: the boot would stop there anyway, after the whole fetch.
pub fn check_present(wanted: &[Secret], given: Option<&SecretsFile>) -> Result<(), SecretError> {
    for s in wanted {
        if given.and_then(|f| f.get(&s.name)).is_none() {
            return Err(missing(&s.name, given.is_some()));
        }
    }
    Ok(())
}

fn missing(name: &str, any: bool) -> SecretError {
    SecretError {
        name: name.to_string(),
        reason: if any {
            "the configuration names it, but the secrets file has no ciphertext for it (seal it with `cidboot seal --name` and add it: the parent's [boot] secrets, or cidboot run --secrets)".into()
        } else {
            "the configuration names it, but no secrets file came with the boot (the parent's [boot] secrets, or cidboot run --secrets)".into()
        },
    }
}

/// One file of the workload's secrets tmpfs.
pub struct SecretFile {
    /// Its name in [`DIR`].
    pub name: String,
    /// Its content, exactly.
    pub value: Zeroizing<Vec<u8>>,
}

/// The secrets a boot opened, ready for the workload alone; wiped from memory when dropped.
#[derive(Default)]
pub struct Opened {
    /// `VAR=value` entries for the workload's environment.
    pub env: Vec<Zeroizing<String>>,
    /// Files for its tmpfs at [`DIR`].
    pub files: Vec<SecretFile>,
}

impl Opened {
    /// Whether there is nothing to deliver.
    pub fn is_empty(&self) -> bool {
        self.env.is_empty() && self.files.is_empty()
    }
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only: never a value.
        let vars: Vec<&str> = self
            .env
            .iter()
            .filter_map(|e| e.split_once('=').map(|(k, _)| k))
            .collect();
        let files: Vec<&str> = self.files.iter().map(|f| f.name.as_str()).collect();
        f.debug_struct("Opened")
            .field("env", &vars)
            .field("files", &files)
            .finish()
    }
}

/// Decrypts every secret the configuration names with an attested `Decrypt` (the key the
/// configuration names, the encryption context of its name) and writes it as its format says.
/// The first that fails stops it all, naming the secret: a ciphertext that is missing, one
/// sealed under another name or key, a key policy that does not admit this enclave
/// (`AccessDeniedException`, with the PCRs the document carried), a value the format cannot
/// take.
pub async fn open(
    client: &KmsClient,
    nsm: &dyn Nsm,
    wanted: &[Secret],
    given: Option<&SecretsFile>,
) -> Result<Opened, SecretError> {
    let mut out = Opened::default();
    for s in wanted {
        let fail = |reason: String| SecretError {
            name: s.name.clone(),
            reason,
        };
        if s.env.is_none() && s.file.is_none() {
            // For cidboot itself (decryption_key), opened when the layers need it.
            continue;
        }
        let value = open_one(client, nsm, s, given).await?;
        if let Some(var) = &s.env {
            let v = s.format.encode_env(&value).map_err(fail)?;
            out.env
                .push(Zeroizing::new(format!("{var}={}", v.as_str())));
        }
        if let Some(path) = &s.file {
            let name = file_name(path).map_err(fail)?;
            out.files.push(SecretFile {
                name: name.to_string(),
                value: s.format.encode(&value).map_err(fail)?,
            });
        }
        info!(secret = %s.name, format = %s.format, env = s.env.as_deref().unwrap_or("-"), file = s.file.as_deref().unwrap_or("-"), "secret opened by KMS for the workload");
    }
    if let Some(f) = given {
        let extra: Vec<&str> = f
            .secrets
            .iter()
            .map(|e| e.name.as_str())
            .filter(|n| !wanted.iter().any(|w| w.name == *n))
            .collect();
        if !extra.is_empty() {
            info!(names = ?extra, "secrets in the secrets file that the configuration does not name: not opened");
        }
    }
    Ok(out)
}

/// Decrypts one secret with an attested `Decrypt`: its value, wiped when dropped.
pub async fn open_one(
    client: &KmsClient,
    nsm: &dyn Nsm,
    s: &Secret,
    given: Option<&SecretsFile>,
) -> Result<Zeroizing<Vec<u8>>, SecretError> {
    let fail = |reason: String| SecretError {
        name: s.name.clone(),
        reason,
    };
    let sealed = given
        .and_then(|f| f.get(&s.name))
        .ok_or_else(|| missing(&s.name, given.is_some()))?;
    let ciphertext = sealed.ciphertext_bytes().map_err(|e| fail(e.to_string()))?;
    client
        .decrypt_attested(nsm, Some(&s.key_id), &ciphertext, &sealed::context(&s.name))
        .await
        .map_err(|e| fail(e.to_string()))
}

/// The KMS client the boot opens its secrets with: the measured `[kms]` endpoint, reached the
/// way the gateways are (the parent's proxy in an enclave), trusted through the web PKI roots
/// and the measured `[tls] extra_ca` only, signed with `credentials`.
pub fn client(
    cfg: &RuntimeConfig,
    connector: Arc<dyn crate::transport::Connector>,
    credentials: Arc<dyn crate::kms::Credentials>,
) -> Result<KmsClient, String> {
    let kms = cfg
        .kms
        .as_ref()
        .ok_or("[[secrets]] needs [kms] (region, and endpoint unless it is AWS's)")?;
    let endpoint = kms.endpoint().map_err(|e| format!("[kms] {e}"))?;
    let tls = crate::transport::tls::client_config_with(None, cfg.tls.extra_ca.as_deref())
        .map_err(|e| format!("[tls] extra_ca: {e}"))?;
    Ok(KmsClient::new(endpoint, connector, tls, credentials))
}

/// The secrets file and the credentials of a `cidboot run`.
pub type ForRun = (
    Option<SecretsFile>,
    Option<Arc<dyn crate::kms::Credentials>>,
);

/// What `cidboot run` opens secrets with: the secrets file given (`--secrets`), and the AWS
/// environment variables and profile to sign with, read only when the configuration names
/// secrets (a file given without them is still checked).
pub fn for_run(cfg: &RuntimeConfig, file: Option<&std::path::Path>) -> Result<ForRun, String> {
    let sealed = file
        .map(|p| SecretsFile::load(p).map(|(_, f)| f))
        .transpose()
        .map_err(|e| format!("--secrets: {e}"))?;
    if cfg.secrets.is_empty() && sealed.is_some() {
        tracing::warn!("--secrets: the configuration names no [[secrets]]; none is opened");
    }
    // The secrets and the KMS proxy sign with cidboot's own credentials: missing ones stop the
    // run now, not at the first call.
    let why = match (cfg.secrets.is_empty(), cfg.kms_proxy.is_some()) {
        (true, false) => return Ok((sealed, None)),
        (false, _) => "[[secrets]]: KMS is asked with",
        (true, true) => "KMS proxy: its KMS calls are signed with cidboot's own credentials, from the AWS environment variables or profile:",
    };
    let env = crate::kms::credentials::Environment::process();
    let creds =
        crate::kms::credentials::from_environment(&env).map_err(|e| format!("{why} {e}"))?;
    Ok((sealed, Some(Arc::new(creds))))
}

#[cfg(test)]
mod tests {
    use crate::config::Loaded;

    const ARN: &str = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";

    /// `extra` under a `[kms]` and a `[workload]`; `key_id = "k"` stands for a real key ARN.
    fn check(extra: &str) -> Result<(), String> {
        let extra = extra
            .replace("key_id = \"k\"", &format!("key_id = \"{ARN}\""))
            .replace("key_id = \"KEY\"", &format!("key_id = \"{ARN}\""));
        let text =
            format!("[kms]\nregion = \"us-east-1\"\n[workload]\nenv = [\"MODE=prod\"]\n{extra}");
        Loaded::parse(text.into_bytes())
            .map(drop)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn decryption_key_names_a_secret_that_alone_may_go_undelivered() {
        let parse = |top: &str, secret: &str| {
            let text = format!(
                "{top}\n[kms]\nregion = \"us-east-1\"\n[[secrets]]\nname = \"image-key\"\nkey_id = \"{ARN}\"\n{secret}"
            );
            Loaded::parse(text.into_bytes())
                .map(drop)
                .map_err(|e| e.to_string())
        };
        parse("decryption_key = \"image-key\"", "").unwrap();
        parse(
            "decryption_key = \"image-key\"",
            "file = \"/run/secrets/image-key\"",
        )
        .unwrap();
        let e = parse("", "").unwrap_err();
        assert!(
            e.contains("only the secret decryption_key names may have neither"),
            "{e}"
        );
        let e = parse("decryption_key = \"other\"", "env = \"K\"").unwrap_err();
        assert!(
            e.contains("decryption_key = \"other\" names no [[secrets]] entry"),
            "{e}"
        );
        let e = Loaded::parse(b"decryption_key = \"k\"\n".to_vec())
            .map(drop)
            .unwrap_err()
            .to_string();
        assert!(e.contains("names no [[secrets]] entry"), "{e}");
    }

    #[test]
    fn secrets_in_the_configuration_are_checked_when_it_is_read() {
        let ok = "[[secrets]]\nname = \"db\"\nkey_id = \"KEY\"\nenv = \"DB_PASSWORD\"\nfile = \"/run/secrets/db\"\n[[secrets]]\nname = \"app-key\"\nkey_id = \"k\"\nenv = \"MNEMONIC\"\nformat = \"mnemonic\"\n";
        check(ok).unwrap();
        for (bad, want) in [
            (
                "name = \"../x\"\nkey_id = \"k\"\nenv = \"X\"",
                "secret name \"../x\"",
            ),
            ("name = \"x\"\nkey_id = \"\"\nenv = \"X\"", "not a key ARN"),
            (
                "name = \"x\"\nkey_id = \"alias/app\"\nenv = \"X\"",
                "give the key's full ARN, arn:aws:kms:us-east-1:ACCOUNT:key/KEY-ID",
            ),
            (
                "name = \"x\"\nkey_id = \"1234abcd-12ab-34cd-56ef-1234567890ab\"\nenv = \"X\"",
                "which the parent supplies",
            ),
            (
                "name = \"x\"\nkey_id = \"arn:aws:kms:us-east-1:111122223333:alias/app\"\nenv = \"X\"",
                "not a key ARN",
            ),
            (
                "name = \"x\"\nkey_id = \"arn:aws:kms:eu-west-1:111122223333:key/k1\"\nenv = \"X\"",
                "the key is in region \"eu-west-1\", but [kms] asks region \"us-east-1\"",
            ),
            ("name = \"x\"\nkey_id = \"k\"", "give env"),
            (
                "name = \"x\"\nkey_id = \"k\"\nenv = \"1X\"",
                "not a variable name",
            ),
            (
                "name = \"x\"\nkey_id = \"k\"\nenv = \"A-B\"",
                "not a variable name",
            ),
            (
                "name = \"x\"\nkey_id = \"k\"\nenv = \"CIDBOOT_ATTESTATION_URL\"",
                "cidboot sets",
            ),
            (
                "name = \"x\"\nkey_id = \"k\"\nenv = \"HTTPS_PROXY\"",
                "cidboot sets",
            ),
            (
                "name = \"x\"\nkey_id = \"k\"\nenv = \"MODE\"",
                "also set by [workload] env",
            ),
            (
                "name = \"x\"\nkey_id = \"k\"\nfile = \"/etc/x\"",
                "must be in /run/secrets/",
            ),
            (
                "name = \"x\"\nkey_id = \"k\"\nfile = \"/run/secrets/../x\"",
                "no `..`",
            ),
            (
                "name = \"x\"\nkey_id = \"k\"\nfile = \"/run/secrets/a/b\"",
                "no subdirectory",
            ),
            (
                "name = \"x\"\nkey_id = \"k\"\nfile = \"/run/secrets/\"",
                "NAME 1 to 64",
            ),
            (
                "name = \"x\"\nkey_id = \"k\"\nenv = \"X\"\nformat = \"utf16\"",
                "unknown variant",
            ),
            (
                "name = \"x\"\nkey_id = \"k\"\nenv = \"X\"\nciphertext = \"AA==\"",
                "unknown field",
            ),
        ] {
            let e = check(&format!("[[secrets]]\n{bad}\n")).unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
        let twice = |a: &str, b: &str| {
            check(&format!(
                "[[secrets]]\nname = \"a\"\nkey_id = \"k\"\n{a}\n[[secrets]]\nname = \"b\"\nkey_id = \"k\"\n{b}\n"
            ))
            .unwrap_err()
        };
        assert!(twice("env = \"X\"", "env = \"X\"").contains("another secret too"));
        assert!(
            twice("file = \"/run/secrets/x\"", "file = \"/run/secrets/x\"")
                .contains("another secret too")
        );
        let e = check("[[secrets]]\nname = \"a\"\nkey_id = \"k\"\nenv = \"X\"\n[[secrets]]\nname = \"a\"\nkey_id = \"k\"\nenv = \"Y\"\n").unwrap_err();
        assert!(e.contains("named twice"), "{e}");
        let e = Loaded::parse(b"[[secrets]]\nname = \"a\"\nkey_id = \"k\"\nenv = \"X\"\n".to_vec())
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs [kms]"), "{e}");
    }
}
