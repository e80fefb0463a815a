//! `cidboot seal`: the operator encrypts a secret for an enclave with KMS, under the
//! operator's own AWS credentials, and gets the secrets-file entry to hand to the boot.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use zeroize::Zeroizing;

use super::CliError;
use crate::kms::credentials::{self, Environment};
use crate::kms::sealed::{self, SealedSecret};
use crate::kms::{Endpoint, KmsClient, MAX_PLAINTEXT};

/// Bytes of a secret made by `--generate`.
pub const GENERATED_BYTES: u32 = 32;

#[derive(Args, Debug)]
pub struct SealArgs {
    /// The KMS key: its id, ARN, alias name (alias/NAME) or alias ARN.
    #[arg(long, value_name = "KEY")]
    pub key_id: String,
    /// The secret's name, bound into the ciphertext (encryption context cidboot:secret=NAME):
    /// 1 to 64 of A-Z a-z 0-9 . _ -, starting with a letter or digit.
    #[arg(long)]
    pub name: String,
    /// Have KMS make a random 32-byte secret (GenerateDataKeyWithoutPlaintext) instead of
    /// reading one from stdin: nobody ever sees it.
    #[arg(long)]
    pub generate: bool,
    /// The AWS region [default: AWS_REGION, AWS_DEFAULT_REGION, or the profile's region].
    #[arg(long)]
    pub region: Option<String>,
    /// The KMS endpoint, https://host[:port] [default: AWS_ENDPOINT_URL_KMS, AWS_ENDPOINT_URL,
    /// or https://kms.REGION.amazonaws.com].
    #[arg(long, value_name = "URL")]
    pub kms_endpoint: Option<String>,
    /// Extra CA certificate(s), PEM, trusted beside the web PKI roots for the KMS endpoint
    /// [default: AWS_CA_BUNDLE].
    #[arg(long, value_name = "PEM")]
    pub ca: Option<PathBuf>,
    /// Print the entry as JSON (name, key_id, ciphertext: docs/json.md) instead of TOML.
    #[arg(long)]
    pub json: bool,
}

/// Encrypts the value on stdin (or has one generated) and prints its `[[secrets]]` entry on
/// stdout; nothing else goes to stdout.
pub async fn seal(a: SealArgs) -> Result<(), CliError> {
    sealed::check_name(&a.name)?;
    let env = Environment::process();
    let region = match &a.region {
        Some(r) => r.clone(),
        None => credentials::region_from_environment(&env)?.ok_or_else(|| {
            CliError::Usage(
                "no AWS region: give --region, or set AWS_REGION (or region in the AWS profile)"
                    .into(),
            )
        })?,
    };
    let endpoint = endpoint(&region, a.kms_endpoint.as_deref(), non_empty_var)?;
    let creds = credentials::from_environment(&env)?;
    let source = crate::kms::Credentials::source(&creds);
    let ca =
        a.ca.clone()
            .or_else(|| non_empty_var("AWS_CA_BUNDLE").map(PathBuf::from));
    let tls = crate::transport::tls::client_config(ca.as_deref())?;
    let value = if a.generate {
        None
    } else {
        Some(read_value()?)
    };
    let client = KmsClient::new(
        endpoint,
        Arc::new(crate::transport::TcpConnector),
        tls,
        Arc::new(creds),
    );
    let context = sealed::context(&a.name);
    let sealed = match &value {
        Some(v) => client.encrypt(&a.key_id, v, &context).await?,
        None => {
            client
                .generate_data_key_without_plaintext(&a.key_id, GENERATED_BYTES, &context)
                .await?
        }
    };
    let entry = SealedSecret::new(&a.name, &sealed.key_id, &sealed.ciphertext)?;
    tracing::info!(
        "sealed {:?} ({}) under {} at {} with the credentials of {source}",
        a.name,
        match &value {
            Some(v) => format!("{} bytes from stdin", v.len()),
            None => format!("{GENERATED_BYTES} random bytes made by KMS"),
        },
        sealed.key_id,
        client.endpoint()
    );
    if a.json {
        outln!("{}", serde_json::to_string(&entry).unwrap_or_default())?;
    } else {
        print!("{}", entry.to_toml());
    }
    Ok(())
}

/// The variables the AWS CLI and SDKs take the KMS endpoint from, the service's own first.
const ENDPOINT_VARS: [&str; 2] = ["AWS_ENDPOINT_URL_KMS", "AWS_ENDPOINT_URL"];

/// Where `seal` calls KMS: `--kms-endpoint`, else the first of [`ENDPOINT_VARS`] set (unless
/// `AWS_IGNORE_CONFIGURED_ENDPOINT_URLS` is `true`), as the AWS CLI chooses; else the region's.
/// Only the operator's command reads these variables: an enclave's KMS is the measured `[kms]`
/// alone, and `cidboot run` and the KMS proxy never look at them.
fn endpoint(
    region: &str,
    flag: Option<&str>,
    var: impl Fn(&str) -> Option<String>,
) -> Result<Endpoint, crate::kms::KmsError> {
    if flag.is_some() {
        return Endpoint::new(region, flag);
    }
    if var("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Endpoint::new(region, None);
    }
    match ENDPOINT_VARS.iter().find_map(|k| var(k).map(|v| (*k, v))) {
        Some((name, url)) => Endpoint::new(region, Some(&url)).map_err(|e| match e {
            crate::kms::KmsError::Endpoint { endpoint, reason } => crate::kms::KmsError::Endpoint {
                endpoint,
                reason: format!("{reason} (the endpoint is {name}'s; --kms-endpoint overrides it)"),
            },
            other => other,
        }),
        None => Endpoint::new(region, None),
    }
}

/// An environment variable's value; an empty one counts as unset, as the AWS CLI counts it,
/// and so does one that is not UTF-8.
fn non_empty_var(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.is_empty())
}

/// The value: exactly the bytes on stdin, 1 to [`MAX_PLAINTEXT`] (KMS `Encrypt`'s limit).
fn read_value() -> Result<Zeroizing<Vec<u8>>, CliError> {
    use std::io::IsTerminal;
    if std::io::stdin().is_terminal() {
        eprintln!("cidboot seal: reading the value from stdin (end it with Ctrl-D)");
    }
    let mut buf = Zeroizing::new(Vec::with_capacity(MAX_PLAINTEXT + 1));
    std::io::stdin()
        .lock()
        .take(MAX_PLAINTEXT as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| CliError::Usage(format!("reading the value from stdin: {e}")))?;
    if buf.is_empty() {
        return Err(CliError::Usage(
            "nothing on stdin: seal encrypts the bytes it reads there (or give --generate)".into(),
        ));
    }
    if buf.len() > MAX_PLAINTEXT {
        return Err(CliError::Usage(format!(
            "the value on stdin is over {MAX_PLAINTEXT} bytes, the most KMS Encrypt takes"
        )));
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let owned: Vec<(String, String)> = pairs
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| owned.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    }

    fn at(flag: Option<&str>, env: &[(&str, &str)]) -> String {
        endpoint("eu-west-1", flag, vars(env)).unwrap().to_string()
    }

    #[test]
    fn the_endpoint_is_chosen_as_the_aws_cli_chooses_it() {
        let kms = "https://kms.test:1";
        let all = "https://all.test:2";
        assert_eq!(at(None, &[]), "https://kms.eu-west-1.amazonaws.com");
        assert_eq!(at(None, &[("AWS_ENDPOINT_URL", all)]), all);
        let both = &[("AWS_ENDPOINT_URL", all), ("AWS_ENDPOINT_URL_KMS", kms)];
        assert_eq!(at(None, both), kms);
        assert_eq!(at(Some("https://flag.test:3"), both), "https://flag.test:3");
        assert_eq!(
            at(
                None,
                &[("AWS_ENDPOINT_URL_KMS", ""), ("AWS_ENDPOINT_URL", all)]
            ),
            all
        );
        let ignored = &[
            ("AWS_ENDPOINT_URL_KMS", kms),
            ("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "TRUE"),
        ];
        assert_eq!(at(None, ignored), "https://kms.eu-west-1.amazonaws.com");
        let not_ignored = &[
            ("AWS_ENDPOINT_URL_KMS", kms),
            ("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "false"),
        ];
        assert_eq!(at(None, not_ignored), kms);
    }

    #[test]
    fn an_http_endpoint_from_the_environment_is_refused_naming_the_variable() {
        let e = endpoint(
            "us-east-1",
            None,
            vars(&[("AWS_ENDPOINT_URL_KMS", "http://127.0.0.1:9394")]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("only https:// is accepted") && e.contains("AWS_ENDPOINT_URL_KMS's"),
            "{e}"
        );
    }
}
