//! Building the S3 client: the environment as the AWS SDK's default chain
//! reads it, plus our settings, and a plain-HTTP client for test and MinIO
//! endpoints.

use aws_sdk_s3::config::{
    Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::Client;

use super::S3Settings;

/// Builds an S3 client from the environment plus `settings`.
pub(super) async fn build_client(settings: &S3Settings) -> Client {
    let mut loader = aws_config::from_env();
    if let Some(region) = settings
        .region
        .clone()
        .or_else(|| env_region(|name| std::env::var(name).ok()))
    {
        // A region named in the environment is what the default chain would
        // take first (as on Lambda); naming it spares building the rest of
        // the chain, an EC2 metadata client among it.
        loader = loader.region(Region::new(region));
    }
    if let Some((ak, sk)) = &settings.credentials {
        loader = loader.credentials_provider(Credentials::new(ak, sk, None, None, "kuiper-static"));
    } else if env_has_static_credentials(|name| std::env::var(name).ok()) {
        // The default chain would take these first (as on Lambda). Naming
        // its first link spares building the rest, whose STS client loads
        // the system trust store as it is built.
        loader = loader.credentials_provider(
            aws_config::environment::EnvironmentVariableCredentialsProvider::new(),
        );
    }
    let shared = loader.load().await;
    let mut builder = aws_sdk_s3::config::Builder::from(&shared)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
    if shared.region().is_none() {
        builder = builder.region(Region::new("us-east-1"));
    }
    let env = |name: &str| std::env::var(name).ok();
    let endpoint = custom_endpoint(
        settings.endpoint.as_deref(),
        env("AWS_ENDPOINT_URL_S3").as_deref(),
        env("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS").as_deref(),
        shared.endpoint_url(),
    );
    if let Some(endpoint) = endpoint {
        // Set on the S3 config itself, so the client goes exactly where the
        // choice of HTTP client below assumes.
        builder = builder
            .endpoint_url(endpoint.clone())
            .force_path_style(true);
        if endpoint.starts_with("http://") {
            builder = builder.http_client(plain_http_client());
        }
    }
    Client::from_conf(builder.build())
}

/// Whether the environment holds the static credentials the SDK's default
/// chain would use before any other source.
fn env_has_static_credentials(var: impl Fn(&str) -> Option<String>) -> bool {
    let set = |name: &str| var(name).is_some_and(|v| !v.trim().is_empty());
    set("AWS_ACCESS_KEY_ID") && (set("AWS_SECRET_ACCESS_KEY") || set("SECRET_ACCESS_KEY"))
}

/// The region named in the environment, as the SDK's default chain reads it
/// first: `AWS_REGION`, else `AWS_DEFAULT_REGION`.
fn env_region(var: impl Fn(&str) -> Option<String>) -> Option<String> {
    let get = |name: &str| var(name).filter(|v| !v.trim().is_empty());
    get("AWS_REGION").or_else(|| get("AWS_DEFAULT_REGION"))
}

/// The custom S3 endpoint in effect, by the SDK's precedence: our setting,
/// then `AWS_ENDPOINT_URL_S3` (unless `AWS_IGNORE_CONFIGURED_ENDPOINT_URLS`),
/// then the shared configuration's endpoint (`AWS_ENDPOINT_URL`, profile).
fn custom_endpoint(
    ours: Option<&str>,
    env_s3: Option<&str>,
    ignore_configured: Option<&str>,
    shared: Option<&str>,
) -> Option<String> {
    let ignored = ignore_configured.is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    ours.or(env_s3.filter(|e| !ignored && !e.is_empty()))
        .or(shared)
        .map(str::to_string)
}

/// The client for a plain-HTTP endpoint (MinIO on a private network, a test
/// server): it never makes a TLS connection, so it trusts no certificate and
/// the system trust store (some 150 files to read and parse) is never loaded.
fn plain_http_client() -> aws_sdk_s3::config::SharedHttpClient {
    use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode, TlsContext, TrustStore};
    let no_roots = TlsContext::builder()
        .with_trust_store(TrustStore::empty().with_native_roots(false))
        .build()
        .expect("an empty trust store is a valid TLS context");
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::AwsLc))
        .tls_context(no_roots)
        .build_https()
}

#[cfg(test)]
mod tests {
    use super::{custom_endpoint, env_has_static_credentials, env_region};

    /// An environment holding only `vars`.
    fn env(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name: &str| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn region_is_read_as_the_sdk_reads_it_first() {
        assert_eq!(
            env_region(env(&[
                ("AWS_REGION", "eu-west-1"),
                ("AWS_DEFAULT_REGION", "us-east-2"),
            ]))
            .as_deref(),
            Some("eu-west-1")
        );
        assert_eq!(
            env_region(env(&[("AWS_DEFAULT_REGION", "us-east-2")])).as_deref(),
            Some("us-east-2")
        );
        assert_eq!(
            env_region(env(&[
                ("AWS_REGION", ""),
                ("AWS_DEFAULT_REGION", "us-east-2")
            ]))
            .as_deref(),
            Some("us-east-2")
        );
        // Nothing named: the default chain decides (profile, EC2 metadata).
        assert_eq!(env_region(env(&[])), None);
    }

    #[test]
    fn static_credentials_need_a_key_and_a_secret() {
        assert!(env_has_static_credentials(env(&[
            ("AWS_ACCESS_KEY_ID", "AKID"),
            ("AWS_SECRET_ACCESS_KEY", "secret"),
        ])));
        assert!(env_has_static_credentials(env(&[
            ("AWS_ACCESS_KEY_ID", "AKID"),
            ("SECRET_ACCESS_KEY", "secret"),
        ])));
        assert!(!env_has_static_credentials(env(&[(
            "AWS_ACCESS_KEY_ID",
            "AKID"
        )])));
        assert!(!env_has_static_credentials(env(&[
            ("AWS_ACCESS_KEY_ID", " "),
            ("AWS_SECRET_ACCESS_KEY", "secret"),
        ])));
        assert!(!env_has_static_credentials(env(&[])));
    }

    #[test]
    fn endpoint_follows_the_sdk_precedence() {
        let (ours, s3, shared) = (
            Some("http://ours:9000"),
            Some("http://env-s3:9000"),
            Some("https://shared"),
        );
        assert_eq!(
            custom_endpoint(ours, s3, None, shared).as_deref(),
            Some("http://ours:9000")
        );
        assert_eq!(
            custom_endpoint(None, s3, None, shared).as_deref(),
            Some("http://env-s3:9000")
        );
        assert_eq!(
            custom_endpoint(None, None, None, shared).as_deref(),
            Some("https://shared")
        );
        assert_eq!(custom_endpoint(None, None, None, None), None);
        assert_eq!(custom_endpoint(None, Some(""), None, None), None);
    }

    #[test]
    fn ignored_configured_endpoints_are_ignored() {
        let s3 = Some("http://env-s3:9000");
        assert_eq!(custom_endpoint(None, s3, Some("true"), None), None);
        assert_eq!(custom_endpoint(None, s3, Some(" TRUE "), None), None);
        assert_eq!(
            custom_endpoint(None, s3, Some("false"), None).as_deref(),
            Some("http://env-s3:9000")
        );
        // Our own setting is not "configured" by the environment.
        assert_eq!(
            custom_endpoint(Some("http://ours"), s3, Some("true"), None).as_deref(),
            Some("http://ours")
        );
    }
}
