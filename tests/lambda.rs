//! The Lambda runtime path without AWS: the real `plugin-api` binary runs with
//! `AWS_LAMBDA_RUNTIME_API` pointing at the harness's emulator of the Lambda
//! Runtime API, which feeds it API Gateway HTTP API (payload v2) events and
//! Lambda function URL events and collects the responses. The builds that are
//! deployed (`cargo lambda build`) answer the same in `tests/lambda_artifact.rs`.

use kuiper_harness::files::FileHost;
use kuiper_harness::lambda_runtime::{plugin_round_trip, RuntimeApi, Source};
use kuiper_harness::plugins::example_so;
use kuiper_harness::zips::ZipBuilder;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lambda_events_drive_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let files = FileHost::start().await;
    let zip = ZipBuilder::new()
        .file("Lam.so", example_so("print"))
        .build();
    let url = files.serve("/sinks/lam.zip", zip).await;
    let api = RuntimeApi::start().await;
    let store = dir.path().join("store").display().to_string();
    let log = dir.path().join("function.log");
    let _function = api.spawn(
        tokio::process::Command::new(env!("CARGO_BIN_EXE_plugin-api")),
        &[
            ("KUIPER_STORE", &store),
            ("KUIPER_ALLOW_PRIVATE_NETWORK", "true"),
            // Lambda's listen address is irrelevant; a non-loopback one must not stop it.
            ("KUIPER_LISTEN", "0.0.0.0:9081"),
        ],
        &log,
    );
    for source in [Source::ApiGateway, Source::FunctionUrl] {
        plugin_round_trip(&api, source, &url).await;
    }
    // The store is the local directory the function was given.
    assert!(dir.path().join("store/blobs").is_dir());
    // On Lambda the logs are JSON lines (CloudWatch parses them).
    let logs = std::fs::read_to_string(&log).unwrap();
    let first = logs.lines().next().expect("the function logged");
    let line: serde_json::Value = serde_json::from_str(first).expect("a JSON log line");
    assert!(line["level"].is_string(), "{first}");
}
