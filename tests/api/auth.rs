//! Optional JWT authentication (eKuiper's scheme): RS256 tokens whose `iss`
//! names a public key in KUIPER_AUTH_KEYS_DIR and whose `aud` has `eKuiper`.

use kuiper_harness::auth::{hs256_token, now, token, trusted_public_key, valid_claims};
use reqwest::Method;
use serde_json::json;

use crate::common::{Backend, TestEnv};

const REFUSED: &str = "unauthorized: a valid token is required in the Authorization header";

async fn with_auth(backend: Backend) -> TestEnv {
    let keys = tempfile::tempdir().unwrap().keep();
    let (name, pem) = trusted_public_key();
    std::fs::write(keys.join(name), pem).unwrap();
    std::fs::write(keys.join("notes.txt"), "not a key").unwrap();
    TestEnv::start_with(backend, &["--auth-keys-dir", keys.to_str().unwrap()]).await
}

async fn tokens_are_required(backend: Backend) {
    let env = with_auth(backend).await;
    // Health and service info stay open.
    assert_eq!(env.get("/ping").await.status, 200);
    assert_eq!(env.get("/").await.status, 200);
    // Everything else needs a token.
    for (m, p) in [
        (Method::GET, "/plugins/sources"),
        (Method::GET, "/plugins/udfs"),
        (Method::DELETE, "/plugins/sinks/x"),
        (Method::GET, "/nope"),
    ] {
        let r = env.request(m.clone(), p, None).await;
        assert_eq!(r.status, 401, "{m} {p}");
        assert_eq!(r.error_message(), REFUSED);
    }
    let good = token(&valid_claims(), true);
    let r = env
        .request_auth(Method::GET, "/plugins/sources", None, Some(&good))
        .await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "[]"),
        "a raw token, as eKuiper clients send it"
    );
    let url = env.serve_plugin("sinks", "authed").await;
    let r = env
        .request_auth(
            Method::POST,
            "/plugins/sinks",
            Some(json!({"name": "authed", "file": url}).to_string()),
            Some(&format!("Bearer {good}")),
        )
        .await;
    assert_eq!(r.status, 201, "a Bearer token: {}", r.body);
    // The scheme's name is case-insensitive (RFC 7235), as eKuiper's own
    // handling has it, and may be followed by more than one space.
    for header in [
        format!("bearer {good}"),
        format!("BEARER {good}"),
        format!("bEaReR    {good}"),
        format!("Bearer\t{good}"),
    ] {
        let r = env
            .request_auth(Method::GET, "/plugins/sinks", None, Some(&header))
            .await;
        assert_eq!(
            (r.status, r.body.as_str()),
            (200, "[\"authed\"]"),
            "{:?}",
            &header[..10]
        );
    }
    // Another scheme's name is not taken for a token's.
    let r = env
        .request_auth(
            Method::GET,
            "/plugins/sinks",
            None,
            Some(&format!("Basic {good}")),
        )
        .await;
    assert_eq!(r.status, 401);

    let mut bad = Vec::new();
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut c = valid_claims();
        f(&mut c);
        token(&c, true)
    };
    bad.push(("expired", with(&|c| c["exp"] = json!(now() - 120))));
    bad.push(("not yet valid", with(&|c| c["nbf"] = json!(now() + 3600))));
    bad.push((
        "no exp",
        with(&|c| {
            c.as_object_mut().unwrap().remove("exp");
        }),
    ));
    bad.push((
        "wrong audience",
        with(&|c| c["aud"] = json!(["someone-else"])),
    ));
    bad.push((
        "no audience",
        with(&|c| {
            c.as_object_mut().unwrap().remove("aud");
        }),
    ));
    bad.push(("unknown issuer", with(&|c| c["iss"] = json!("other.pub"))));
    bad.push((
        "issuer is a path",
        with(&|c| c["iss"] = json!("../auth/test-signer.pub")),
    ));
    bad.push((
        "issuer is not a key",
        with(&|c| c["iss"] = json!("notes.txt")),
    ));
    bad.push(("signed by another key", token(&valid_claims(), false)));
    bad.push((
        "HS256 with the public key as secret",
        hs256_token(&valid_claims(), &trusted_public_key().1),
    ));
    bad.push(("garbage", "not.a.token".to_string()));
    let (h, p, _) = {
        let t = good.clone();
        let parts: Vec<String> = t.split('.').map(str::to_string).collect();
        (parts[0].clone(), parts[1].clone(), parts[2].clone())
    };
    bad.push(("unsigned", format!("{h}.{p}.")));
    for (why, t) in bad {
        let r = env
            .request_auth(Method::GET, "/plugins/sinks", None, Some(&t))
            .await;
        assert_eq!(r.status, 401, "{why}");
        assert_eq!(
            r.error_message(),
            REFUSED,
            "{why}: no detail for the client"
        );
    }
    let r = env
        .request_auth(Method::GET, "/plugins/sinks", None, Some(&good))
        .await;
    assert_eq!(r.body, "[\"authed\"]");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_required_local() {
    tokens_are_required(Backend::Local).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_required_s3() {
    tokens_are_required(Backend::S3).await;
}
