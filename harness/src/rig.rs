//! The real-component rig: stock eKuiper (kuiperd), our Go plugins and MinIO,
//! built by `harness/go/build.sh` into `target/ekuiper-rig/` (or `$KUIPER_RIG_DIR`).
//!
//! [`Rig::get`] runs that script once per test binary, under a file lock shared
//! by every test binary and checkout using the same directory: the script is
//! idempotent (about a second when nothing changed), so the first test pays
//! for a cold build (minutes) and the rest wait for it. A missing Go toolchain
//! or a failed build is a panic that shows the build's output: a test that
//! needs the rig never skips.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

/// Where the rig's parts are.
#[derive(Debug)]
pub struct Rig {
    dir: PathBuf,
}

impl Rig {
    /// The built rig; builds it first if needed (see the module docs).
    pub fn get() -> &'static Rig {
        static RIG: OnceLock<Rig> = OnceLock::new();
        RIG.get_or_init(|| {
            let dir = rig_dir();
            build(&dir);
            Rig { dir }
        })
    }

    /// The rig's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The stock eKuiper server, v2.4.0, built from `harness/go`.
    pub fn kuiperd(&self) -> PathBuf {
        self.dir.join("bin/kuiperd")
    }

    /// The MinIO server.
    pub fn minio(&self) -> PathBuf {
        self.dir.join("bin/minio")
    }

    /// An empty eKuiper base directory as its release package lays it out
    /// (`etc/kuiper.yaml`, `data/`, `plugins/{type}/`, `log/`). Copy it per node.
    pub fn base(&self) -> PathBuf {
        self.dir.join("base")
    }

    /// A built Go plugin: `set` is `v1`, `v2` (the source with `-tags rigv2`) or
    /// `notrim` (the sink built without `-trimpath`), `rel` for example
    /// `sources/Ticker.so`.
    pub fn plugin(&self, set: &str, rel: &str) -> PathBuf {
        self.dir.join("plugins").join(set).join(rel)
    }

    /// The bytes of [`Rig::plugin`].
    pub fn plugin_bytes(&self, set: &str, rel: &str) -> Vec<u8> {
        let p = self.plugin(set, rel);
        std::fs::read(&p).unwrap_or_else(|e| panic!("rig plugin {}: {e}", p.display()))
    }
}

/// The repository root (the harness crate's parent).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("harness has a parent")
        .to_path_buf()
}

fn rig_dir() -> PathBuf {
    match std::env::var_os("KUIPER_RIG_DIR") {
        Some(d) => PathBuf::from(d),
        None => repo_root().join("target/ekuiper-rig"),
    }
}

/// Runs build.sh under an exclusive lock on `{dir}.lock`.
fn build(dir: &Path) {
    let parent = dir.parent().expect("rig dir has a parent");
    std::fs::create_dir_all(parent)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", parent.display()));
    let lock_path = dir.with_extension("lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", lock_path.display()));
    // SAFETY: flock on a descriptor we own; released when `lock` is dropped.
    let rc = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) };
    assert_eq!(rc, 0, "cannot lock {}", lock_path.display());
    if Command::new("go").arg("version").output().is_err() {
        panic!(
            "the real-component tests need Go (go1.26 was tested) on PATH to build \
             kuiperd, the Go plugins and MinIO; install it (https://go.dev/dl/) and rerun"
        );
    }
    let script = repo_root().join("harness/go/build.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        panic!("{} failed ({}):\n{log}", script.display(), out.status);
    }
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "rig ready in {}:\n{log}", dir.display());
}

/// Makes a child started by `cmd` die when the test process does (Linux
/// `PR_SET_PDEATHSIG`), so no server outlives a test binary, even one that
/// panicked or was killed. The signal fires when the *thread* that spawned the
/// child ends: spawn long-lived servers with [`spawn_detached`].
pub fn die_with_parent(cmd: &mut Command) -> &mut Command {
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    cmd
}

/// Spawns `cmd` (with [`die_with_parent`]) from a thread that lives as long as
/// the process, so the child outlives the test (thread) that asked for it and
/// still dies with the process.
pub fn spawn_detached(mut cmd: Command) -> std::io::Result<Child> {
    use std::sync::mpsc;
    type Job = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<std::sync::Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("rig-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(die_with_parent(&mut cmd).spawn());
                }
            })
            .expect("spawner thread");
        std::sync::Mutex::new(tx)
    });
    let (tx, rx) = mpsc::channel();
    cmd.stdin(Stdio::null());
    spawner
        .lock()
        .expect("spawner")
        .send((cmd, tx))
        .expect("spawner alive");
    rx.recv().expect("spawner answers")
}

/// A free TCP port on 127.0.0.1 (bound, read back, released: another process
/// may take it before the caller does, so callers retry a failed start).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}
