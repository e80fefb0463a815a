//! Where the keys that sign KMS calls come from. Credentials authorize the *call*; what releases
//! a secret to an enclave is the key policy's attestation conditions, so a source here only
//! needs to be right, not secret from the parent.
//!
//! The sources are a [`Credentials`] trait: the standard AWS environment variables and profile
//! files ([`from_environment`]) for the operator and `cidboot run`; a parent-supplied source in
//! the enclave implements the same trait.
//!
//! Supported, as the AWS CLI reads them: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_SESSION_TOKEN`, `AWS_PROFILE` (default `default`), `AWS_SHARED_CREDENTIALS_FILE`
//! (default `~/.aws/credentials`), `AWS_CONFIG_FILE` (default `~/.aws/config`) with static keys
//! (`aws_access_key_id`, `aws_secret_access_key`, `aws_session_token`) in `[NAME]` or
//! `[profile NAME]`, and the region from `AWS_REGION`, `AWS_DEFAULT_REGION` or the profile's
//! `region`. Not supported, and refused by name: profiles that get their keys elsewhere
//! (`role_arn`/`source_profile`, `credential_process`, `sso_*`, `web_identity_token_file`,
//! `credential_source`) and the instance metadata service.
//!
//! The profile-file reader is hand-written: the AWS SDK's own (`aws-config`) comes with its
//! whole runtime, and the format needed here (sections and `key = value` lines) is small. The
//! files are the operator's own, and each is capped at [`MAX_PROFILE_FILE`] bytes.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::KmsError;
use crate::transport::BoxFuture;

/// Largest credentials or config file read.
pub const MAX_PROFILE_FILE: u64 = 1 << 20;

/// Keys that sign requests. The secret parts are wiped from memory when dropped, and never
/// printed.
#[derive(Clone)]
pub struct AwsCredentials {
    /// `AKIA…` (long-term) or `ASIA…` (temporary).
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: Zeroizing<String>,
    /// The session token of temporary credentials.
    pub session_token: Option<Zeroizing<String>>,
}

impl AwsCredentials {
    /// Credentials from their three parts.
    pub fn new(access_key_id: &str, secret_access_key: &str, session_token: Option<&str>) -> Self {
        AwsCredentials {
            access_key_id: access_key_id.to_string(),
            secret_access_key: Zeroizing::new(secret_access_key.to_string()),
            session_token: session_token.map(|t| Zeroizing::new(t.to_string())),
        }
    }
}

impl std::fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// A source of credentials, asked before every request (so that a source can refresh
/// temporary credentials before they expire).
pub trait Credentials: Send + Sync {
    /// The credentials to sign the next request with.
    fn credentials(&self) -> BoxFuture<'_, Result<AwsCredentials, KmsError>>;
    /// Where they come from, for messages (never the keys themselves).
    fn source(&self) -> String;
}

/// Credentials fixed when the source was read: the environment or a profile.
pub struct StaticCredentials {
    creds: AwsCredentials,
    source: String,
}

impl StaticCredentials {
    /// `creds`, described as coming from `source`.
    pub fn new(creds: AwsCredentials, source: impl Into<String>) -> StaticCredentials {
        StaticCredentials {
            creds,
            source: source.into(),
        }
    }
}

impl Credentials for StaticCredentials {
    fn credentials(&self) -> BoxFuture<'_, Result<AwsCredentials, KmsError>> {
        let c = self.creds.clone();
        Box::pin(async move { Ok(c) })
    }

    fn source(&self) -> String {
        self.source.clone()
    }
}

/// The environment variables the AWS CLI reads (and `HOME`): the process's, or given ones.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    vars: HashMap<String, String>,
}

const VARS: [&str; 9] = [
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_PROFILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
    "HOME",
];

impl Environment {
    /// This process's environment (only the variables above are kept).
    pub fn process() -> Environment {
        Environment::from_pairs(
            VARS.iter()
                .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v))),
        )
    }

    /// The given variables (empty values count as unset, as the AWS CLI counts them).
    pub fn from_pairs<I, K, V>(pairs: I) -> Environment
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Environment {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .filter(|(_, v)| !v.is_empty())
                .collect(),
        }
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.vars.get(k).map(String::as_str)
    }

    fn profile(&self) -> &str {
        self.get("AWS_PROFILE").unwrap_or("default")
    }

    fn file(&self, var: &str, default: &str) -> Option<PathBuf> {
        match self.get(var) {
            Some(p) => Some(PathBuf::from(p)),
            None => self.get("HOME").map(|h| Path::new(h).join(default)),
        }
    }
}

/// Profile keys that mean "the keys come from somewhere else", which cidboot does not follow.
const UNSUPPORTED: [&str; 8] = [
    "role_arn",
    "source_profile",
    "credential_process",
    "credential_source",
    "web_identity_token_file",
    "sso_session",
    "sso_start_url",
    "sso_account_id",
];

/// The credentials the AWS CLI would use, from the environment variables or else the profile.
pub fn from_environment(env: &Environment) -> Result<StaticCredentials, KmsError> {
    match (
        env.get("AWS_ACCESS_KEY_ID"),
        env.get("AWS_SECRET_ACCESS_KEY"),
    ) {
        (Some(id), Some(secret)) => {
            return Ok(StaticCredentials::new(
                AwsCredentials::new(id, secret, env.get("AWS_SESSION_TOKEN")),
                "the environment (AWS_ACCESS_KEY_ID)",
            ))
        }
        (Some(_), None) => {
            return Err(KmsError::Credentials(
                "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not".into(),
            ))
        }
        (None, Some(_)) => {
            return Err(KmsError::Credentials(
                "AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not".into(),
            ))
        }
        (None, None) => {}
    }
    let name = env.profile();
    let (profile, found_in) = profile(env, name)?;
    let (Some(id), Some(secret)) = (
        profile.get("aws_access_key_id"),
        profile.get("aws_secret_access_key"),
    ) else {
        if let Some(k) = UNSUPPORTED.iter().find(|k| profile.contains_key(**k)) {
            return Err(KmsError::Credentials(format!(
                "profile {name:?} gets its keys through `{k}`, which cidboot does not support; give it static keys (aws_access_key_id, aws_secret_access_key, aws_session_token), or export them: eval \"$(aws configure export-credentials --profile {name} --format env)\""
            )));
        }
        if found_in.is_empty() {
            return Err(KmsError::Credentials(format!(
                "none found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile{} with aws_access_key_id and aws_secret_access_key in {}",
                if name == "default" { String::new() } else { format!(" {name:?}") },
                files_named(env)
            )));
        }
        return Err(KmsError::Credentials(format!(
            "profile {name:?} in {} has no aws_access_key_id and aws_secret_access_key",
            found_in.join(" and ")
        )));
    };
    Ok(StaticCredentials::new(
        AwsCredentials::new(
            id,
            secret,
            profile.get("aws_session_token").map(|t| t.as_str()),
        ),
        format!("profile {name:?} in {}", found_in.join(" and ")),
    ))
}

/// The region the AWS CLI would use: `AWS_REGION`, `AWS_DEFAULT_REGION`, then the profile's
/// `region` in the config file.
pub fn region_from_environment(env: &Environment) -> Result<Option<String>, KmsError> {
    if let Some(r) = env.get("AWS_REGION").or(env.get("AWS_DEFAULT_REGION")) {
        return Ok(Some(r.to_string()));
    }
    let Some(path) = env.file("AWS_CONFIG_FILE", ".aws/config") else {
        return Ok(None);
    };
    let Some(text) = read_profile_file(&path)? else {
        return Ok(None);
    };
    Ok(config_profile(&parse(&text), env.profile()).and_then(|p| p.get("region").cloned()))
}

fn files_named(env: &Environment) -> String {
    let c = env.file("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials");
    let f = env.file("AWS_CONFIG_FILE", ".aws/config");
    match (c, f) {
        (Some(c), Some(f)) => format!("{} or {}", c.display(), f.display()),
        _ => "~/.aws/credentials (HOME is not set)".into(),
    }
}

type Section = BTreeMap<String, String>;

/// The profile `name`, merged from both files (the credentials file wins), and the files it
/// was found in.
fn profile(env: &Environment, name: &str) -> Result<(Section, Vec<String>), KmsError> {
    let mut merged = Section::new();
    let mut found = Vec::new();
    if let Some(p) = env.file("AWS_CONFIG_FILE", ".aws/config") {
        if let Some(text) = read_profile_file(&p)? {
            if let Some(s) = config_profile(&parse(&text), name) {
                merged.extend(s);
                found.push(p.display().to_string());
            }
        }
    }
    if let Some(p) = env.file("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials") {
        if let Some(text) = read_profile_file(&p)? {
            if let Some(s) = parse(&text).remove(name) {
                merged.extend(s);
                found.push(p.display().to_string());
            }
        }
    }
    if found.is_empty() && env.get("AWS_PROFILE").is_some() {
        return Err(KmsError::Credentials(format!(
            "AWS_PROFILE is {name:?}, but no such profile is in {}",
            files_named(env)
        )));
    }
    Ok((merged, found))
}

/// In the config file, `[profile NAME]`; the default profile may also be `[default]`.
fn config_profile(sections: &BTreeMap<String, Section>, name: &str) -> Option<Section> {
    let prefixed = sections.get(&format!("profile {name}")).cloned();
    if name == "default" {
        prefixed.or_else(|| sections.get("default").cloned())
    } else {
        prefixed
    }
}

/// A profile file's text; `None` if it does not exist.
fn read_profile_file(path: &Path) -> Result<Option<Zeroizing<String>>, KmsError> {
    use std::io::Read;
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(KmsError::Credentials(format!(
                "reading {}: {e}",
                path.display()
            )))
        }
    };
    let mut text = Zeroizing::new(String::new());
    f.take(MAX_PROFILE_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| KmsError::Credentials(format!("reading {}: {e}", path.display())))?;
    if text.len() as u64 > MAX_PROFILE_FILE {
        return Err(KmsError::Credentials(format!(
            "{} is over the {MAX_PROFILE_FILE}-byte limit",
            path.display()
        )));
    }
    Ok(Some(text))
}

/// Sections and their `key = value` properties. Comment lines start with `#` or `;`; a
/// property value ends before ` #` or ` ;`; indented lines (continuations and nested
/// settings such as `s3 =`) and anything else are skipped. A section named twice is merged,
/// the later value winning, as the AWS CLI does.
fn parse(text: &str) -> BTreeMap<String, Section> {
    let mut out: BTreeMap<String, Section> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if line.starts_with([' ', '\t']) {
            continue;
        }
        let t = line.trim();
        if t.is_empty() || t.starts_with(['#', ';']) {
            continue;
        }
        if let Some(rest) = t.strip_prefix('[') {
            current = rest.split_once(']').map(|(name, _)| {
                // `[profile  dev]` and `[profile dev]` name the same profile.
                name.split_whitespace().collect::<Vec<_>>().join(" ")
            });
            if let Some(c) = &current {
                out.entry(c.clone()).or_default();
            }
            continue;
        }
        let (Some(section), Some((k, v))) = (&current, t.split_once('=')) else {
            continue;
        };
        let v = [" #", "\t#", " ;", "\t;"]
            .iter()
            .filter_map(|c| v.find(c))
            .min()
            .map_or(v, |i| &v[..i]);
        out.entry(section.clone())
            .or_default()
            .insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(dir: &Path, extra: &[(&str, &str)]) -> Environment {
        let mut v: Vec<(String, String)> = vec![("HOME".into(), dir.display().to_string())];
        v.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Environment::from_pairs(v)
    }

    fn keys(c: &StaticCredentials) -> (String, String, Option<String>) {
        (
            c.creds.access_key_id.clone(),
            c.creds.secret_access_key.to_string(),
            c.creds.session_token.as_ref().map(|t| t.to_string()),
        )
    }

    #[test]
    fn the_environment_wins_over_profiles_and_needs_both_keys() {
        let d = tempfile::tempdir().unwrap();
        let c = from_environment(&env(
            d.path(),
            &[
                ("AWS_ACCESS_KEY_ID", "AKIA1"),
                ("AWS_SECRET_ACCESS_KEY", "s1"),
                ("AWS_SESSION_TOKEN", "t1"),
            ],
        ))
        .unwrap();
        assert_eq!(keys(&c), ("AKIA1".into(), "s1".into(), Some("t1".into())));
        assert!(c.source().contains("environment"));
        let e = from_environment(&env(d.path(), &[("AWS_ACCESS_KEY_ID", "AKIA1")]))
            .err()
            .unwrap();
        assert!(
            e.to_string().contains("AWS_SECRET_ACCESS_KEY is not"),
            "{e}"
        );
        let e = from_environment(&env(d.path(), &[])).err().unwrap();
        assert!(e.to_string().contains("none found"), "{e}");
    }

    #[test]
    fn profiles_come_from_both_files_and_unsupported_sources_are_named() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join(".aws")).unwrap();
        std::fs::write(
            d.path().join(".aws/credentials"),
            "# comment\n[default]\naws_access_key_id = AKIADEF\naws_secret_access_key = sdef ; trailing\n\n[dev]\naws_access_key_id=AKIADEV\naws_secret_access_key=sdev\naws_session_token=tdev\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join(".aws/config"),
            "[default]\nregion = eu-west-3\n[profile dev]\nregion = ap-south-1\ns3 =\n  max_concurrent_requests = 4\n[profile sso]\nsso_session = corp\nregion = us-west-2\n[profile keys-in-config]\naws_access_key_id = AKIACFG\naws_secret_access_key = scfg\n",
        )
        .unwrap();
        let c = from_environment(&env(d.path(), &[])).unwrap();
        assert_eq!(keys(&c), ("AKIADEF".into(), "sdef".into(), None));
        assert_eq!(
            region_from_environment(&env(d.path(), &[])).unwrap(),
            Some("eu-west-3".into())
        );
        let dev = env(d.path(), &[("AWS_PROFILE", "dev")]);
        let c = from_environment(&dev).unwrap();
        assert_eq!(
            keys(&c),
            ("AKIADEV".into(), "sdev".into(), Some("tdev".into()))
        );
        assert!(c.source().contains("\"dev\""), "{}", c.source());
        assert_eq!(
            region_from_environment(&dev).unwrap(),
            Some("ap-south-1".into())
        );
        let both = env(
            d.path(),
            &[("AWS_PROFILE", "dev"), ("AWS_DEFAULT_REGION", "us-east-2")],
        );
        assert_eq!(
            region_from_environment(&both).unwrap(),
            Some("us-east-2".into())
        );
        let c = from_environment(&env(d.path(), &[("AWS_PROFILE", "keys-in-config")])).unwrap();
        assert_eq!(keys(&c).0, "AKIACFG");
        let e = from_environment(&env(d.path(), &[("AWS_PROFILE", "sso")]))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("sso_session") && e.contains("export-credentials"),
            "{e}"
        );
        let e = from_environment(&env(d.path(), &[("AWS_PROFILE", "nope")]))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("no such profile"), "{e}");
        // Files named by the variables instead of HOME's.
        let other = d.path().join("creds");
        std::fs::write(
            &other,
            "[default]\naws_access_key_id=AKIAOTHER\naws_secret_access_key=x\n",
        )
        .unwrap();
        let c = from_environment(&env(
            d.path(),
            &[("AWS_SHARED_CREDENTIALS_FILE", other.to_str().unwrap())],
        ))
        .unwrap();
        assert_eq!(keys(&c).0, "AKIAOTHER");
    }

    #[test]
    fn an_oversized_profile_file_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let big = d.path().join("big");
        std::fs::write(
            &big,
            vec![b'#'; usize::try_from(MAX_PROFILE_FILE).unwrap() + 1],
        )
        .unwrap();
        let e = from_environment(&env(
            d.path(),
            &[("AWS_SHARED_CREDENTIALS_FILE", big.to_str().unwrap())],
        ))
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("limit"), "{e}");
    }

    #[test]
    fn secrets_are_never_printed() {
        let c = AwsCredentials::new("AKIA", "very-secret", Some("token-secret"));
        let s = format!("{c:?}");
        assert!(
            !s.contains("very-secret") && !s.contains("token-secret"),
            "{s}"
        );
    }
}
