//! A stock eKuiper node (the rig's `kuiperd`, v2.4.0) on 127.0.0.1.
//!
//! Each node has a base directory of its own, copied from the rig's empty one
//! ([`new_base`]), and is configured the way eKuiper documents, by
//! `KUIPER__SECTION__KEY` environment variables ([`node_env`]): both of its
//! ports on loopback, pprof off (it would take 127.0.0.1:6060 on every node),
//! the log on the console. A node that exits or does not answer `/ping`
//! within 30 s is a panic that shows its log.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::rig::{free_port, http_status, spawn_detached, Rig};

/// Copies the rig's empty eKuiper base directory to `dest` (which must not exist).
pub fn new_base(dest: &Path) -> PathBuf {
    let out = Command::new("cp")
        .arg("-R")
        .arg(Rig::get().base())
        .arg(dest)
        .output()
        .expect("cp");
    assert!(
        out.status.success(),
        "copy base: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dest.to_path_buf()
}

/// The two ports of a node.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    /// `basic.restPort`: the REST API.
    pub rest: u16,
    /// `basic.port`: the CLI's RPC port.
    pub rpc: u16,
}

impl Ports {
    /// Two free loopback ports.
    pub fn free() -> Ports {
        Ports {
            rest: free_port(),
            rpc: free_port(),
        }
    }

    /// `http://127.0.0.1:{rest}`.
    pub fn rest_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.rest)
    }
}

/// The environment that configures a node with base directory `base` on `ports`.
pub fn node_env(base: &Path, ports: Ports) -> Vec<(String, String)> {
    [
        ("KuiperBaseKey", base.display().to_string()),
        ("KUIPER__BASIC__IP", "127.0.0.1".into()),
        ("KUIPER__BASIC__PORT", ports.rpc.to_string()),
        ("KUIPER__BASIC__RESTIP", "127.0.0.1".into()),
        ("KUIPER__BASIC__RESTPORT", ports.rest.to_string()),
        ("KUIPER__BASIC__PPROF", "false".into()),
        ("KUIPER__BASIC__CONSOLELOG", "true".into()),
        ("KUIPER__BASIC__FILELOG", "false".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// A running kuiperd (killed when dropped).
#[derive(Debug)]
pub struct Kuiperd {
    base: PathBuf,
    ports: Ports,
    log: PathBuf,
    extra_env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Kuiperd {
    /// Starts kuiperd over `base`, appending its output to `log`; waits until
    /// it answers `/ping`.
    pub fn start(base: &Path, log: &Path) -> Kuiperd {
        Self::start_with(base, log, &[])
    }

    /// [`Kuiperd::start`] with more environment settings (`KUIPER__BASIC__ENABLEPRIVATENET`...).
    pub fn start_with(base: &Path, log: &Path, extra_env: &[(&str, &str)]) -> Kuiperd {
        Self::try_start(base, log, extra_env).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Kuiperd::start_with`], with a node that exits or never answers as an
    /// error holding its log (for tests of libraries that crash eKuiper).
    pub fn try_start(
        base: &Path,
        log: &Path,
        extra_env: &[(&str, &str)],
    ) -> Result<Kuiperd, String> {
        let mut last = String::new();
        for _ in 0..3 {
            let mut k = Kuiperd {
                base: base.to_path_buf(),
                ports: Ports::free(),
                log: log.to_path_buf(),
                extra_env: extra_env
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                child: None,
            };
            match k.launch() {
                Ok(()) => return Ok(k),
                // A port taken between choosing and binding: try others.
                Err(e) if e.contains("address already in use") => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    fn launch(&mut self) -> Result<(), String> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("log {}: {e}", self.log.display()))?;
        let mut cmd = Command::new(Rig::get().kuiperd());
        cmd.current_dir(&self.base)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(node_env(&self.base, self.ports))
            .envs(self.extra_env.iter().cloned())
            .stdout(out.try_clone().map_err(|e| e.to_string())?)
            .stderr(Stdio::from(out));
        let mut child = spawn_detached(cmd).map_err(|e| format!("cannot run kuiperd: {e}"))?;
        wait_ready(&mut child, self.ports.rest, &self.log)?;
        self.child = Some(child);
        Ok(())
    }

    /// The REST API's base URL.
    pub fn rest(&self) -> String {
        self.ports.rest_url()
    }

    /// The node's base directory.
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// Stops the node (SIGTERM, then SIGKILL after 10 s) and waits for it.
    pub fn stop(&mut self) {
        if let Some(c) = self.child.take() {
            terminate(c);
        }
    }

    /// Stops the node and starts it again over the same base directory.
    pub fn restart(&mut self) {
        self.stop();
        self.launch().unwrap_or_else(|e| panic!("{e}"));
    }

    /// The node's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Kuiperd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Waits until the process `child` answers `GET /ping` on `rest_port`;
/// an error (with the log at `log`) if it exits first or takes over 30 s.
pub fn wait_ready(child: &mut Child, rest_port: u16, log: &Path) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let show = || std::fs::read_to_string(log).unwrap_or_default();
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Err(format!(
                "kuiperd exited ({status}) before answering; its log:\n{}",
                show()
            ));
        }
        if http_status(rest_port, "/ping") == Some(200) {
            return Ok(());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "kuiperd did not answer /ping within 30 s; its log:\n{}",
                show()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends SIGTERM to `child`, and SIGKILL if it has not exited after 10 s.
pub fn terminate(mut child: Child) -> Option<std::process::ExitStatus> {
    // SAFETY: signalling a child we own that has not been reaped.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait().ok()
}
