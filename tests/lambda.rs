//! The Lambda runtime path without AWS: the real `plugin-api` binary runs with
//! `AWS_LAMBDA_RUNTIME_API` pointing at an in-test emulator of the Lambda
//! Runtime API, which feeds it API Gateway HTTP API (payload v2) events and
//! Lambda function URL events and collects the responses.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use kuiper_harness::files::FileHost;
use kuiper_harness::plugins::example_so;
use kuiper_harness::zips::ZipBuilder;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, Mutex};

#[derive(Default)]
struct Emulator {
    queue: Mutex<Option<mpsc::Receiver<(String, Value)>>>,
    waiting: Mutex<HashMap<String, oneshot::Sender<Result<Value, Value>>>>,
}

async fn next(State(emu): State<Arc<Emulator>>) -> impl IntoResponse {
    let mut guard = emu.queue.lock().await;
    let rx = guard.as_mut().expect("queue");
    let Some((id, event)) = rx.recv().await else {
        // No more events: keep the runtime waiting, as Lambda does.
        drop(guard);
        std::future::pending::<()>().await;
        unreachable!()
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        "lambda-runtime-aws-request-id",
        HeaderValue::from_str(&id).unwrap(),
    );
    headers.insert(
        "lambda-runtime-deadline-ms",
        HeaderValue::from_static("4102444800000"),
    );
    headers.insert(
        "lambda-runtime-invoked-function-arn",
        HeaderValue::from_static("arn:aws:lambda:us-east-1:123456789012:function:plugin-api"),
    );
    headers.insert(
        "lambda-runtime-trace-id",
        HeaderValue::from_static("Root=1-5759e988-bd862e3fe1be46a994272793"),
    );
    (headers, Json(event))
}

async fn respond(
    State(emu): State<Arc<Emulator>>,
    Path(id): Path<String>,
    body: String,
) -> &'static str {
    if let Some(tx) = emu.waiting.lock().await.remove(&id) {
        let _ = tx.send(Ok(
            serde_json::from_str(&body).unwrap_or(Value::String(body))
        ));
    }
    "accepted"
}

async fn error(
    State(emu): State<Arc<Emulator>>,
    Path(id): Path<String>,
    body: String,
) -> &'static str {
    if let Some(tx) = emu.waiting.lock().await.remove(&id) {
        let _ = tx.send(Err(
            serde_json::from_str(&body).unwrap_or(Value::String(body))
        ));
    }
    "accepted"
}

struct Lambda {
    events: mpsc::Sender<(String, Value)>,
    emu: Arc<Emulator>,
    _child: tokio::process::Child,
    counter: std::sync::atomic::AtomicU32,
}

impl Lambda {
    async fn start(store: &std::path::Path) -> Self {
        let (tx, rx) = mpsc::channel(16);
        let emu = Arc::new(Emulator {
            queue: Mutex::new(Some(rx)),
            waiting: Mutex::new(HashMap::new()),
        });
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route(
                "/2018-06-01/runtime/invocation/{id}/response",
                post(respond),
            )
            .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
            .with_state(emu.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_plugin-api"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("AWS_LAMBDA_RUNTIME_API", addr.to_string())
            .env("AWS_LAMBDA_FUNCTION_NAME", "plugin-api")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "stream")
            .env("AWS_LAMBDA_LOG_GROUP_NAME", "group")
            .env("KUIPER_STORE", store.display().to_string())
            .env("KUIPER_ALLOW_PRIVATE_NETWORK", "true")
            // Lambda's listen address is irrelevant; a non-loopback one must not stop it.
            .env("KUIPER_LISTEN", "0.0.0.0:9081")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Lambda {
            events: tx,
            emu,
            _child: child,
            counter: Default::default(),
        }
    }

    /// Sends one event and returns the function's response (or its error).
    async fn invoke(&self, event: Value) -> Result<Value, Value> {
        let id = format!(
            "req-{}",
            self.counter
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        );
        let (tx, rx) = oneshot::channel();
        self.emu.waiting.lock().await.insert(id.clone(), tx);
        self.events.send((id, event)).await.unwrap();
        tokio::time::timeout(Duration::from_secs(60), rx)
            .await
            .expect("the function answered")
            .unwrap()
    }
}

/// An API Gateway HTTP API (payload 2.0) event, or a function URL event.
fn event(kind: &str, method: &str, path: &str, query: &str, body: Option<Value>) -> Value {
    let (domain, stage, raw_path) = match kind {
        "apigw" => (
            "abc123.execute-api.us-east-1.amazonaws.com",
            "prod",
            format!("/prod{path}"),
        ),
        _ => (
            "xyz789.lambda-url.us-east-1.on.aws",
            "$default",
            path.to_string(),
        ),
    };
    json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": raw_path,
        "rawQueryString": query,
        "headers": {"content-type": "application/json", "host": domain, "user-agent": "curl/8"},
        "requestContext": {
            "accountId": "123456789012",
            "apiId": domain.split('.').next().unwrap(),
            "domainName": domain,
            "domainPrefix": domain.split('.').next().unwrap(),
            "http": {"method": method, "path": raw_path, "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1", "userAgent": "curl/8"},
            "requestId": "gw-request",
            "routeKey": "$default",
            "stage": stage,
            "time": "24/Nov/2026:05:00:00 +0000",
            "timeEpoch": 1795496400000u64
        },
        "body": body.map(|b| b.to_string()),
        "isBase64Encoded": false
    })
}

fn status_body(r: &Value) -> (u64, String) {
    (
        r["statusCode"].as_u64().unwrap(),
        r["body"].as_str().unwrap_or_default().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lambda_events_drive_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let files = FileHost::start().await;
    let zip = ZipBuilder::new()
        .file("Lam.so", example_so("print"))
        .build();
    let url = files.serve("/sinks/lam.zip", zip).await;
    let lambda = Lambda::start(&dir.path().join("store")).await;

    for kind in ["apigw", "url"] {
        let r = lambda
            .invoke(event(
                kind,
                "POST",
                "/plugins/sinks",
                "",
                Some(json!({"name": "lam", "file": url})),
            ))
            .await
            .expect("response");
        assert_eq!(
            status_body(&r),
            (201, "sinks plugin lam is created".to_string()),
            "{kind}: {r}"
        );

        let r = lambda
            .invoke(event(kind, "GET", "/plugins/sinks", "", None))
            .await
            .unwrap();
        assert_eq!(status_body(&r), (200, "[\"lam\"]".to_string()), "{kind}");
        assert_eq!(r["headers"]["content-type"], "application/json");

        let r = lambda
            .invoke(event(kind, "GET", "/plugins/sinks/lam", "", None))
            .await
            .unwrap();
        let (status, body) = status_body(&r);
        assert_eq!(status, 200, "{kind}: {body}");
        let meta: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(meta["soFile"], "Lam.so");
        assert_eq!(meta["source"], url);

        let r = lambda
            .invoke(event(
                kind,
                "POST",
                "/plugins/sinks",
                "",
                Some(json!({"name": "a.b", "file": url})),
            ))
            .await
            .unwrap();
        let (status, body) = status_body(&r);
        assert_eq!(status, 400, "{kind}");
        let err: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(err["error"], 1000);
        assert!(
            err["message"]
                .as_str()
                .unwrap()
                .contains("invalid name \"a.b\""),
            "{body}"
        );

        let r = lambda
            .invoke(event(
                kind,
                "POST",
                "/plugins/sinks",
                "",
                Some(json!("not an object")),
            ))
            .await
            .unwrap();
        assert_eq!(status_body(&r).0, 400);

        let r = lambda
            .invoke(event(
                kind,
                "DELETE",
                "/plugins/sinks/lam",
                "callback=",
                None,
            ))
            .await
            .unwrap();
        assert_eq!(
            status_body(&r),
            (200, "sinks plugin lam is deleted and Kuiper nodes must restart for the change to take effect.".to_string()),
            "{kind}"
        );
        let r = lambda
            .invoke(event(kind, "GET", "/plugins/sinks/lam", "", None))
            .await
            .unwrap();
        assert_eq!(status_body(&r).0, 404, "{kind}");
        let r = lambda
            .invoke(event(kind, "GET", "/ping", "", None))
            .await
            .unwrap();
        assert_eq!(status_body(&r), (200, "pong".into()));
    }
    // The store is the local directory the function was given.
    assert!(dir.path().join("store/blobs").is_dir());
}
