//! The stack of the real-component tests: a real MinIO bucket (one MinIO per
//! test binary), the real `plugin-api` router over it on 127.0.0.1:0, a
//! wiremock file host serving the rig's Go plugins in zips, and eKuiper nodes:
//! stock kuiperd (v2.4.0) started directly, or by `kuiper-node ekuiper`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use kuiper_harness::ekuiper::{new_base, node_env, Ports};
use kuiper_harness::files::FileHost;
use kuiper_harness::minio::{Minio, MINIO_ACCESS_KEY, MINIO_REGION, MINIO_SECRET_KEY};
use kuiper_harness::rig::Rig;
use kuiper_harness::zips::ZipBuilder;
use kuiper_registry::config::ServiceConfig;
use kuiper_registry::server::build_app;
use kuiper_registry::store::s3::{S3Settings, S3Store};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

/// The kuiper-node binary under test.
pub const NODE: &str = env!("CARGO_BIN_EXE_kuiper-node");

/// Runs a blocking harness call (a build, a process start) off the runtime's workers.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// MinIO, a bucket, plugin-api and a file host.
pub struct Stack {
    pub minio: &'static Minio,
    pub bucket: String,
    pub api: String,
    pub http: reqwest::Client,
    pub files: FileHost,
    pub tmp: tempfile::TempDir,
    server: JoinHandle<()>,
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Stack {
    pub async fn start() -> Stack {
        let minio = blocking(Minio::shared);
        let bucket = minio.new_bucket().await;
        let tmp = tempfile::tempdir().expect("tmp");
        let config = ServiceConfig::from_args([
            "--store".to_string(),
            format!("s3://{bucket}/registry"),
            "--tmp-dir".to_string(),
            tmp.path().display().to_string(),
            // The file host is on loopback.
            "--allow-private-network".to_string(),
            "true".to_string(),
        ])
        .expect("config");
        let store = store_of(minio, &bucket).await;
        let app = build_app(store, &config).expect("app");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let api = format!("http://{}", listener.local_addr().expect("addr"));
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("serve");
        });
        Stack {
            minio,
            bucket,
            api,
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("client"),
            files: FileHost::start().await,
            tmp,
            server,
        }
    }

    /// The registry's store, as plugin-api opens it.
    pub async fn store(&self) -> S3Store {
        store_of(self.minio, &self.bucket).await
    }

    /// Removes the build fingerprint from the stored metadata of `ty/name`,
    /// as metadata written before fingerprints were recorded has none.
    pub async fn forget_fingerprint(&self, ty: &str, name: &str) {
        use kuiper_registry::store::{Condition, Store};
        let store = self.store().await;
        let key = format!("plugins/{ty}/{name}.json");
        let object = store.get(&key).await.expect("read").expect("metadata");
        let mut meta: Value = serde_json::from_slice(&object.body).expect("JSON");
        meta.as_object_mut().expect("object").remove("build");
        store
            .put(
                &key,
                serde_json::to_vec(&meta).unwrap().into(),
                Condition::None,
            )
            .await
            .expect("write");
    }

    /// The node's `--store`.
    pub fn store_arg(&self) -> String {
        format!("s3://{}/registry", self.bucket)
    }

    /// A fresh eKuiper base directory named `name` in the test's directory.
    pub fn new_node_dir(&self, name: &str) -> PathBuf {
        let dest = self.tmp.path().join(name);
        blocking(|| new_base(&dest))
    }

    /// Serves `zip` on the file host; returns its URL.
    pub async fn serve(&self, path: &str, zip: Vec<u8>) -> String {
        self.files.serve(path, zip).await
    }

    /// A registry request; returns status and body.
    pub async fn registry(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, String) {
        let mut req = self.http.request(method, format!("{}{path}", self.api));
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let r = req.send().await.expect("registry request");
        (r.status().as_u16(), r.text().await.expect("body"))
    }

    /// Publishes `zip` as plugin `ty/name` (create), with extra body fields; asserts 201.
    pub async fn publish(&self, ty: &str, name: &str, zip: Vec<u8>, extra: Value) {
        let path = format!("/plugins/{ty}");
        self.send_zip(reqwest::Method::POST, &path, name, zip, extra, 201)
            .await;
    }

    /// Updates plugin `ty/name` to `zip`; asserts 200.
    pub async fn update(&self, ty: &str, name: &str, zip: Vec<u8>, extra: Value) {
        let path = format!("/plugins/{ty}/{name}");
        self.send_zip(reqwest::Method::PUT, &path, name, zip, extra, 200)
            .await;
    }

    /// Serves `zip` and sends a create or update of `name` naming it; asserts `want`.
    async fn send_zip(
        &self,
        method: reqwest::Method,
        path: &str,
        name: &str,
        zip: Vec<u8>,
        extra: Value,
        want: u16,
    ) {
        let url = self
            .serve(&format!("/zips/{name}-{}.zip", tag(&zip)), zip)
            .await;
        let mut body = json!({"name": name, "file": url});
        merge(&mut body, extra);
        let (status, text) = self.registry(method.clone(), path, Some(body)).await;
        assert_eq!(status, want, "{method} {path}: {text}");
    }

    /// Deletes plugin `ty/name` from the registry; asserts 200.
    pub async fn delete(&self, ty: &str, name: &str) {
        let (status, text) = self
            .registry(
                reqwest::Method::DELETE,
                &format!("/plugins/{ty}/{name}"),
                None,
            )
            .await;
        assert_eq!(status, 200, "delete {ty}/{name}: {text}");
    }

    /// `kuiper-node ARGS` with a clean environment and the MinIO settings.
    pub fn node_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(NODE);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("AWS_ENDPOINT_URL_S3", self.minio.endpoint())
            .env("AWS_ACCESS_KEY_ID", MINIO_ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", MINIO_SECRET_KEY)
            .env("AWS_REGION", MINIO_REGION)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", self.tmp.path().join("no-aws-config"))
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                self.tmp.path().join("no-aws-credentials"),
            )
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    /// `kuiper-node sync` into `root`; asserts success and returns the report.
    pub async fn sync(&self, root: &Path) -> Value {
        let store = self.store_arg();
        let root = root.display().to_string();
        let out = self
            .node_command(&["sync", "--store", &store, "--root", &root])
            .output()
            .await
            .expect("run kuiper-node");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "sync failed ({}): {stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str(stdout.trim()).expect("report is JSON")
    }

    /// Starts `kuiper-node ekuiper` over `root`, running the rig's kuiperd.
    pub async fn supervised(&self, root: &Path) -> Supervised {
        Supervised::start(self, root, Ports::free(), &[]).await
    }
}

async fn store_of(minio: &Minio, bucket: &str) -> S3Store {
    S3Store::new(S3Settings {
        bucket: bucket.to_string(),
        prefix: "registry".into(),
        endpoint: Some(minio.endpoint()),
        region: Some(MINIO_REGION.into()),
        credentials: Some((MINIO_ACCESS_KEY.into(), MINIO_SECRET_KEY.into())),
        allow_unsafe: false,
    })
    .await
}

fn merge(body: &mut Value, extra: Value) {
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
}

fn tag(zip: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(zip)[..6])
}

/// `kuiper-node ekuiper -- kuiperd` running over one node directory.
pub struct Supervised {
    pub ports: Ports,
    pub child: Child,
    /// The node's report (the JSON line kuiper-node prints once eKuiper answered).
    pub report: Value,
    /// Everything else both processes printed: kuiper-node's progress and eKuiper's log.
    pub log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Supervised {
    /// Starts it and waits for its report (at most 60 s).
    pub async fn start(stack: &Stack, root: &Path, ports: Ports, extra: &[&str]) -> Supervised {
        Supervised::start_with_env(stack, root, ports, extra, &[]).await
    }

    /// [`Supervised::start`] with more environment variables for both processes.
    pub async fn start_with_env(
        stack: &Stack,
        root: &Path,
        ports: Ports,
        extra: &[&str],
        env: &[(String, String)],
    ) -> Supervised {
        let kuiperd = blocking(|| Rig::get().kuiperd());
        let store = stack.store_arg();
        let root_s = root.display().to_string();
        let kuiperd_s = kuiperd.display().to_string();
        let mut args = vec!["ekuiper", "--store", &store, "--root", &root_s];
        args.extend_from_slice(extra);
        args.extend(["--", &kuiperd_s]);
        let mut cmd = stack.node_command(&args);
        cmd.envs(node_env(root, ports))
            .envs(env.iter().cloned())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start kuiper-node ekuiper");
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let out_log = log.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) if v.get("installed").is_some() => {
                        let _ = tx.send(v);
                    }
                    _ => push(&out_log, &line),
                }
            }
        });
        let err_log = log.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                push(&err_log, &line);
            }
        });
        let report = match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
            Ok(Some(r)) => r,
            _ => {
                let _ = child.start_kill();
                panic!(
                    "kuiper-node ekuiper printed no report within 60 s; output:\n{}",
                    log.lock().unwrap()
                )
            }
        };
        Supervised {
            ports,
            child,
            report,
            log,
        }
    }

    /// eKuiper's REST base URL.
    pub fn rest(&self) -> String {
        self.ports.rest_url()
    }

    /// The output so far.
    pub fn output(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Sends `sig` to kuiper-node and waits for it to exit (30 s at most); returns its exit status.
    pub async fn signal_and_wait(&mut self, sig: i32) -> std::process::ExitStatus {
        let pid = self.child.id().expect("running") as i32;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, sig) };
        self.wait().await
    }

    /// Waits for kuiper-node to exit (30 s at most).
    pub async fn wait(&mut self) -> std::process::ExitStatus {
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(s) => s.expect("wait"),
            Err(_) => panic!(
                "kuiper-node did not exit within 30 s; output:\n{}",
                self.output()
            ),
        }
    }

    /// Stops the node (SIGTERM to kuiper-node, which passes it on) and asserts a clean exit.
    pub async fn stop(mut self) -> String {
        let status = self.signal_and_wait(libc::SIGTERM).await;
        let out = self.output();
        assert!(status.success(), "node exit {status}; output:\n{out}");
        out
    }
}

fn push(log: &std::sync::Mutex<String>, line: &str) {
    let mut l = log.lock().unwrap();
    l.push_str(line);
    l.push('\n');
}

/// `GET {base}{path}` on an eKuiper node: status and JSON body (`Null` when not JSON).
pub async fn ek_get(http: &reqwest::Client, base: &str, path: &str) -> (u16, Value) {
    let r = http
        .get(format!("{base}{path}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {base}{path}: {e}"));
    let status = r.status().as_u16();
    let text = r.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// `POST {base}{path}` with a JSON body on an eKuiper node; asserts 2xx.
pub async fn ek_post(http: &reqwest::Client, base: &str, path: &str, body: Value) -> String {
    let r = http
        .post(format!("{base}{path}"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {base}{path}: {e}"));
    let status = r.status();
    let text = r.text().await.expect("body");
    assert!(status.is_success(), "POST {path}: {status}: {text}");
    text
}

/// The names eKuiper lists for `ty` (`GET /plugins/{ty}`).
pub async fn ek_list(http: &reqwest::Client, base: &str, ty: &str) -> Vec<String> {
    let (status, v) = ek_get(http, base, &format!("/plugins/{ty}")).await;
    assert_eq!(status, 200, "list {ty}: {v}");
    let mut names: Vec<String> = serde_json::from_value(v).unwrap_or_default();
    names.sort();
    names
}

/// Waits until `path` holds a JSON line that `want` accepts (20 s at most); returns it.
pub async fn wait_for_record(path: &Path, what: &str, want: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if let Some(v) = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| want(v))
        {
            return v;
        }
        if Instant::now() > deadline {
            panic!(
                "no record {what} in {} within 20 s; it holds:\n{text}",
                path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The rig's Go plugins, zipped as a publisher would.
pub mod zips {
    use super::*;

    /// Source `ticker` (`Ticker@v{version}.so`) from the rig's build `set`
    /// (`v1` or `v2`), with its yaml, a UI json and an `etc/` file.
    pub fn ticker(set: &str, version: &str) -> Vec<u8> {
        let rig = blocking(Rig::get);
        ZipBuilder::new()
            .file(
                &format!("Ticker@v{version}.so"),
                rig.plugin_bytes(set, "sources/Ticker.so"),
            )
            .file(
                "ticker.yaml",
                std::fs::read(rig.plugin("v1", "etc/sources/ticker.yaml")).expect("ticker.yaml"),
            )
            .file("ticker.json", "{\"about\":{\"trial\":true}}")
            .file("etc/extra.txt", "extra")
            .build()
    }

    /// Sink `linefile` from the rig's build `set` (`v1`, or `notrim`: built
    /// without `-trimpath`, which stock eKuiper cannot open).
    pub fn linefile(set: &str) -> Vec<u8> {
        let rig = blocking(Rig::get);
        ZipBuilder::new()
            .file(
                "Linefile@v1.0.0.so",
                rig.plugin_bytes(set, "sinks/Linefile.so"),
            )
            .build()
    }

    /// Function plugin `shout` (functions `shout` and `whisper`).
    pub fn shout() -> Vec<u8> {
        let rig = blocking(Rig::get);
        ZipBuilder::new()
            .file(
                "Shout@v1.0.0.so",
                rig.plugin_bytes("v1", "functions/Shout.so"),
            )
            .build()
    }
}

/// Publishes the three example plugins (ticker v1, linefile, shout).
pub async fn publish_all(stack: &Stack) {
    stack
        .publish("sources", "ticker", zips::ticker("v1", "1.0.0"), json!({}))
        .await;
    stack
        .publish("sinks", "linefile", zips::linefile("v1"), json!({}))
        .await;
    stack
        .publish(
            "functions",
            "shout",
            zips::shout(),
            json!({"functions": ["shout", "whisper"]}),
        )
        .await;
}

/// Creates stream `tick` over the ticker source and rule `r1` through the
/// function plugin into the sink, writing to `out`.
pub async fn create_rule(http: &reqwest::Client, rest: &str, out: &Path) {
    ek_post(
        http,
        rest,
        "/streams",
        json!({"sql": "CREATE STREAM tick () WITH (TYPE=\"ticker\", FORMAT=\"json\")"}),
    )
    .await;
    ek_post(
        http,
        rest,
        "/rules",
        json!({
            "id": "r1",
            "sql": "SELECT n, shout(message) AS loud, whisper(\"QUIET\") AS soft, version FROM tick",
            "actions": [{"linefile": {"path": out.display().to_string()}}]
        }),
    )
    .await;
}
