//! The Lambda runtime path without AWS: the real `plugin-api` binary runs with
//! `AWS_LAMBDA_RUNTIME_API` pointing at the harness's emulator of the Lambda
//! Runtime API, which feeds it API Gateway HTTP API (payload v2) events and
//! Lambda function URL events and collects the responses. The builds that are
//! deployed (`cargo lambda build`) answer the same in `tests/lambda_artifact.rs`.

use kuiper_harness::lambda_round_trip::function_round_trip;
use kuiper_harness::lambda_runtime::Source;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lambda_events_drive_the_api() {
    let function = tokio::process::Command::new(env!("CARGO_BIN_EXE_plugin-api"));
    // Lambda's listen address is irrelevant; a non-loopback one must not stop it.
    let env = [("KUIPER_LISTEN", "0.0.0.0:9081")];
    let sources = [Source::ApiGateway, Source::FunctionUrl];
    let logs = function_round_trip(function, &env, &sources).await;
    // On Lambda the logs are JSON lines (CloudWatch parses them).
    let first = logs.lines().next().expect("the function logged");
    let line: serde_json::Value = serde_json::from_str(first).expect("a JSON log line");
    assert!(line["level"].is_string(), "{first}");
}
