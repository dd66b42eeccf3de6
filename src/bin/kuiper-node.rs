//! `kuiper-node`: syncs an eKuiper node's plugin directory from the registry's
//! store, and (with `run`) loads the synced plugins through the plugin ABI v1.
//!
//! Prints one JSON report on stdout; progress goes to stderr. Exit code 0
//! when every plugin synced (and loaded), 1 otherwise, 2 for usage errors.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use kuiper_registry::node::probe as node_probe;
use kuiper_registry::node::{self, SyncOptions};
use kuiper_registry::package::PluginType;
use kuiper_registry::store::StoreUrl;

#[derive(Debug, Parser)]
#[command(
    name = "kuiper-node",
    version,
    about = "Sync an eKuiper node's native plugins from the registry and load them",
    after_help = "S3 stores use the standard AWS settings (AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL_S3, ...)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Bring DIR to the registry's state and exit (e.g. as an init step before eKuiper starts).
    Sync(Common),
    /// Sync, then load every synced plugin and keep them loaded until SIGTERM/SIGINT.
    Run {
        #[command(flatten)]
        common: Common,
        /// Exit after loading instead of waiting for a signal.
        #[arg(long)]
        once: bool,
    },
    /// Sync, then run stock eKuiper (COMMAND) in DIR as a child: signals are
    /// passed on, its exit code is ours. Once it answers, registers function
    /// plugins' function lists through its REST API and reports what it loaded.
    Ekuiper {
        #[command(flatten)]
        common: Common,
        /// eKuiper's REST API. Default: from KUIPER__BASIC__RESTIP and
        /// KUIPER__BASIC__RESTPORT as eKuiper reads them, else http://127.0.0.1:9081.
        #[arg(long, env = "KUIPER_NODE_EKUIPER_URL")]
        ekuiper_url: Option<String>,
        /// How long to wait for eKuiper's REST API after starting it.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        ready_timeout: Duration,
        /// eKuiper's server and its arguments, after `--` (e.g. -- /kuiper/bin/kuiperd).
        #[arg(last = true, required = true, num_args = 1..)]
        command: Vec<std::ffi::OsString>,
    },
    /// Print the build fingerprint of an ELF file as JSON: of the node's
    /// kuiperd, to store in the registry (`PUT /fingerprints/{name}`) and
    /// check plugins against at publish; or of a plugin library.
    Fingerprint {
        /// The file (e.g. /kuiper/bin/kuiperd).
        path: PathBuf,
    },
    /// Internal: load one library and report on stdout (run does this in a
    /// child process for each library, so that one that crashes fails alone).
    #[command(hide = true)]
    Probe {
        /// The plugin's type: sources, sinks or functions.
        #[arg(long = "type")]
        plugin_type: String,
        /// The plugin's name.
        #[arg(long)]
        name: String,
        /// The library.
        path: PathBuf,
    },
}

#[derive(Debug, Args)]
struct Common {
    /// The registry's store: s3://BUCKET[/PREFIX], file:///abs/path or a directory.
    #[arg(long, env = "KUIPER_STORE", value_parser = StoreUrl::parse)]
    store: StoreUrl,
    /// The node's directory (eKuiper's base directory: plugins/ and etc/ live in it).
    #[arg(long, env = "KUIPER_NODE_ROOT")]
    root: PathBuf,
    /// Run the install.sh of plugins that have one (off by default: such plugins then fail).
    #[arg(long, env = "KUIPER_NODE_ALLOW_INSTALL_SCRIPTS")]
    allow_install_scripts: bool,
    /// How long an install.sh may run before it is killed (e.g. 30s, 5m).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    install_timeout: Duration,
    /// Most plugins downloaded at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    jobs: u16,
    /// Most bytes of zips and decoded files held in memory at once. Zips that
    /// do not fit (and any over 16 MiB) are downloaded to disk, and files that
    /// do not fit twice over are decoded as a stream, more slowly. 0: every
    /// zip through disk, every file as a stream. The same files are installed
    /// whatever the value.
    #[arg(
        long,
        env = "KUIPER_NODE_MEMORY_BYTES",
        default_value_t = node::DEFAULT_MEMORY_BYTES as u64,
        value_parser = clap::value_parser!(u64).range(0..=u64::from(u32::MAX))
    )]
    memory_bytes: u64,
    /// The node's stock eKuiper executable (kuiperd): Go plugins it would
    /// refuse (another Go, module versions, -trimpath, C library) are skipped
    /// before download. `ekuiper` reads the one it runs unless this is given.
    #[arg(long, env = "KUIPER_NODE_EKUIPER_BIN")]
    ekuiper_bin: Option<PathBuf>,
    /// This node's id in the store: its report is nodes/{ID}.json. Default:
    /// the host name and 8 hex digits of the root's hash, stable across restarts.
    #[arg(long, env = "KUIPER_NODE_ID")]
    node_id: Option<String>,
    /// How often a running node (`run`, `ekuiper`) writes its report again,
    /// so that one that stops shows as stale (e.g. 30s, 5m).
    #[arg(long, env = "KUIPER_NODE_REPORT_INTERVAL", default_value = "60s", value_parser = parse_interval)]
    report_interval: Duration,
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_secs(1) {
        return Err("the report interval is at least 1s".into());
    }
    Ok(d)
}

impl Common {
    fn options(&self) -> SyncOptions {
        let mut opts = SyncOptions::new(&self.root);
        opts.jobs = usize::from(self.jobs);
        opts.allow_install_scripts = self.allow_install_scripts;
        opts.install_timeout = self.install_timeout;
        opts.memory_bytes = usize::try_from(self.memory_bytes).unwrap_or(usize::MAX);
        opts
    }

    fn identity(&self) -> node::start::NodeIdentity {
        node::start::NodeIdentity {
            id: self.node_id.clone(),
            interval: self.report_interval,
            started: std::time::SystemTime::now(),
        }
    }
}

/// The `fingerprint` subcommand.
fn fingerprint(path: &std::path::Path) -> ExitCode {
    match kuiper_registry::package::fingerprint_file(path) {
        Ok(f) => {
            let json = serde_json::to_string_pretty(&f).expect("a fingerprint serialises");
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{json}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kuiper-node fingerprint: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The hidden `probe` subcommand: loads one library, prints the outcome.
fn probe(plugin_type: &str, name: &str, path: &std::path::Path) -> ExitCode {
    let Some(ty) = PluginType::ALL
        .into_iter()
        .find(|t| t.as_str() == plugin_type)
    else {
        eprintln!("kuiper-node probe: unknown type {plugin_type:?}");
        return ExitCode::from(2);
    };
    let line = node_probe::child(path, ty, name);
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
    ExitCode::SUCCESS
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    node::keep_freed_memory();
    let cli = Cli::parse();
    let code = match &cli.command {
        Command::Sync(c) => {
            node::start::run_plain(
                &c.store,
                c.options(),
                false,
                true,
                c.ekuiper_bin.as_deref(),
                &c.identity(),
            )
            .await
        }
        Command::Run { common: c, once } => {
            node::start::run_plain(
                &c.store,
                c.options(),
                true,
                *once,
                c.ekuiper_bin.as_deref(),
                &c.identity(),
            )
            .await
        }
        Command::Ekuiper {
            common,
            ekuiper_url,
            ready_timeout,
            command,
        } => {
            let run = node::start::EkuiperRun {
                url: ekuiper_url.clone(),
                ready_timeout: *ready_timeout,
                command: command.clone(),
                ekuiper_bin: common.ekuiper_bin.clone(),
            };
            node::start::run_ekuiper(&common.store, common.options(), run, &common.identity()).await
        }
        Command::Probe {
            plugin_type,
            name,
            path,
        } => return probe(plugin_type, name, path),
        Command::Fingerprint { path } => return fingerprint(path),
    };
    ExitCode::from(code)
}
