//! Set-up for the node agent's end-to-end tests: the real `plugin-api` router
//! on 127.0.0.1:0 over a local store, the harness S3 server or MinIO, a file host the
//! registry downloads zips from, a node directory, and the real `kuiper-node`
//! binary run against the same store.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};

use kuiper_harness::files::FileHost;
use kuiper_harness::minio::{Minio, MINIO_ACCESS_KEY, MINIO_REGION, MINIO_SECRET_KEY};
use kuiper_harness::plugins::{example_so, CPlugin};
use kuiper_harness::s3::{S3Server, ACCESS_KEY, REGION, SECRET_KEY};
use kuiper_harness::zips::ZipBuilder;
use kuiper_registry::config::ServiceConfig;
use kuiper_registry::server::build_app;
use kuiper_registry::store::local::LocalStore;
use kuiper_registry::store::s3::{S3Settings, S3Store};
use kuiper_registry::store::{Condition, Store as _};
use serde_json::{json, Value};
use tokio::process::Command;

pub const NODE: &str = env!("CARGO_BIN_EXE_kuiper-node");

/// Which store the registry (and so the node) uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A local store directory.
    Local,
    /// The in-process S3 server (fault injection, request counters).
    S3,
    /// A bucket of the test binary's MinIO server ([`Minio::shared`]).
    Minio,
}

/// The registry service, its store, and one node directory.
pub struct Env {
    base: String,
    http: reqwest::Client,
    files: FileHost,
    pub s3: Option<S3Server>,
    /// The MinIO server and bucket ([`Backend::Minio`]).
    pub minio: Option<(&'static Minio, String)>,
    tmp: tempfile::TempDir,
    server: tokio::task::JoinHandle<()>,
}

/// What one `kuiper-node` run showed.
#[derive(Debug)]
pub struct NodeRun {
    pub status: ExitStatus,
    pub report: Value,
    pub stderr: String,
}

impl NodeRun {
    /// `[{type,name,version}]` of one list as `"type/name@version"` strings, sorted.
    pub fn list(&self, which: &str) -> Vec<String> {
        let items = self.report[which]
            .as_array()
            .unwrap_or_else(|| panic!("{which} missing in {}", self.report));
        let mut out: Vec<String> = items
            .iter()
            .map(|i| {
                format!(
                    "{}/{}@{}",
                    i["type"].as_str().unwrap(),
                    i["name"].as_str().unwrap(),
                    i["version"].as_str().unwrap()
                )
            })
            .collect();
        out.sort();
        out
    }

    /// The `failed` entries as `(type/name, error)`, sorted.
    pub fn failures(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self.report["failed"]
            .as_array()
            .expect("failed")
            .iter()
            .map(|f| {
                (
                    format!(
                        "{}/{}",
                        f["type"].as_str().unwrap(),
                        f["name"].as_str().unwrap()
                    ),
                    f["error"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        out.sort();
        out
    }

    /// The error reported for `type/name`.
    pub fn error_of(&self, plugin: &str) -> String {
        self.failures()
            .into_iter()
            .find(|(p, _)| p == plugin)
            .unwrap_or_else(|| panic!("{plugin} is not in failed: {}", self.report))
            .1
    }

    pub fn assert_ok(&self) {
        assert!(
            self.status.success(),
            "kuiper-node failed ({}): {}\nstderr:\n{}",
            self.status,
            self.report,
            self.stderr
        );
        assert_eq!(self.report["failed"], json!([]), "{}", self.report);
    }

    pub fn assert_failed(&self) {
        assert_eq!(
            self.status.code(),
            Some(1),
            "kuiper-node must exit 1: {}\nstderr:\n{}",
            self.report,
            self.stderr
        );
    }
}

impl Env {
    pub async fn start(backend: Backend) -> Self {
        let tmp = tempfile::tempdir().expect("tmp");
        let store_dir = tmp.path().join("store");
        std::fs::create_dir_all(&store_dir).expect("store dir");
        let config = ServiceConfig::from_args([
            "--store".to_string(),
            store_dir.display().to_string(),
            "--tmp-dir".to_string(),
            tmp.path().display().to_string(),
            // The file host is on loopback.
            "--allow-private-network".to_string(),
            "true".to_string(),
        ])
        .expect("config");
        let s3 = match backend {
            Backend::S3 => Some(S3Server::start("plugins").await),
            Backend::Local | Backend::Minio => None,
        };
        let minio = match backend {
            Backend::Minio => {
                let server = Minio::shared();
                Some((server, server.new_bucket().await))
            }
            Backend::Local | Backend::S3 => None,
        };
        let app = match s3_settings(&s3, &minio) {
            None => build_app(LocalStore::new(&store_dir).expect("local store"), &config),
            Some(settings) => build_app(S3Store::new(settings).await, &config),
        }
        .expect("app");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("serve");
        });
        Env {
            base,
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("client"),
            files: FileHost::start().await,
            s3,
            minio,
            tmp,
            server,
        }
    }

    /// The node's directory (created by the first sync).
    pub fn root(&self) -> PathBuf {
        self.tmp.path().join("node")
    }

    /// A scratch directory for the test (outside the node and the store).
    pub fn scratch(&self) -> PathBuf {
        let p = self.tmp.path().join("scratch");
        std::fs::create_dir_all(&p).expect("scratch");
        p
    }

    /// Whether the store is an S3 bucket (the in-process server or MinIO).
    pub fn is_s3(&self) -> bool {
        self.s3.is_some() || self.minio.is_some()
    }

    /// The `--store` value for the node.
    pub fn store_arg(&self) -> String {
        match (&self.s3, &self.minio) {
            (Some(s3), _) => format!("s3://{}/registry", s3.bucket()),
            (None, Some((_, bucket))) => format!("s3://{bucket}/registry"),
            (None, None) => self.tmp.path().join("store").display().to_string(),
        }
    }

    /// The local store's directory (`None` for S3).
    pub fn local_store_dir(&self) -> Option<PathBuf> {
        (!self.is_s3()).then(|| self.tmp.path().join("store"))
    }

    /// The S3 store as the node opens it (`None` for the local store).
    pub async fn s3_store(&self) -> Option<S3Store> {
        Some(S3Store::new(s3_settings(&self.s3, &self.minio)?).await)
    }

    /// Reads the object `key` through the store (it must exist).
    pub async fn read_object(&self, key: &str) -> Vec<u8> {
        let obj = match self.s3_store().await {
            Some(s3) => s3.get(key).await,
            None => self.local_store().get(key).await,
        }
        .unwrap_or_else(|e| panic!("read {key}: {e}"));
        obj.unwrap_or_else(|| panic!("{key} is not stored"))
            .body
            .to_vec()
    }

    /// Writes `body` at `key` through the store, behind the registry's back
    /// (as an earlier version or an operator may have left it).
    pub async fn write_object(&self, key: &str, body: impl Into<Vec<u8>>) {
        let body = bytes::Bytes::from(body.into());
        match self.s3_store().await {
            Some(s3) => s3.put(key, body, Condition::None).await,
            None => self.local_store().put(key, body, Condition::None).await,
        }
        .unwrap_or_else(|e| panic!("write {key}: {e}"));
    }

    fn local_store(&self) -> LocalStore {
        LocalStore::new(self.tmp.path().join("store")).expect("local store")
    }

    /// Whether the S3 store's listing of `plugins/` carries the entity tags of
    /// the metadata objects (AWS S3 and MinIO list them). A node reads no
    /// metadata of unchanged plugins only then.
    pub async fn listing_has_tags(&self) -> bool {
        let Some(store) = self.s3_store().await else {
            return false;
        };
        let listed = store.list("plugins/").await.expect("list plugins/");
        !listed.is_empty() && listed.iter().all(|l| l.etag.is_some())
    }

    /// The key of the zip of plugin `name` of `ty`: the one its stored
    /// metadata names in `blob`.
    pub async fn blob_key(&self, ty: &str, name: &str) -> String {
        let meta: Value =
            serde_json::from_slice(&self.read_object(&format!("plugins/{ty}/{name}.json")).await)
                .expect("stored metadata is JSON");
        meta["blob"]
            .as_str()
            .expect("metadata names its zip")
            .to_string()
    }

    /// Publishes plugin `name` of `ty` from `zip`, with extra request fields; asserts 201.
    pub async fn publish_with(&self, ty: &str, name: &str, zip: Vec<u8>, extra: Value) {
        let url = self.serve(ty, name, zip).await;
        let mut body = json!({"name": name, "file": url});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        let r = self
            .send(reqwest::Method::POST, &format!("/plugins/{ty}"), Some(body))
            .await;
        assert_eq!(r.0, 201, "create {ty}/{name}: {}", r.1);
    }

    pub async fn publish(&self, ty: &str, name: &str, zip: Vec<u8>) {
        self.publish_with(ty, name, zip, json!({})).await
    }

    /// Replaces plugin `name` of `ty` with `zip`; asserts 200.
    pub async fn update(&self, ty: &str, name: &str, zip: Vec<u8>) {
        let url = self.serve(ty, &format!("{name}-update"), zip).await;
        let r = self
            .send(
                reqwest::Method::PUT,
                &format!("/plugins/{ty}/{name}"),
                Some(json!({"name": name, "file": url})),
            )
            .await;
        assert_eq!(r.0, 200, "update {ty}/{name}: {}", r.1);
    }

    /// Deletes plugin `name` of `ty` from the registry; asserts 200.
    pub async fn drop_plugin(&self, ty: &str, name: &str) {
        let r = self
            .send(
                reqwest::Method::DELETE,
                &format!("/plugins/{ty}/{name}"),
                None,
            )
            .await;
        assert_eq!(r.0, 200, "delete {ty}/{name}: {}", r.1);
    }

    /// `GET path` on the registry: status and JSON body.
    pub async fn api_get(&self, path: &str) -> (u16, Value) {
        let (status, body) = self.send(reqwest::Method::GET, path, None).await;
        let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"));
        (status, v)
    }

    /// The registry's metadata of a plugin.
    pub async fn meta(&self, ty: &str, name: &str) -> Value {
        let r = self
            .send(reqwest::Method::GET, &format!("/plugins/{ty}/{name}"), None)
            .await;
        assert_eq!(r.0, 200, "describe {ty}/{name}: {}", r.1);
        serde_json::from_str(&r.1).expect("metadata json")
    }

    async fn serve(&self, ty: &str, name: &str, zip: Vec<u8>) -> String {
        self.files
            .serve(&format!("/{ty}/{name}-{}.zip", zip_tag(&zip)), zip)
            .await
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, String) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        (status, resp.text().await.expect("body"))
    }

    /// The `kuiper-node` command with a clean environment: the S3 settings
    /// when the store is S3, nothing else from the test's environment.
    pub fn node_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(NODE);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let aws = match (&self.s3, &self.minio) {
            (Some(s3), _) => Some((s3.endpoint().to_string(), ACCESS_KEY, SECRET_KEY, REGION)),
            (None, Some((minio, _))) => Some((
                minio.endpoint(),
                MINIO_ACCESS_KEY,
                MINIO_SECRET_KEY,
                MINIO_REGION,
            )),
            (None, None) => None,
        };
        if let Some((endpoint, access_key, secret_key, region)) = aws {
            cmd.env("AWS_ENDPOINT_URL_S3", endpoint)
                .env("AWS_ACCESS_KEY_ID", access_key)
                .env("AWS_SECRET_ACCESS_KEY", secret_key)
                .env("AWS_REGION", region)
                .env("AWS_EC2_METADATA_DISABLED", "true")
                .env("AWS_CONFIG_FILE", self.tmp.path().join("no-aws-config"))
                .env(
                    "AWS_SHARED_CREDENTIALS_FILE",
                    self.tmp.path().join("no-aws-credentials"),
                );
        }
        cmd
    }

    /// Runs `kuiper-node {command} --store S --root R {extra...}` to its end.
    pub async fn node(&self, command: &str, extra: &[&str]) -> NodeRun {
        let store = self.store_arg();
        let root = self.root().display().to_string();
        let mut args = vec![command, "--store", &store, "--root", &root];
        args.extend_from_slice(extra);
        self.node_with_args(&args).await
    }

    pub async fn node_with_args(&self, args: &[&str]) -> NodeRun {
        let out = self
            .node_command(args)
            .output()
            .await
            .expect("run kuiper-node");
        parse_run(out)
    }

    /// `kuiper-node run --once`.
    pub async fn run_once(&self, extra: &[&str]) -> NodeRun {
        let mut args = vec!["--once"];
        args.extend_from_slice(extra);
        self.node("run", &args).await
    }

    /// `kuiper-node sync`.
    pub async fn sync(&self, extra: &[&str]) -> NodeRun {
        self.node("sync", extra).await
    }

    /// Every file under the node directory (relative paths), sorted, without
    /// the agent's own `.kuiper-node/` directory.
    pub fn node_files(&self) -> Vec<String> {
        files_under(&self.root())
            .into_iter()
            .filter(|f| !f.starts_with(".kuiper-node/"))
            .collect()
    }

    /// Reads a file of the node directory.
    pub fn node_file(&self, rel: &str) -> Vec<u8> {
        let p = self.root().join(rel);
        std::fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Parses a finished run: exactly one JSON document on stdout.
pub fn parse_run(out: std::process::Output) -> NodeRun {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "stdout must be one JSON report; {}, got:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    let report: Value = serde_json::from_str(lines[0])
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {stdout}\nstderr:\n{stderr}"));
    NodeRun {
        status: out.status,
        report,
        stderr,
    }
}

/// A short content tag so that different zips get different URLs.
fn zip_tag(zip: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in zip {
        h = (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Every file under `dir` (relative, `/`-separated), sorted.
pub fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

/// The example libraries: `random` (source), `print` (sink), `echo` (function).
pub fn lib(name: &str) -> Vec<u8> {
    example_so(name)
}

/// A C plugin library (ABI v1) exporting `uc_first(name)`.
pub fn c_lib(name: &str, kind: u32, version: &str) -> Vec<u8> {
    CPlugin::new(name, kind, version).so()
}

/// The source `random`: library, its yaml, a json and an `etc/` tree.
pub fn random_zip() -> Vec<u8> {
    ZipBuilder::new()
        .file("Random.so", lib("random"))
        .file("random.yaml", "default:\n  interval: 1000\n")
        .file("random.json", "{\"about\":{\"trial\":false}}")
        .file("etc/conf/extra.txt", "extra")
        .build()
}

/// A zip holding only the library `so_name`.
pub fn so_zip(so_name: &str, so: Vec<u8>) -> Vec<u8> {
    ZipBuilder::new().file(so_name, so).build()
}

/// Runs each listed scenario `async fn name(env: Env)` on every store:
/// local, the in-process S3 server and MinIO.
#[macro_export]
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod minio_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Env::start($crate::common::Backend::Minio).await).await;
                }
            )*
        }
        mod local_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Env::start($crate::common::Backend::Local).await).await;
                }
            )*
        }
        mod s3_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Env::start($crate::common::Backend::S3).await).await;
                }
            )*
        }
    };
}

/// How the service and the node reach the harness bucket or MinIO's (key
/// prefix `registry`); `None` for the local store.
fn s3_settings(
    s3: &Option<S3Server>,
    minio: &Option<(&'static Minio, String)>,
) -> Option<S3Settings> {
    Some(match (s3, minio) {
        (Some(s3), _) => S3Settings {
            bucket: s3.bucket().to_string(),
            prefix: "registry".into(),
            endpoint: Some(s3.endpoint().to_string()),
            region: Some(REGION.into()),
            credentials: Some((ACCESS_KEY.into(), SECRET_KEY.into())),
            allow_unsafe: false,
        },
        (None, Some((minio, bucket))) => S3Settings {
            bucket: bucket.clone(),
            prefix: "registry".into(),
            endpoint: Some(minio.endpoint()),
            region: Some(MINIO_REGION.into()),
            credentials: Some((MINIO_ACCESS_KEY.into(), MINIO_SECRET_KEY.into())),
            allow_unsafe: false,
        },
        (None, None) => return None,
    })
}
