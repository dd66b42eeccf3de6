//! A real MinIO server on 127.0.0.1, from the rig (see [`crate::rig`]).
//!
//! [`Minio::shared`] is one server per test binary (tests take a fresh bucket
//! each with [`Minio::new_bucket`]); [`Minio::start`] is a server of the
//! caller's own, which it can stop and start again over the same data
//! directory (outage tests).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::rig::{free_port, spawn_detached, Rig};

/// MinIO's root user, the access key clients sign with.
pub const MINIO_ACCESS_KEY: &str = "kuiper-rig-admin";
/// MinIO's root password, the secret key.
pub const MINIO_SECRET_KEY: &str = "kuiper-rig-secret-0123456789";
/// The region clients sign for (MinIO's default).
pub const MINIO_REGION: &str = "us-east-1";

/// A MinIO server process with its own data directory.
pub struct Minio {
    dir: tempfile::TempDir,
    port: u16,
    console_port: u16,
    child: Mutex<Option<Child>>,
}

impl std::fmt::Debug for Minio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minio").field("port", &self.port).finish()
    }
}

impl Minio {
    /// One server for the whole test binary, started on first use.
    pub fn shared() -> &'static Minio {
        static SHARED: OnceLock<Minio> = OnceLock::new();
        SHARED.get_or_init(Minio::start)
    }

    /// A new server of the caller's own (stopped when dropped).
    pub fn start() -> Minio {
        let mut last = String::new();
        // A free port can be taken by another process before MinIO binds it.
        for attempt in 0..5 {
            let m = Minio {
                dir: tempfile::Builder::new()
                    .prefix("minio-")
                    .tempdir()
                    .expect("tmp"),
                port: free_port(),
                console_port: free_port(),
                child: Mutex::new(None),
            };
            match m.launch() {
                Ok(()) => return m,
                Err(e) => {
                    eprintln!("minio start attempt {attempt}: {e}");
                    last = e;
                }
            }
        }
        panic!("MinIO did not start: {last}")
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// MinIO's log (stdout and stderr of every start).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("minio.log")
    }

    /// The log's text.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn launch(&self) -> Result<(), String> {
        std::fs::create_dir_all(self.data_dir()).map_err(|e| e.to_string())?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| e.to_string())?;
        let mut cmd = Command::new(Rig::get().minio());
        cmd.arg("server")
            .arg(self.data_dir())
            .args(["--quiet", "--address"])
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--console-address")
            .arg(format!("127.0.0.1:{}", self.console_port))
            .env("MINIO_ROOT_USER", MINIO_ACCESS_KEY)
            .env("MINIO_ROOT_PASSWORD", MINIO_SECRET_KEY)
            .env("MINIO_BROWSER", "off")
            .env("MINIO_UPDATE", "off")
            .env("HOME", self.dir.path())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(Stdio::from(log));
        let mut child = spawn_detached(cmd).map_err(|e| format!("cannot run minio: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                return Err(format!("minio exited ({status}):\n{}", self.log()));
            }
            if health(self.port) {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("minio not live after 30 s:\n{}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        *self.child.lock().unwrap() = Some(child);
        Ok(())
    }

    /// Kills the server (the data directory stays).
    pub fn stop(&self) {
        if let Some(mut c) = self.child.lock().unwrap().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port and data.
    pub fn restart(&self) {
        self.stop();
        self.launch()
            .unwrap_or_else(|e| panic!("MinIO did not restart: {e}"));
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// An S3 client signed with the root credentials.
    pub fn client(&self) -> aws_sdk_s3::Client {
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version_latest()
            .region(aws_sdk_s3::config::Region::new(MINIO_REGION))
            .endpoint_url(self.endpoint())
            .force_path_style(true)
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                MINIO_ACCESS_KEY,
                MINIO_SECRET_KEY,
                None,
                None,
                "kuiper-rig",
            ))
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }

    /// Creates bucket `name`.
    pub async fn create_bucket(&self, name: &str) {
        self.client()
            .create_bucket()
            .bucket(name)
            .send()
            .await
            .unwrap_or_else(|e| panic!("create bucket {name}: {e:?}\n{}", self.log()));
    }

    /// Creates a bucket with a name no other test of this process uses, and returns it.
    pub async fn new_bucket(&self) -> String {
        static N: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "t{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        self.create_bucket(&name).await;
        name
    }
}

impl Drop for Minio {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether MinIO on `port` answers its liveness probe.
fn health(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = format!(
        "GET /minio/health/live HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    );
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"HTTP/1.1 200"))
}
