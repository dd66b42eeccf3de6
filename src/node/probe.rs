//! Loading a plugin in a child process first, so that a library that crashes
//! while it loads (an initialiser that aborts, a descriptor with a wild
//! pointer) fails that plugin instead of taking `kuiper-node run` down.
//!
//! The child is `kuiper-node` itself, re-executed with the hidden `probe`
//! subcommand: it loads the library with [`loader::load`] and prints one
//! line, [`OUTPUT_PREFIX`] then a JSON [`Outcome`], on stdout. A child killed
//! by a signal, or one that prints no outcome, is a failure. Libraries that
//! passed are remembered by their SHA-256 in `.kuiper-node/probed.json`, so
//! that an unchanged library is not probed again on the next start; failures
//! are not remembered (a missing dependency may be installed meanwhile).
//!
//! A library can pass alone and still crash `run` itself (one clashing with a
//! library loaded before it). So before each in-process load the parent
//! writes `.kuiper-node/loading.json` naming the library, and removes it
//! after. A start that finds it left behind knows which library took the
//! last start down: that library is remembered as crashed and skipped, with
//! a failure saying why, until a different library is installed for it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::layout::STATE_DIR;
use super::{beneath, loader, manifest};
use crate::package::PluginType;

/// What a probe's output line starts with (a plugin may print too).
pub const OUTPUT_PREFIX: &str = "kuiper-node-probe: ";

/// How long a library may take to load in the child before it is killed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(60);

/// The name of the probe cache under [`STATE_DIR`].
const CACHE_FILE: &str = "probed.json";

/// The name of the in-process loading marker under [`STATE_DIR`].
const LOADING_FILE: &str = "loading.json";

/// What the child reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Outcome {
    /// Loaded, and its descriptor is right.
    Loaded,
    /// Loading failed, with the loader's message.
    Failed(String),
}

/// The child's side: loads `path` as plugin `name` of `ty` and returns the
/// line to print.
pub fn child(path: &Path, ty: PluginType, name: &str) -> String {
    let outcome = match loader::load(path, ty, name) {
        // Kept loaded, as `run` keeps it: not unloaded before the exit.
        Ok(p) => {
            std::mem::forget(p);
            Outcome::Loaded
        }
        Err(e) => Outcome::Failed(e),
    };
    let json = serde_json::to_string(&outcome).unwrap_or_else(|_| "\"loaded\"".into());
    format!("{OUTPUT_PREFIX}{json}")
}

/// How the parent probes: the executable to re-run, and the cache.
#[derive(Debug)]
pub struct Prober {
    exe: PathBuf,
    root: PathBuf,
    /// `{type}/{name}` -> SHA-256 of the library that passed.
    passed: BTreeMap<String, String>,
    /// `{type}/{name}` -> SHA-256 of a library that crashed `run` itself.
    crashed: BTreeMap<String, String>,
    /// Whether the loading marker is written for the library being loaded.
    marked: bool,
    changed: bool,
}

/// The probe cache as stored.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Cache {
    passed: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    crashed: BTreeMap<String, String>,
}

/// The loading marker: the library `run` is loading in its own process.
#[derive(Debug, Serialize, Deserialize)]
struct Loading {
    plugin: String,
    sha256: String,
}

impl Prober {
    /// A prober re-running `exe`, with the cache of `root` (an unreadable
    /// cache is an empty one).
    /// A library named by a loading marker left behind took the last start
    /// down: it is remembered as crashed.
    pub fn new(exe: PathBuf, root: &Path) -> Self {
        let state = root.join(STATE_DIR);
        let cache = std::fs::read(state.join(CACHE_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice::<Cache>(&b).ok())
            .unwrap_or_default();
        let mut prober = Prober {
            exe,
            root: root.to_path_buf(),
            passed: cache.passed,
            crashed: cache.crashed,
            marked: false,
            changed: false,
        };
        let left = std::fs::read(state.join(LOADING_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice::<Loading>(&b).ok());
        if let Some(left) = left {
            tracing::warn!(plugin = %left.plugin, "the last start crashed while loading this library; it is skipped until it changes");
            prober.passed.remove(&left.plugin);
            prober.crashed.insert(left.plugin, left.sha256);
            prober.changed = true;
        }
        prober
    }

    /// Loads the library at `path` (plugin `name` of `ty`) in a child
    /// process, unless this very library passed before.
    pub fn check(&mut self, path: &Path, ty: PluginType, name: &str) -> Result<(), String> {
        let key = manifest::key(ty, name);
        let sha = hash(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        match self.crashed.get(&key) {
            Some(crashed) if *crashed == sha => {
                return Err(format!(
                    "plugin {key} crashed kuiper-node run while loading on an earlier start (it had loaded alone in a child process); \
                     skipped until another version is installed (remove {STATE_DIR}/{CACHE_FILE} to try it again); not loaded"
                ));
            }
            Some(_) => {
                self.crashed.remove(&key);
                self.changed = true;
            }
            None => {}
        }
        if self.passed.get(&key) != Some(&sha) {
            if self.passed.remove(&key).is_some() {
                self.changed = true;
            }
            probe(&self.exe, path, ty, name)?;
            self.passed.insert(key.clone(), sha.clone());
            self.changed = true;
        }
        self.mark(Loading {
            plugin: key,
            sha256: sha,
        })
    }

    /// Writes the loading marker: the caller loads the library next. Not
    /// flushed to disk: it only has to outlive this process, not the machine.
    fn mark(&mut self, loading: Loading) -> Result<(), String> {
        beneath::check(&self.root, STATE_DIR, true)?;
        let body = serde_json::to_vec(&loading).map_err(|e| format!("loading marker: {e}"))?;
        let path = self.root.join(STATE_DIR).join(LOADING_FILE);
        std::fs::write(&path, body)
            .map_err(|e| format!("cannot write {}: {e}; not loaded", path.display()))?;
        self.marked = true;
        Ok(())
    }

    /// Removes the loading marker once the library [`Prober::check`] passed
    /// has been loaded in this process (or failed without crashing it).
    pub fn loaded(&mut self) {
        if std::mem::take(&mut self.marked) {
            let path = self.root.join(STATE_DIR).join(LOADING_FILE);
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove the loading marker");
            }
        }
    }

    /// Forgets plugins not in `keep` (by key), e.g. removed ones.
    pub fn retain(&mut self, keep: &dyn Fn(&str) -> bool) {
        let before = self.passed.len() + self.crashed.len();
        self.passed.retain(|k, _| keep(k));
        self.crashed.retain(|k, _| keep(k));
        self.changed |= self.passed.len() + self.crashed.len() != before;
    }

    /// Writes the cache if it changed (best effort: without it, libraries
    /// are only probed again).
    pub fn save(&self) -> Result<(), String> {
        if !self.changed {
            return Ok(());
        }
        beneath::check(&self.root, STATE_DIR, true)?;
        let body = serde_json::to_vec_pretty(&Cache {
            passed: self.passed.clone(),
            crashed: self.crashed.clone(),
        })
        .map_err(|e| format!("probe cache: {e}"))?;
        manifest::write_atomic(&self.root.join(STATE_DIR).join(CACHE_FILE), &body)
    }
}

fn hash(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Runs `exe probe --type T --name N PATH` and interprets how it ended.
fn probe(exe: &Path, path: &Path, ty: PluginType, name: &str) -> Result<(), String> {
    let plugin = manifest::key(ty, name);
    let mut child = Command::new(exe)
        .arg("probe")
        .arg("--type")
        .arg(ty.as_str())
        .arg("--name")
        .arg(name)
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {} to load {plugin}: {e}", exe.display()))?;
    // Read on a thread so that a plugin printing a lot cannot block the child.
    let stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| l.strip_prefix(OUTPUT_PREFIX).map(str::to_string))
            .last()
    });
    let deadline = Instant::now() + PROBE_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "plugin {plugin} did not finish loading within {}; not loaded",
                    humantime::format_duration(PROBE_TIMEOUT)
                ));
            }
            Err(e) => return Err(format!("cannot wait for the probe of {plugin}: {e}")),
        }
    };
    let line = reader.join().ok().flatten();
    if let Some(signal) = status.signal() {
        return Err(format!(
            "plugin {plugin} crashed while loading: killed by signal {}; not loaded",
            signal_name(signal)
        ));
    }
    match line.as_deref().map(serde_json::from_str::<Outcome>) {
        Some(Ok(Outcome::Loaded)) if status.success() => Ok(()),
        Some(Ok(Outcome::Failed(e))) => Err(e),
        _ => Err(format!(
            "plugin {plugin} failed while loading: the probe process {status} without reporting; not loaded"
        )),
    }
}

/// `SIGABRT` for 6, and so on; `signal N` for others.
fn signal_name(signal: i32) -> String {
    let name = match signal {
        libc::SIGABRT => "SIGABRT",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGBUS => "SIGBUS",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGSYS => "SIGSYS",
        _ => return format!("signal {signal}"),
    };
    name.to_string()
}
