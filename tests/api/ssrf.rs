//! The address policy end to end, with loopback forms only: private
//! destinations are refused unless allowed, on the first request, after DNS
//! resolution, on every redirect hop, and for callbacks.

use kuiper_harness::files::FileHost;
use kuiper_harness::raw::{RawHost, RawReply};
use serde_json::json;

use crate::common::{Backend, TestEnv};

async fn guarded(backend: Backend) -> TestEnv {
    let mut env = TestEnv::start(backend).await;
    let allowed = env.files.base().trim_start_matches("http://").to_string();
    let cb = env
        .callbacks
        .url("")
        .trim_start_matches("http://")
        .to_string();
    env.extra_args = vec![
        "--allow-private-network".into(),
        "false".into(),
        "--allowed-hosts".into(),
        format!("{allowed},{cb}"),
    ];
    env.restart().await;
    env
}

async fn refused(env: &TestEnv, file: &str, expected: &str) {
    let r = env
        .post("/plugins/sinks", json!({"name": "ssrf", "file": file}))
        .await;
    assert_eq!(r.status, 400, "{file}: {}", r.body);
    let msg = r.error_message();
    assert_eq!(
        msg,
        format!("sinks plugins create command error: fail to download file {file}: {expected}"),
        "{file}"
    );
}

const NOT_PUBLIC: &str = "is not a public address (set KUIPER_ALLOW_PRIVATE_NETWORK or KUIPER_ALLOWED_HOSTS to allow it)";

async fn private_destinations_are_refused(backend: Backend) {
    let env = guarded(backend).await;
    let other = FileHost::start().await;
    let zip = crate::common::plugin_zip("sinks", "ssrf", "Ssrf.so");
    let other_url = other.serve("/ssrf.zip", zip.clone()).await;
    let other_port = other_url
        .split(':')
        .nth(2)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let allowed_port = env.files.base().rsplit(':').next().unwrap().to_string();

    // Another port on the loopback address.
    refused(
        &env,
        &other_url,
        &format!("destination 127.0.0.1 {NOT_PUBLIC}"),
    )
    .await;
    // Other loopback forms, even on the allowed port.
    refused(
        &env,
        &format!("http://127.0.0.2:{allowed_port}/ssrf.zip"),
        &format!("destination 127.0.0.2 {NOT_PUBLIC}"),
    )
    .await;
    refused(
        &env,
        &format!("http://[::1]:{allowed_port}/ssrf.zip"),
        &format!("destination ::1 {NOT_PUBLIC}"),
    )
    .await;
    refused(
        &env,
        &format!("http://[::ffff:127.0.0.1]:{other_port}/ssrf.zip"),
        &format!("destination ::ffff:127.0.0.1 {NOT_PUBLIC}"),
    )
    .await;
    // A decimal IPv4 host is normalised, then refused.
    let r = env
        .post(
            "/plugins/sinks",
            json!({"name": "ssrf", "file": format!("http://2130706433:{other_port}/ssrf.zip")}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(
        r.error_message()
            .ends_with(&format!("destination 127.0.0.1 {NOT_PUBLIC}")),
        "{}",
        r.body
    );
    // A name that resolves to loopback is refused after resolution.
    let r = env
        .post(
            "/plugins/sinks",
            json!({"name": "ssrf", "file": format!("http://localhost:{other_port}/ssrf.zip")}),
        )
        .await;
    assert_eq!(r.status, 400);
    let msg = r.error_message();
    assert!(
        msg.contains(NOT_PUBLIC) && msg.contains("destination 127.0.0.1")
            || msg.contains("destination ::1"),
        "{msg}"
    );
    // A redirect from the allowed host to a loopback port that is not allowed.
    let hop = env.files.serve_redirect("/hop.zip", &other_url).await;
    refused(
        &env,
        &hop,
        &format!("redirect to {other_url} refused: destination 127.0.0.1 {NOT_PUBLIC}"),
    )
    .await;
    assert_eq!(
        other.hits("/ssrf.zip").await,
        0,
        "no request reached the refused host"
    );

    // A callback to a loopback port that is not allowed is refused before anything happens.
    let ok = env.files.serve("/ok.zip", zip).await;
    let r = env
        .post("/plugins/sinks", json!({"name": "ssrf", "file": ok, "callback": format!("http://127.0.0.1:{other_port}/cb")}))
        .await;
    assert_eq!(r.status, 400);
    assert!(r.error_message().contains(&format!("invalid callback uri http://127.0.0.1:{other_port}/cb: destination 127.0.0.1 {NOT_PUBLIC}")), "{}", r.body);
    assert!(env.list("sinks").await.is_empty());
    assert!(env.stored_files().await.is_empty());

    // The allowed host works, with an allowed callback.
    let r = env
        .post(
            "/plugins/sinks",
            json!({"name": "ssrf", "file": ok, "callback": env.callbacks.url("/callback")}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_destinations_are_refused_local() {
    private_destinations_are_refused(Backend::Local).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_destinations_are_refused_s3() {
    private_destinations_are_refused(Backend::S3).await;
}

/// The port of a `http://host:port...` URL.
fn port_of(url: &str) -> u16 {
    url::Url::parse(url).unwrap().port().expect("a port")
}

/// `KUIPER_ALLOWED_HOSTS=localhost:A` allows the name on port A only: a
/// download from another port, a callback to it and a redirect hop to it are
/// refused, and nothing connects to that port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_name_with_a_port_allows_that_port_only() {
    let mut env = TestEnv::start(Backend::Local).await;
    let files = port_of(&env.files.base());
    let callbacks = port_of(&env.callbacks.url("/"));
    env.extra_args = vec![
        "--allow-private-network".into(),
        "false".into(),
        "--allowed-hosts".into(),
        format!("localhost:{files},localhost:{callbacks}"),
    ];
    env.restart().await;
    let other = RawHost::start(RawReply::Close).await;
    let b = other.port();
    let mut ports = [files, callbacks];
    ports.sort_unstable();
    let not_allowed = format!(
        "destination localhost:{b} is not allowed (KUIPER_ALLOWED_HOSTS allows localhost on port {}, {} only)",
        ports[0], ports[1]
    );

    // A download from another port of the name.
    let elsewhere = format!("http://localhost:{b}/ssrf.zip");
    refused(&env, &elsewhere, &not_allowed).await;
    // A callback to another port of the name.
    let zip = crate::common::plugin_zip("sinks", "ssrf", "Ssrf.so");
    env.files.serve("/ok.zip", zip).await;
    let ok = format!("http://localhost:{files}/ok.zip");
    let cb = format!("http://localhost:{b}/cb");
    let r = env
        .post(
            "/plugins/sinks",
            json!({"name": "ssrf", "file": ok, "callback": cb}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(
        r.error_message(),
        format!("sinks plugins create command error: invalid callback uri {cb}: {not_allowed}")
    );
    // A redirect hop from the allowed port to another one.
    env.files.serve_redirect("/hop.zip", &elsewhere).await;
    refused(
        &env,
        &format!("http://localhost:{files}/hop.zip"),
        &format!("redirect to {elsewhere} refused: {not_allowed}"),
    )
    .await;
    assert_eq!(other.connections(), 0, "nothing connected to port {b}");
    assert!(env.list("sinks").await.is_empty());

    // The allowed ports work, by name.
    let r = env
        .post(
            "/plugins/sinks",
            json!({"name": "ssrf", "file": ok, "callback": format!("http://localhost:{callbacks}/callback")}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(env.list("sinks").await, vec!["ssrf"]);
}
