//! SigV4 request signing, by AWS's own `aws-sigv4` crate (signing is not hand-written here):
//! this module only hands it the request and turns its instructions into headers.

use std::time::SystemTime;

use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;

use super::AwsCredentials;

/// What is signed: the method, the full URL, every header the server will see that should be
/// covered (at least `host`), and the body.
pub struct Request<'a> {
    /// `POST`, `GET`, …
    pub method: &'a str,
    /// `https://host[:port]/path?query`, already percent-encoded.
    pub url: &'a str,
    /// Lowercase names and their exact values, `host` included.
    pub headers: &'a [(&'a str, &'a str)],
    /// The exact body sent.
    pub body: &'a [u8],
}

/// A request whose body is too large to hold, signed by the body's SHA-256 (lowercase hex),
/// computed beforehand: its `body` is ignored.
pub struct Hashed<'a> {
    /// The request, its `body` left empty.
    pub req: Request<'a>,
    /// The body's SHA-256, lowercase hex.
    pub sha256_hex: &'a str,
}

/// Signs `req` for `service` in `region` at `time` and returns the headers to add:
/// `authorization`, `x-amz-date`, and `x-amz-security-token` with temporary credentials.
pub fn sign(
    req: &Request<'_>,
    creds: &AwsCredentials,
    region: &str,
    service: &str,
    time: SystemTime,
) -> Result<Vec<(String, String)>, String> {
    sign_with(
        req,
        SignableBody::Bytes(req.body),
        creds,
        region,
        service,
        time,
        SigningSettings::default(),
    )
}

/// S3's signing settings.
fn s3_settings() -> SigningSettings {
    use aws_sigv4::http_request::{
        PayloadChecksumKind, PercentEncodingMode, UriPathNormalizationMode,
    };
    let mut settings = SigningSettings::default();
    settings.percent_encoding_mode = PercentEncodingMode::Single;
    settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    settings
}

/// [`sign`] for S3, whose signing differs from every other service's: the path is signed as
/// sent (not normalized, not encoded twice), and the body's SHA-256 goes in
/// `x-amz-content-sha256`, which is added to the headers returned.
pub fn sign_s3(
    req: &Request<'_>,
    creds: &AwsCredentials,
    region: &str,
    time: SystemTime,
) -> Result<Vec<(String, String)>, String> {
    let body = SignableBody::Bytes(req.body);
    sign_with(req, body, creds, region, "s3", time, s3_settings())
}

/// [`sign_s3`] for a body streamed from a file, signed by its SHA-256 computed beforehand.
pub fn sign_s3_hashed(
    h: &Hashed<'_>,
    creds: &AwsCredentials,
    region: &str,
    time: SystemTime,
) -> Result<Vec<(String, String)>, String> {
    let body = SignableBody::Precomputed(h.sha256_hex.to_string());
    sign_with(&h.req, body, creds, region, "s3", time, s3_settings())
}

fn sign_with(
    req: &Request<'_>,
    body: SignableBody<'_>,
    creds: &AwsCredentials,
    region: &str,
    service: &str,
    time: SystemTime,
    settings: SigningSettings,
) -> Result<Vec<(String, String)>, String> {
    let identity: Identity = aws_credential_types::Credentials::new(
        creds.access_key_id.clone(),
        creds.secret_access_key.as_str().to_string(),
        creds.session_token.as_ref().map(|t| t.as_str().to_string()),
        None,
        "cidboot",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(time)
        .settings(settings)
        .build()
        .map_err(|e| e.to_string())?
        .into();
    let signable = SignableRequest::new(req.method, req.url, req.headers.iter().copied(), body)
        .map_err(|e| e.to_string())?;
    let (instructions, _signature) = aws_sigv4::http_request::sign(signable, &params)
        .map_err(|e| e.to_string())?
        .into_parts();
    let (headers, _params) = instructions.into_parts();
    Ok(headers
        .iter()
        .map(|h| (h.name().to_string(), h.value().to_string()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example credentials of AWS's SigV4 documentation and test suite.
    fn example() -> AwsCredentials {
        AwsCredentials::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            None,
        )
    }

    fn at(rfc3339: &str) -> SystemTime {
        let t =
            time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
                .unwrap();
        SystemTime::UNIX_EPOCH
            + std::time::Duration::from_secs(u64::try_from(t.unix_timestamp()).unwrap())
    }

    fn header<'a>(h: &'a [(String, String)], name: &str) -> &'a str {
        h.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {name} in {h:?}"))
    }

    /// AWS General Reference, "Signed Signature Version 4 requests examples": the IAM
    /// ListUsers POST request and the signature AWS documents for it.
    #[test]
    fn signs_the_documented_post_example_as_aws_does() {
        let h = sign(
            &Request {
                method: "POST",
                url: "https://iam.amazonaws.com/",
                headers: &[
                    (
                        "content-type",
                        "application/x-www-form-urlencoded; charset=utf-8",
                    ),
                    ("host", "iam.amazonaws.com"),
                ],
                body: b"Action=ListUsers&Version=2010-05-08",
            },
            &example(),
            "us-east-1",
            "iam",
            at("2011-09-09T23:36:00Z"),
        )
        .unwrap();
        assert_eq!(header(&h, "x-amz-date"), "20110909T233600Z");
        assert_eq!(
            header(&h, "authorization"),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20110909/us-east-1/iam/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date, \
             Signature=ced6826de92d2bdeed8f846f0bf508e8559e98e4b0199114b84c54174deb456c"
        );
    }

    /// AWS's SigV4 test suite, `get-vanilla`.
    #[test]
    fn signs_the_test_suite_vanilla_get() {
        let h = sign(
            &Request {
                method: "GET",
                url: "https://example.amazonaws.com/",
                headers: &[("host", "example.amazonaws.com")],
                body: b"",
            },
            &example(),
            "us-east-1",
            "service",
            at("2015-08-30T12:36:00Z"),
        )
        .unwrap();
        assert_eq!(
            header(&h, "authorization"),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    #[test]
    fn temporary_credentials_send_their_token_and_sign_it() {
        let creds = AwsCredentials::new("ASIAEXAMPLE", "secret", Some("the-token"));
        let h = sign(
            &Request {
                method: "POST",
                url: "https://kms.us-east-1.amazonaws.com/",
                headers: &[("host", "kms.us-east-1.amazonaws.com")],
                body: b"{}",
            },
            &creds,
            "us-east-1",
            "kms",
            SystemTime::now(),
        )
        .unwrap();
        assert_eq!(header(&h, "x-amz-security-token"), "the-token");
        assert!(header(&h, "authorization").contains("x-amz-security-token"));
    }
}
