//! How `kuiper-node` starts: the sync (or, when the store cannot be read,
//! what the last sync installed), the gate's input read from the node's
//! eKuiper executable, and `kuiper-node ekuiper`, which then runs stock
//! eKuiper as a child.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::Arc;

use tokio::signal::unix::{signal, Signal, SignalKind};

use super::report::{self, Reporter};
use super::{
    ekuiper, installed, open_store, release_memory, supervise, Failure, GateInfo, NodeStore,
    Progress, Report, SyncOptions, Synced,
};
use crate::fleet::report::Mode;
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
                build: None,
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
                        build: Some(f.clone()),
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
/// error is the report to print when there is nothing to fall back on. The
/// store, when it could be opened, is returned for the node report.
pub async fn sync_or_installed(
    store: &StoreUrl,
    mut opts: SyncOptions,
    progress: &Progress,
    load: bool,
    gate_bin: Option<&Path>,
) -> (Result<Synced, Report>, Option<Arc<NodeStore>>) {
    let gate = gate_bin.map(|bin| {
        let (fingerprint, info) = read_gate(Some(bin), progress);
        opts.ekuiper = fingerprint;
        info
    });
    let (synced, opened) = match open_store(store).await {
        Ok(store) => {
            let store = Arc::new(store);
            (store.sync(&opts, progress).await, Some(store))
        }
        Err(e) => (Err(e), None),
    };
    let synced = synced.map(|mut s| {
        s.report.gate = gate;
        s
    });
    let e = match synced {
        Ok(s) => return (Ok(s), opened),
        Err(e) => e,
    };
    progress.line(&format!("error: {e}"));
    let fallback = load
        .then(|| installed(&opts.root, Report::fatal(e.clone())).ok())
        .flatten();
    match fallback {
        Some(s) => {
            progress.line("using the plugins installed by the last sync");
            (Ok(s), opened)
        }
        None => {
            let mut report = Report::fatal(e);
            if load {
                report.loaded = Some(Vec::new());
            }
            (Err(report), opened)
        }
    }
}

/// Who the node is in the store, for its reports.
#[derive(Debug, Clone)]
pub struct NodeIdentity {
    /// `--node-id`, or `None` for the default of the host name and root.
    pub id: Option<String>,
    /// `--report-interval`: how often a running node reports.
    pub interval: Duration,
    /// When kuiper-node started (before its sync).
    pub started: std::time::SystemTime,
}

impl NodeIdentity {
    /// The reporter of a node in `mode` syncing `root` from `url`.
    fn reporter(
        &self,
        url: &StoreUrl,
        root: &Path,
        store: Option<Arc<NodeStore>>,
        mode: Mode,
    ) -> Result<Reporter, String> {
        let id = report::node_id(self.id.as_deref(), root)?;
        let interval = (mode != Mode::Sync).then_some(self.interval);
        let mut reporter = Reporter::new(id, url.clone(), store, mode, interval);
        reporter.set_started(self.started);
        Ok(reporter)
    }
}

/// An empty outcome for `root`, when nothing could be synced or installed.
fn nothing_synced(root: &Path, report: Report) -> Synced {
    let _ = std::fs::create_dir_all(root);
    let root = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
    Synced {
        report,
        manifest: Default::default(),
        root,
        seen: Default::default(),
    }
}

/// `kuiper-node sync` and `kuiper-node run`: sync (and with `load`, load
/// through the plugin ABI and, unless `once`, keep running until SIGTERM or
/// SIGINT), report to the store, print the report. Returns the exit code.
pub async fn run_plain(
    store: &StoreUrl,
    opts: SyncOptions,
    load: bool,
    once: bool,
    ekuiper_bin: Option<&Path>,
    identity: &NodeIdentity,
) -> u8 {
    let progress = Progress::stderr();
    // `sync` is what an init step before a stock eKuiper runs: say when its
    // build is unknown. `run` loads through the plugin ABI, not eKuiper.
    let unchecked_gate = (ekuiper_bin.is_none() && !load).then(|| read_gate(None, &progress).1);
    let root_dir = opts.root.clone();
    let (synced, opened) = sync_or_installed(store, opts, &progress, load, ekuiper_bin).await;
    let synced_at = report::timestamp();
    let mode = if load { Mode::Run } else { Mode::Sync };
    let reporter = match identity.reporter(store, &root_dir, opened, mode) {
        Ok(r) => r,
        Err(e) => {
            progress.finish();
            eprintln!("kuiper-node: {e}");
            return 2;
        }
    };
    let (synced, failed_whole) = match synced {
        Ok(s) => (s, false),
        Err(report) => (nothing_synced(&root_dir, report), true),
    };
    // Signal handlers are installed before the report is printed, so a
    // supervisor that signals as soon as it has read the report is honoured.
    release_memory();
    let stop = (load && !once && !failed_whole).then(StopSignals::install);
    let mut report = synced.report.clone();
    if report.gate.is_none() {
        report.gate = unchecked_gate;
    }
    let libraries = if load && !failed_whole {
        let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
        let mut prober = super::probe::Prober::new(exe, &synced.root);
        super::load_installed(&synced, &mut report, &progress, Some(&mut prober))
    } else {
        Vec::new()
    };
    let build = report.gate.as_ref().and_then(|g| g.build.as_ref());
    let info = report::ekuiper_info(build, None, None);
    let node_report = reporter.build(&synced, &report, info, &synced_at);
    let written = reporter.write(&node_report).await;
    if let Some(e) = &written.error {
        progress.line(e);
    }
    report.node_report = Some(written);
    progress.finish();
    report.print();
    if let Some(stop) = stop {
        progress.line(&format!(
            "{} plugin(s) loaded; running until SIGTERM or SIGINT",
            libraries.len()
        ));
        tokio::select! {
            () = stop.wait() => {}
            () = reporter.keep_reporting(node_report, &progress) => {}
        }
        progress.line("signal received, exiting");
    }
    // Plugins are never unloaded: the process exits with them mapped.
    std::mem::forget(libraries);
    if report.ok() {
        0
    } else {
        1
    }
}

/// SIGTERM and SIGINT, listened to from the moment they are installed.
struct StopSignals {
    term: Option<Signal>,
    int: Option<Signal>,
}

impl StopSignals {
    fn install() -> Self {
        StopSignals {
            term: signal(SignalKind::terminate()).ok(),
            int: signal(SignalKind::interrupt()).ok(),
        }
    }

    async fn wait(mut self) {
        async fn recv(s: &mut Option<Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        }
        tokio::select! {
            () = recv(&mut self.term) => {}
            () = recv(&mut self.int) => {}
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

/// What eKuiper showed once it answered, or why nothing could be checked.
async fn status_after_start(
    rest: &ekuiper::Rest,
    ready_timeout: Duration,
    pid: Option<u32>,
    synced: &Synced,
) -> ekuiper::EkuiperStatus {
    let gone = || pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists());
    if rest.wait_ready(ready_timeout, gone).await {
        return ekuiper::after_start(rest, &synced.manifest, &synced.root).await;
    }
    let url = rest.url().to_string();
    let error = format!(
        "eKuiper did not answer {url}/ping within {}; function lists not registered, nothing checked",
        humantime::format_duration(ready_timeout)
    );
    ekuiper::EkuiperStatus {
        url,
        not_loaded: vec![Failure {
            plugin_type: String::new(),
            name: String::new(),
            error,
        }],
        ..Default::default()
    }
}

/// What `kuiper-node ekuiper` does once eKuiper runs.
struct AfterStart<'a> {
    rest: &'a ekuiper::Rest,
    ready_timeout: Duration,
    pid: Option<u32>,
    synced: &'a Synced,
    synced_at: &'a str,
    started: &'a str,
    build: Option<&'a crate::package::BuildFingerprint>,
    reporter: &'a Reporter,
    progress: &'a Progress,
}

impl AfterStart<'_> {
    /// Waits for eKuiper's REST API, checks what it loaded, reports it (on
    /// stdout and to the store), then reports again at every interval.
    async fn run(self) {
        let progress = self.progress;
        let mut report = self.synced.report.clone();
        let status = status_after_start(self.rest, self.ready_timeout, self.pid, self.synced).await;
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
        let info = report::ekuiper_info(self.build, Some(&status), Some(self.started));
        report.ekuiper = Some(status);
        report.sort();
        let node_report = self
            .reporter
            .build(self.synced, &report, info, self.synced_at);
        let written = self.reporter.write(&node_report).await;
        if let Some(e) = &written.error {
            progress.line(e);
        }
        report.node_report = Some(written);
        report.print();
        self.reporter.keep_reporting(node_report, progress).await;
    }
}

/// `kuiper-node ekuiper`: sync, then eKuiper as a child (see the subcommand's
/// help). Reports to the store after the sync, again once eKuiper answered
/// (with what it loaded), then at every interval. Returns the exit code:
/// eKuiper's, or 1 or 2 when it could not run.
pub async fn run_ekuiper(
    store: &StoreUrl,
    opts: SyncOptions,
    run: EkuiperRun,
    identity: &NodeIdentity,
) -> u8 {
    let progress = Progress::stderr();
    let Some((program, args)) = run.command.split_first() else {
        eprintln!("kuiper-node: no eKuiper command given");
        return 2;
    };
    let gate_bin = run
        .ekuiper_bin
        .clone()
        .unwrap_or_else(|| resolve_program(Path::new(program)));
    let root_dir = opts.root.clone();
    // eKuiper starts even when the store is down and nothing was synced yet.
    let (synced, opened) = sync_or_installed(store, opts, &progress, true, Some(&gate_bin)).await;
    let synced_at = report::timestamp();
    let synced = synced.unwrap_or_else(|mut report| {
        report.loaded = None;
        nothing_synced(&root_dir, report)
    });
    progress.finish();
    release_memory();
    let reporter = match identity.reporter(store, &root_dir, opened, Mode::Ekuiper) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kuiper-node: {e}");
            return 2;
        }
    };
    let build = synced.report.gate.as_ref().and_then(|g| g.build.clone());
    let first = reporter.build(
        &synced,
        &synced.report,
        report::ekuiper_info(build.as_ref(), None, None),
        &synced_at,
    );
    if let Some(e) = reporter.write(&first).await.error {
        progress.line(&e);
    }
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
            report.node_report = Some(
                reporter
                    .write(&reporter.build(&synced, &report, None, &synced_at))
                    .await,
            );
            report.print();
            return 1;
        }
    };
    let ekuiper_started = report::timestamp();
    let pid = child.id();
    progress.line(&format!(
        "eKuiper started (pid {}); waiting for {url}",
        pid.unwrap_or_default()
    ));
    let after = AfterStart {
        rest: &rest,
        ready_timeout: run.ready_timeout,
        pid,
        synced: &synced,
        synced_at: &synced_at,
        started: &ekuiper_started,
        build: build.as_ref(),
        reporter: &reporter,
        progress: &progress,
    };
    match supervise::supervise(child, forwarder, after.run()).await {
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
