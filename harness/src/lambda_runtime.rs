//! An emulator of the Lambda Runtime API (`/2018-06-01/runtime/invocation/...`)
//! on loopback, and the events API Gateway and function URLs send.
//!
//! [`RuntimeApi::start`] serves the API; [`RuntimeApi::spawn`] starts any
//! function command (the test's `plugin-api`, a `cargo lambda build` bootstrap,
//! under qemu or not) with the variables Lambda gives it; [`RuntimeApi::invoke`]
//! queues one event and waits for the function's response or error.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot, Mutex};

type Answer = Result<Value, Value>;

struct Queue {
    events: Mutex<mpsc::Receiver<(String, Value)>>,
    waiting: Mutex<HashMap<String, oneshot::Sender<Answer>>>,
}

/// The emulator: one function instance takes events from it, one at a time.
pub struct RuntimeApi {
    addr: SocketAddr,
    events: mpsc::Sender<(String, Value)>,
    queue: Arc<Queue>,
    counter: AtomicU32,
}

impl RuntimeApi {
    /// Serves the Runtime API on a free loopback port.
    pub async fn start() -> RuntimeApi {
        let (tx, rx) = mpsc::channel(16);
        let queue = Arc::new(Queue {
            events: Mutex::new(rx),
            waiting: Mutex::new(HashMap::new()),
        });
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route(
                "/2018-06-01/runtime/invocation/{id}/response",
                post(respond),
            )
            .route("/2018-06-01/runtime/invocation/{id}/error", post(error))
            .with_state(queue.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        RuntimeApi {
            addr,
            events: tx,
            queue,
            counter: AtomicU32::new(0),
        }
    }

    /// `host:port` of the API, as `AWS_LAMBDA_RUNTIME_API` names it.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// Starts `cmd` as the function: a cleared environment (but `PATH`) plus
    /// the variables Lambda sets, then `env`. Its stderr is captured to
    /// `stderr_to` (the function's logs); the child dies with the handle.
    pub fn spawn(
        &self,
        mut cmd: Command,
        env: &[(&str, &str)],
        stderr_to: &std::path::Path,
    ) -> Child {
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("AWS_LAMBDA_RUNTIME_API", self.address())
            .env("AWS_LAMBDA_FUNCTION_NAME", "plugin-api")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "stream")
            .env("AWS_LAMBDA_LOG_GROUP_NAME", "group");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let log = std::fs::File::create(stderr_to).expect("function log file");
        cmd.stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .expect("start the function")
    }

    /// Sends one event; the function's response (`Ok`) or reported error (`Err`).
    /// Panics when no answer comes within `within`.
    pub async fn invoke_within(&self, event: Value, within: Duration) -> Answer {
        let id = format!("req-{}", self.counter.fetch_add(1, Ordering::SeqCst));
        let (tx, rx) = oneshot::channel();
        self.queue.waiting.lock().await.insert(id.clone(), tx);
        self.events.send((id, event)).await.unwrap();
        tokio::time::timeout(within, rx)
            .await
            .expect("the function answered")
            .unwrap()
    }

    /// [`RuntimeApi::invoke_within`] a minute.
    pub async fn invoke(&self, event: Value) -> Answer {
        self.invoke_within(event, Duration::from_secs(60)).await
    }
}

async fn next(State(queue): State<Arc<Queue>>) -> impl IntoResponse {
    let mut events = queue.events.lock().await;
    let Some((id, event)) = events.recv().await else {
        // No more events: keep the runtime waiting, as Lambda does.
        drop(events);
        std::future::pending::<()>().await;
        unreachable!()
    };
    let mut headers = HeaderMap::new();
    let id = HeaderValue::from_str(&id).unwrap();
    headers.insert("lambda-runtime-aws-request-id", id);
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

async fn respond(queue: State<Arc<Queue>>, id: Path<String>, body: String) -> &'static str {
    answer(queue, id, body, true).await
}

async fn error(queue: State<Arc<Queue>>, id: Path<String>, body: String) -> &'static str {
    answer(queue, id, body, false).await
}

async fn answer(
    State(queue): State<Arc<Queue>>,
    Path(id): Path<String>,
    body: String,
    ok: bool,
) -> &'static str {
    if let Some(tx) = queue.waiting.lock().await.remove(&id) {
        let v = serde_json::from_str(&body).unwrap_or(Value::String(body));
        let _ = tx.send(if ok { Ok(v) } else { Err(v) });
    }
    "accepted"
}

/// Where an event comes from.
#[derive(Clone, Copy, Debug)]
pub enum Source {
    /// API Gateway HTTP API, payload 2.0, stage `prod` (its raw path has the stage).
    ApiGateway,
    /// A Lambda function URL (the same payload, no stage).
    FunctionUrl,
}

/// An HTTP event (payload 2.0) of `source`: `query` is the raw query string.
pub fn event(source: Source, method: &str, path: &str, query: &str, body: Option<Value>) -> Value {
    let (domain, stage, raw_path) = match source {
        Source::ApiGateway => (
            "abc123.execute-api.us-east-1.amazonaws.com",
            "prod",
            format!("/prod{path}"),
        ),
        Source::FunctionUrl => (
            "xyz789.lambda-url.us-east-1.on.aws",
            "$default",
            path.to_string(),
        ),
    };
    let prefix = domain.split('.').next().unwrap();
    json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": raw_path,
        "rawQueryString": query,
        "headers": {"content-type": "application/json", "host": domain, "user-agent": "curl/8"},
        "requestContext": {
            "accountId": "123456789012",
            "apiId": prefix,
            "domainName": domain,
            "domainPrefix": prefix,
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

/// The status code and body of a function's HTTP response.
pub fn status_body(r: &Value) -> (u64, String) {
    (
        r["statusCode"].as_u64().expect("a statusCode"),
        r["body"].as_str().unwrap_or_default().to_string(),
    )
}
