//! Shared set-up: a real `plugin-api` router served on 127.0.0.1:0 over a
//! local store, the in-process S3 server or MinIO, a wiremock file host and
//! callback sink, and an HTTP client.

use std::path::PathBuf;

use kuiper_harness::callbacks::CallbackSink;
use kuiper_harness::files::FileHost;
use kuiper_harness::minio::{Minio, MINIO_ACCESS_KEY, MINIO_REGION, MINIO_SECRET_KEY};
use kuiper_harness::plugins::example_so;
use kuiper_harness::s3::{S3Server, ACCESS_KEY, REGION, SECRET_KEY};
use kuiper_harness::zips::ZipBuilder;
use kuiper_registry::config::ServiceConfig;
use kuiper_registry::package::uc_first;
use kuiper_registry::server::build_app;
use kuiper_registry::store::local::LocalStore;
use kuiper_registry::store::s3::{S3Settings, S3Store};
use kuiper_registry::store::{Condition, Store};
use serde_json::Value;
use tokio::task::JoinHandle;

/// Which store the service runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A local store directory.
    Local,
    /// The in-process S3 server (fault injection, request counters).
    S3,
    /// A bucket of the test binary's MinIO server ([`Minio::shared`]).
    Minio,
}

/// A running service and its peers.
pub struct TestEnv {
    pub backend: Backend,
    pub base: String,
    pub http: reqwest::Client,
    pub files: FileHost,
    pub callbacks: CallbackSink,
    pub s3: Option<S3Server>,
    /// The MinIO server and bucket ([`Backend::Minio`]).
    pub minio: Option<(&'static Minio, String)>,
    /// Another endpoint to reach MinIO through (a proxy of the test's), used
    /// from the next [`TestEnv::restart`] on.
    pub minio_via: Option<String>,
    pub tmp: tempfile::TempDir,
    pub extra_args: Vec<String>,
    server: Option<JoinHandle<()>>,
}

/// A response: status, content type, body text.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// The `message` of a JSON error, after checking its shape.
    pub fn error_message(&self) -> String {
        assert!(
            self.content_type.starts_with("application/json"),
            "error answers are JSON, got {} {:?}: {}",
            self.status,
            self.content_type,
            self.body
        );
        let v = self.json();
        assert!(v["error"].is_u64(), "error code missing: {}", self.body);
        v["message"].as_str().expect("message").to_string()
    }
}

impl TestEnv {
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(backend, &[]).await
    }

    pub async fn start_with(backend: Backend, extra_args: &[&str]) -> Self {
        Self::start_inner(backend, extra_args, Minio::shared).await
    }

    /// A service on a fresh bucket of `minio`, a server of the test's own
    /// (one it may stop and restart).
    pub async fn start_on_minio(minio: &'static Minio) -> Self {
        Self::start_inner(Backend::Minio, &[], || minio).await
    }

    async fn start_inner(
        backend: Backend,
        extra_args: &[&str],
        minio_server: impl FnOnce() -> &'static Minio,
    ) -> Self {
        let tmp = tempfile::tempdir().expect("tmp");
        let s3 = match backend {
            Backend::S3 => Some(S3Server::start("plugins").await),
            Backend::Local | Backend::Minio => None,
        };
        let minio = match backend {
            Backend::Minio => {
                let server = minio_server();
                Some((server, server.new_bucket().await))
            }
            Backend::Local | Backend::S3 => None,
        };
        let mut env = TestEnv {
            backend,
            base: String::new(),
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("client"),
            files: FileHost::start().await,
            callbacks: CallbackSink::start().await,
            s3,
            minio,
            minio_via: None,
            tmp,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            server: None,
        };
        env.launch().await;
        env
    }

    /// The local store root, or the in-process S3 server's bucket directory:
    /// where the objects are (not for MinIO: use the object helpers below).
    pub fn objects_dir(&self) -> PathBuf {
        match &self.s3 {
            Some(s3) => s3.bucket_dir(),
            None => self.tmp.path().join("store"),
        }
    }

    /// The local store the service runs on ([`Backend::Local`]).
    pub fn local_store(&self) -> LocalStore {
        LocalStore::new(self.tmp.path().join("store")).expect("local store")
    }

    /// Reads the object `key` through the store, behind the service's back.
    pub async fn read_object(&self, key: &str) -> Option<Vec<u8>> {
        let out = self
            .tmp
            .path()
            .join(format!("read-{}", uuid::Uuid::new_v4()));
        let found = match self.backend {
            Backend::Local => self.local_store().get_to_file(key, &out).await,
            Backend::S3 | Backend::Minio => self.s3_store().await.get_to_file(key, &out).await,
        }
        .unwrap_or_else(|e| panic!("read {key}: {e}"));
        let bytes = found.then(|| std::fs::read(&out).expect("read back"));
        let _ = std::fs::remove_file(&out);
        bytes
    }

    /// Writes `body` at `key` through the store, as an earlier version, an
    /// operator or a dying process would have left it.
    pub async fn write_object(&self, key: &str, body: Vec<u8>) {
        let body = bytes::Bytes::from(body);
        match self.backend {
            Backend::Local => self.local_store().put(key, body, Condition::None).await,
            Backend::S3 | Backend::Minio => {
                self.s3_store().await.put(key, body, Condition::None).await
            }
        }
        .unwrap_or_else(|e| panic!("write {key}: {e}"));
    }

    /// Deletes `key` through the store, behind the service's back.
    pub async fn delete_object(&self, key: &str) {
        match self.backend {
            Backend::Local => self.local_store().delete(key).await,
            Backend::S3 | Backend::Minio => self.s3_store().await.delete(key).await,
        }
        .unwrap_or_else(|e| panic!("delete {key}: {e}"));
    }

    pub fn config(&self) -> ServiceConfig {
        let store = self.tmp.path().join("store");
        let mut args = vec![
            "--store".to_string(),
            store.display().to_string(),
            "--tmp-dir".to_string(),
            self.tmp.path().display().to_string(),
        ];
        if !self
            .extra_args
            .iter()
            .any(|a| a == "--allow-private-network")
        {
            args.extend(["--allow-private-network".to_string(), "true".to_string()]);
        }
        args.extend(self.extra_args.iter().cloned());
        ServiceConfig::from_args(args).expect("config")
    }

    /// A client of the S3 store the service runs on (the in-process server
    /// or MinIO), key prefix `registry`.
    pub async fn s3_store(&self) -> S3Store {
        let settings = match (&self.s3, &self.minio) {
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
                endpoint: Some(self.minio_via.clone().unwrap_or_else(|| minio.endpoint())),
                region: Some(MINIO_REGION.into()),
                credentials: Some((MINIO_ACCESS_KEY.into(), MINIO_SECRET_KEY.into())),
                allow_unsafe: false,
            },
            (None, None) => panic!("not an S3 backend"),
        };
        S3Store::new(settings).await
    }

    async fn launch(&mut self) {
        let config = self.config();
        std::fs::create_dir_all(self.tmp.path().join("store")).expect("store dir");
        let app = match self.backend {
            Backend::Local => build_app(
                LocalStore::new(self.tmp.path().join("store")).expect("local store"),
                &config,
            ),
            Backend::S3 | Backend::Minio => build_app(self.s3_store().await, &config),
        }
        .expect("app");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        self.base = format!("http://{}", listener.local_addr().expect("addr"));
        self.server = Some(tokio::spawn(async move {
            axum::serve(listener, app).await.expect("serve");
        }));
    }

    /// Stops the service and starts a new one over the same store.
    pub async fn restart(&mut self) {
        if let Some(h) = self.server.take() {
            h.abort();
            let _ = h.await;
        }
        self.launch().await;
    }

    pub async fn request(&self, method: reqwest::Method, path: &str, body: Option<String>) -> Resp {
        self.request_auth(method, path, body, None).await
    }

    /// A request with an `Authorization` header value.
    pub async fn request_auth(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<String>,
        authorization: Option<&str>,
    ) -> Resp {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(a) = authorization {
            req = req.header("authorization", a);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = resp.text().await.expect("body");
        Resp {
            status,
            content_type,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.request(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Resp {
        self.request(reqwest::Method::POST, path, Some(body.to_string()))
            .await
    }

    pub async fn post_raw(&self, path: &str, body: &str) -> Resp {
        self.request(reqwest::Method::POST, path, Some(body.to_string()))
            .await
    }

    pub async fn put(&self, path: &str, body: Value) -> Resp {
        self.request(reqwest::Method::PUT, path, Some(body.to_string()))
            .await
    }

    pub async fn delete(&self, path: &str) -> Resp {
        self.request(reqwest::Method::DELETE, path, None).await
    }

    /// Serves a valid zip for plugin `name` of `ty` at `/{ty}/{name}.zip`; returns its URL.
    pub async fn serve_plugin(&self, ty: &str, name: &str) -> String {
        self.files
            .serve(
                &format!("/{ty}/{name}.zip"),
                plugin_zip(ty, name, &format!("{}.so", uc_first(name))),
            )
            .await
    }

    /// Creates plugin `name` of `ty` from a served valid zip, asserting 201.
    pub async fn create_ok(&self, ty: &str, name: &str) {
        let url = self.serve_plugin(ty, name).await;
        let r = self
            .post(
                &format!("/plugins/{ty}"),
                serde_json::json!({"name": name, "file": url}),
            )
            .await;
        assert_eq!(r.status, 201, "create {ty}/{name}: {}", r.body);
    }

    pub async fn list(&self, ty: &str) -> Vec<String> {
        let r = self.get(&format!("/plugins/{ty}")).await;
        assert_eq!(r.status, 200, "{}", r.body);
        serde_json::from_str(&r.body).expect("list json")
    }

    /// Every object of the store (keys without the S3 prefix, the local
    /// store's own `.tmp/` left out), sorted.
    pub async fn stored_files(&self) -> Vec<String> {
        if self.backend != Backend::Local {
            return self
                .s3_store()
                .await
                .list("")
                .await
                .expect("list the store")
                .into_iter()
                .map(|l| l.key)
                .collect();
        }
        let root = self.objects_dir();
        let mut out = Vec::new();
        let mut stack = vec![root.clone()];
        while let Some(d) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in rd.flatten() {
                let p = e.path();
                let rel = p.strip_prefix(&root).unwrap().to_string_lossy().to_string();
                if rel.starts_with('.') || rel.contains("/.") {
                    continue;
                }
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.push(rel);
                }
            }
        }
        out.sort();
        out
    }

    /// Stored zips (keys under `blobs/`).
    pub async fn stored_blobs(&self) -> Vec<String> {
        self.stored_files()
            .await
            .into_iter()
            .filter(|f| f.starts_with("blobs/"))
            .collect()
    }
}

/// A real shared library (the example plugin of the same type).
pub fn real_so(ty: &str) -> Vec<u8> {
    match ty {
        "sources" => example_so("random"),
        "sinks" => example_so("print"),
        _ => example_so("echo"),
    }
}

/// A valid zip for `name` of `ty` with the library named `so_name`.
pub fn plugin_zip(ty: &str, name: &str, so_name: &str) -> Vec<u8> {
    let mut z = ZipBuilder::new().file(so_name, real_so(ty));
    if ty == "sources" {
        z = z.file(&format!("{name}.yaml"), "default:\n  interval: 1000\n");
    }
    z.build()
}

/// Runs each listed scenario `async fn name(env: TestEnv)` against every
/// store: local, the in-process S3 server and MinIO.
#[macro_export]
macro_rules! both_stores {
    ($($name:ident),* $(,)?) => {
        mod minio_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let env = $crate::common::TestEnv::start($crate::common::Backend::Minio).await;
                    super::$name(env).await;
                }
            )*
        }
        mod local_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let env = $crate::common::TestEnv::start($crate::common::Backend::Local).await;
                    super::$name(env).await;
                }
            )*
        }
        mod s3_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let env = $crate::common::TestEnv::start($crate::common::Backend::S3).await;
                    super::$name(env).await;
                }
            )*
        }
    };
}
