//! Test tokens for the authentication tests, signed with the test-only keys in
//! `harness/fixtures/auth/`.

use std::path::PathBuf;

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/auth")
        .join(name)
}

/// The public key the service should trust (file name = the `iss` to use).
pub fn trusted_public_key() -> (String, Vec<u8>) {
    (
        "test-signer.pub".into(),
        std::fs::read(fixture("test-signer.pub")).expect("fixture"),
    )
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    jsonwebtoken::get_current_timestamp() as i64
}

/// A token with `claims`, signed RS256 by the trusted key (or by another key).
pub fn token(claims: &Value, trusted_signer: bool) -> String {
    let key = if trusted_signer {
        "test-signer.key"
    } else {
        "other-signer.key"
    };
    let pem = std::fs::read(fixture(key)).expect("fixture");
    encode(
        &Header::new(Algorithm::RS256),
        claims,
        &EncodingKey::from_rsa_pem(&pem).expect("rsa key"),
    )
    .expect("sign")
}

/// A token signed HS256 with `secret` (for algorithm-confusion attempts).
pub fn hs256_token(claims: &Value, secret: &[u8]) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("sign")
}

/// Valid claims for the trusted key.
pub fn valid_claims() -> Value {
    serde_json::json!({"iss": "test-signer.pub", "aud": ["eKuiper"], "exp": now() + 3600, "nbf": now() - 10})
}
