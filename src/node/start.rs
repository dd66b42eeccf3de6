//! How `kuiper-node` starts: the sync (or, when the store cannot be read,
//! what the last sync installed), the gate's input read from the node's
//! eKuiper executable, and `kuiper-node ekuiper`, which then runs stock
//! eKuiper as a child.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{
    ekuiper, installed, open_store, release_memory, supervise, Failure, GateInfo, Progress, Report,
    SyncOptions, Synced,
};
use crate::store::StoreUrl;

/// The gate's input: the fingerprint of the eKuiper executable `bin`, and
/// what the report says about it. Says on stderr when nothing is checked.
pub fn read_gate(
    bin: Option<&Path>,
    progress: &Progress,
) -> (Option<crate::package::BuildFingerprint>, GateInfo) {
    let unchecked = |ekuiper: Option<String>, detail: String| {
        progress.line(&format!("{detail}; plugins are not checked against it"));
        (
            None,
            GateInfo {
                checked: false,
                ekuiper,
                detail,
            },
        )
    };
    let Some(bin) = bin else {
        return unchecked(
            None,
            "the node's eKuiper build is unknown (no --ekuiper-bin)".into(),
        );
    };
    let shown = Some(bin.display().to_string());
    match crate::package::fingerprint_file(bin) {
        Ok(f) => match &f.go {
            Some(go) => {
                let detail = format!("{}, {}", go.go_version, f.libc);
                progress.line(&format!(
                    "checking Go plugins against {} ({detail})",
                    bin.display()
                ));
                (
                    Some(f.clone()),
                    GateInfo {
                        checked: true,
                        ekuiper: shown,
                        detail,
                    },
                )
            }
            None => unchecked(
                shown,
                format!("{} has no Go build information", bin.display()),
            ),
        },
        Err(e) => unchecked(shown, format!("cannot read the node's eKuiper build: {e}")),
    }
}

/// `program` as the system would run it: itself when it names a path, else
/// the first match on `PATH`.
pub fn resolve_program(program: &Path) -> PathBuf {
    if program.components().count() > 1 {
        return program.to_path_buf();
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| program.to_path_buf())
}

/// Syncs; on a store error, keeps what the last sync installed when `load`
/// (a node that restarts while the store is down keeps its plugins). The
/// error is the report to print when there is nothing to fall back on.
pub async fn sync_or_installed(
    store: &StoreUrl,
    mut opts: SyncOptions,
    progress: &Progress,
    load: bool,
    gate_bin: Option<&Path>,
) -> Result<Synced, Report> {
    let gate = gate_bin.map(|bin| {
        let (fingerprint, info) = read_gate(Some(bin), progress);
        opts.ekuiper = fingerprint;
        info
    });
    let synced = match open_store(store).await {
        Ok(store) => store.sync(&opts, progress).await,
        Err(e) => Err(e),
    };
    let synced = synced.map(|mut s| {
        s.report.gate = gate;
        s
    });
    let e = match synced {
        Ok(s) => return Ok(s),
        Err(e) => e,
    };
    progress.line(&format!("error: {e}"));
    let fallback = load
        .then(|| installed(&opts.root, Report::fatal(e.clone())).ok())
        .flatten();
    match fallback {
        Some(s) => {
            progress.line("using the plugins installed by the last sync");
            Ok(s)
        }
        None => {
            let mut report = Report::fatal(e);
            if load {
                report.loaded = Some(Vec::new());
            }
            Err(report)
        }
    }
}

/// How `kuiper-node ekuiper` runs eKuiper.
#[derive(Debug, Clone)]
pub struct EkuiperRun {
    /// eKuiper's REST API; `None`: from its environment ([`ekuiper::default_url`]).
    pub url: Option<String>,
    /// How long to wait for it to answer.
    pub ready_timeout: Duration,
    /// Its server and arguments.
    pub command: Vec<OsString>,
    /// The executable the gate reads (`--ekuiper-bin`); `None`: the command's.
    pub ekuiper_bin: Option<PathBuf>,
}

/// `kuiper-node ekuiper`: sync, then eKuiper as a child (see the subcommand's
/// help). Returns the exit code: eKuiper's, or 1 or 2 when it could not run.
pub async fn run_ekuiper(store: &StoreUrl, opts: SyncOptions, run: EkuiperRun) -> u8 {
    let progress = Progress::stderr();
    let Some((program, args)) = run.command.split_first() else {
        eprintln!("kuiper-node: no eKuiper command given");
        return 2;
    };
    let ready_timeout = run.ready_timeout;
    let gate_bin = run
        .ekuiper_bin
        .clone()
        .unwrap_or_else(|| resolve_program(Path::new(program)));
    let root_dir = opts.root.clone();
    // eKuiper starts even when the store is down and nothing was synced yet.
    let synced = match sync_or_installed(store, opts, &progress, true, Some(&gate_bin)).await {
        Ok(s) => s,
        Err(mut report) => {
            let _ = std::fs::create_dir_all(&root_dir);
            let root = root_dir.canonicalize().unwrap_or_else(|_| root_dir.clone());
            report.loaded = None;
            Synced {
                report,
                manifest: Default::default(),
                root,
            }
        }
    };
    progress.finish();
    release_memory();
    let url = run
        .url
        .clone()
        .unwrap_or_else(|| ekuiper::default_url(|k| std::env::var(k).ok()));
    let rest = match ekuiper::Rest::new(&url) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kuiper-node: {e}");
            return 2;
        }
    };
    let forwarder = supervise::Forwarder::install();
    let child = match supervise::spawn(Path::new(program), args, &synced.root) {
        Ok(c) => c,
        Err(e) => {
            let mut report = synced.report.clone();
            report.failed.push(Failure {
                plugin_type: String::new(),
                name: String::new(),
                error: e.clone(),
            });
            progress.line(&format!("error: {e}"));
            report.print();
            return 1;
        }
    };
    let pid = child.id();
    progress.line(&format!(
        "eKuiper started (pid {}); waiting for {url}",
        pid.unwrap_or_default()
    ));
    let started = async {
        let mut report = synced.report.clone();
        let gone = || pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists());
        let status = if rest.wait_ready(ready_timeout, gone).await {
            ekuiper::after_start(&rest, &synced.manifest).await
        } else {
            let mut s = ekuiper::EkuiperStatus {
                url: url.clone(),
                ..Default::default()
            };
            s.not_loaded.push(Failure {
                plugin_type: String::new(),
                name: String::new(),
                error: format!(
                    "eKuiper did not answer {url}/ping within {}; function lists not registered, nothing checked",
                    humantime::format_duration(ready_timeout)
                ),
            });
            s
        };
        report.failed.extend(status.not_loaded.iter().cloned());
        for f in &status.not_loaded {
            progress.line(&format!(
                "eKuiper: {} {}: {}",
                f.plugin_type, f.name, f.error
            ));
        }
        progress.line(&format!(
            "eKuiper {} loaded {} plugin(s) kuiper-node installed",
            status.version,
            status.loaded.len()
        ));
        report.ekuiper = Some(status);
        report.sort();
        report.print();
    };
    match supervise::supervise(child, forwarder, started).await {
        Ok(status) => {
            progress.line(&format!("eKuiper exited: {status}"));
            supervise::exit_code(status)
        }
        Err(e) => {
            progress.line(&format!("error: waiting for eKuiper: {e}"));
            1
        }
    }
}
