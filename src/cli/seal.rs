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
    /// The KMS endpoint, https://host[:port] [default: https://kms.REGION.amazonaws.com].
    #[arg(long, value_name = "URL")]
    pub kms_endpoint: Option<String>,
    /// Extra CA certificate(s), PEM, trusted beside the web PKI roots for the KMS endpoint.
    #[arg(long, value_name = "PEM")]
    pub ca: Option<PathBuf>,
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
    let endpoint = Endpoint::new(&region, a.kms_endpoint.as_deref())?;
    let creds = credentials::from_environment(&env)?;
    let source = crate::kms::Credentials::source(&creds);
    let tls = crate::transport::tls::client_config(a.ca.as_deref())?;
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
    print!("{}", entry.to_toml());
    Ok(())
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
