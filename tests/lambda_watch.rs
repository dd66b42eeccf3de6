//! `cargo lambda watch`, as the README tells users to run it: the project's
//! `[package.metadata.lambda]` settings, a free loopback port, and requests
//! through the function-URL path `/lambda-url/plugin-api/...`. The store is
//! the user's choice: from the environment, or from `--env-var`. Needs
//! cargo-lambda (`bash .ci/lambda-tools`); without it these tests fail.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use kuiper_harness::files::FileHost;
use kuiper_harness::lambda_round_trip::{
    assert_bad_name_refused, assert_describes_lam, bad_name_create, lam_zip,
};
use kuiper_harness::lambda_tools::{cargo_lambda, path};
use kuiper_harness::rig::{free_port, repo_root};
use serde_json::{json, Value};

/// How the store reaches the function.
enum StoreBy {
    Environment,
    EnvVarFlag,
}

/// A running `cargo lambda watch` (its whole process group dies with it).
struct Watch {
    child: tokio::process::Child,
    base: String,
    log: std::path::PathBuf,
    http: reqwest::Client,
}

impl Watch {
    /// Starts the emulator with `store` and downloads allowed from `allowed`
    /// (`host:port`) only, and waits until the function answers `/ping`
    /// (its first request builds it).
    async fn start(store: &Path, by: StoreBy, allowed: &str, log: &Path) -> Watch {
        let port = free_port();
        let mut cmd = tokio::process::Command::new(cargo_lambda());
        cmd.current_dir(repo_root())
            .env("PATH", path())
            .env_remove("KUIPER_STORE")
            .env_remove("AWS_LAMBDA_RUNTIME_API")
            .env("KUIPER_ALLOWED_HOSTS", allowed)
            .args(["lambda", "watch", "--ignore-changes", "--bin", "plugin-api"])
            // Its own target directory: cargo-lambda builds with flags of its
            // own, and in `target/debug` each build would undo the other's.
            // (Its `--target-dir` flag breaks its `cargo metadata` call.)
            .env("CARGO_TARGET_DIR", repo_root().join("target/lambda-watch"))
            .args(["--invoke-address", "127.0.0.1", "--invoke-port"])
            .arg(port.to_string());
        let store = store.display().to_string();
        match by {
            StoreBy::Environment => {
                cmd.env("KUIPER_STORE", &store);
            }
            StoreBy::EnvVarFlag => {
                cmd.arg("--env-var").arg(format!("KUIPER_STORE={store}"));
            }
        }
        let out = std::fs::File::create(log).unwrap();
        let child = cmd
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .stdin(Stdio::null())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .expect("start cargo lambda watch");
        let mut watch = Watch {
            child,
            base: format!("http://127.0.0.1:{port}/lambda-url/plugin-api"),
            log: log.to_path_buf(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(900))
                .build()
                .unwrap(),
        };
        let deadline = Instant::now() + Duration::from_secs(900);
        loop {
            if let Ok((200, body)) = watch.call("GET", "/ping", None).await {
                assert_eq!(body, "pong");
                return watch;
            }
            assert!(Instant::now() < deadline, "no pong:\n{}", watch.log());
            if let Some(status) = watch.child.try_wait().unwrap() {
                panic!("cargo lambda watch exited ({status}):\n{}", watch.log());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// One request through the function URL path: status and body.
    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> reqwest::Result<(u16, String)> {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let r = req.send().await?;
        let status = r.status().as_u16();
        let ct = r.headers().get("content-type").cloned();
        let text = r.text().await?;
        if status >= 400 {
            assert_eq!(
                ct.as_ref().map(|v| v.to_str().unwrap()),
                Some("application/json"),
                "{status} {text}"
            );
        }
        Ok((status, text))
    }

    async fn ok(&self, method: &str, path: &str, body: Option<Value>) -> (u16, String) {
        match self.call(method, path, body).await {
            Ok(r) => r,
            Err(e) => panic!("{method} {path}: {e}\n{}", self.log()),
        }
    }

    /// Creates sink `lam` from `url`, and checks that it landed in `store`.
    async fn create_lam(&self, url: &str, store: &Path) {
        let create = json!({"name": "lam", "file": url});
        let r = self.ok("POST", "/plugins/sinks", Some(create)).await;
        let created = (201, "sinks plugin lam is created".to_string());
        assert_eq!(r, created, "{}", self.log());
        let blobs = store.join("blobs");
        assert!(blobs.is_dir(), "no {}:\n{}", blobs.display(), self.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            // SAFETY: signals the process group this test started.
            unsafe { libc::killpg(pid as i32, libc::SIGKILL) };
        }
    }
}

fn port_of(url: &str) -> u16 {
    url::Url::parse(url).unwrap().port().unwrap()
}

/// The plugin API through `cargo lambda watch`, the store from the
/// environment: create, list, describe, a bad name, a refused private
/// download, delete; and the function logs JSON, as on Lambda.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_serves_the_plugin_api() {
    let dir = tempfile::tempdir().unwrap();
    let files = FileHost::start().await;
    let zip = lam_zip();
    let url = files.serve("/sinks/lam.zip", zip.clone()).await;
    let elsewhere = FileHost::start().await;
    let private = elsewhere.serve("/sinks/lam.zip", zip).await;
    let allowed = format!("127.0.0.1:{}", port_of(&url));
    let store = dir.path().join("store");
    let log = dir.path().join("watch.log");
    let w = Watch::start(&store, StoreBy::Environment, &allowed, &log).await;

    w.create_lam(&url, &store).await;
    let r = w.ok("GET", "/plugins/sinks", None).await;
    assert_eq!(r, (200, "[\"lam\"]".into()));
    let (status, body) = w.ok("GET", "/plugins/sinks/lam", None).await;
    assert_eq!(status, 200, "{body}");
    assert_describes_lam(&body, &url);

    let (status, body) = w
        .ok("POST", "/plugins/sinks", Some(bad_name_create(&url)))
        .await;
    assert_bad_name_refused(status.into(), &body);

    // A loopback host that KUIPER_ALLOWED_HOSTS does not name: refused
    // before anything connects to it.
    let refused = json!({"name": "other", "file": private});
    let (status, body) = w.ok("POST", "/plugins/sinks", Some(refused)).await;
    assert_eq!(status, 400, "{body}");
    let message = serde_json::from_str::<Value>(&body).unwrap()["message"].to_string();
    let want =
        format!("fail to download file {private}: destination 127.0.0.1 is not a public address");
    assert!(message.contains(&want), "{message}");
    assert_eq!(elsewhere.hits("/sinks/lam.zip").await, 0);

    let (status, body) = w.ok("DELETE", "/plugins/sinks/lam?callback=", None).await;
    assert_eq!(status, 200, "{body}");
    let r = w.ok("GET", "/plugins/sinks", None).await;
    assert_eq!(r, (200, "[]".into()));

    // The function's own lines are JSON (level, fields, target).
    let logs = w.log();
    let json_lines: Vec<Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
        .filter(|v| v["level"].is_string())
        .collect();
    assert!(
        json_lines.iter().any(|v| v["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("created"))),
        "no JSON log line about the create:\n{logs}"
    );
}

/// `--env-var KUIPER_STORE=...` chooses the store (nothing in Cargo.toml
/// overrides it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_takes_the_store_from_env_var() {
    let dir = tempfile::tempdir().unwrap();
    let files = FileHost::start().await;
    let zip = lam_zip();
    let url = files.serve("/sinks/lam.zip", zip).await;
    let allowed = format!("127.0.0.1:{}", port_of(&url));
    let store = dir.path().join("flag-store");
    let log = dir.path().join("watch.log");
    let w = Watch::start(&store, StoreBy::EnvVarFlag, &allowed, &log).await;
    w.create_lam(&url, &store).await;
}
