//! `plugin-api`: the eKuiper plugin REST API. Under AWS Lambda (when
//! `AWS_LAMBDA_RUNTIME_API` is set) it serves Lambda events; otherwise it
//! listens on `KUIPER_LISTEN` (default 127.0.0.1:9081).

use clap::Parser;
use futures_util::future::BoxFuture;
use kuiper_registry::config::ServiceConfig;
use kuiper_registry::server::{self, StoreKind};
use kuiper_registry::store::{Store, StoreUrl};

#[derive(Debug, Parser)]
#[command(
    name = "plugin-api",
    version,
    about = "eKuiper plugin registry API (AWS Lambda or local server)"
)]
struct Cli {
    #[command(flatten)]
    config: ServiceConfig,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Serve the API (the default).
    Serve,
    /// Remove zips no plugin points at, stale function-name claims, unfinished
    /// uploads (partial local objects, incomplete S3 multipart uploads) and
    /// download spool files in KUIPER_TMP_DIR; prints a JSON report.
    Gc {
        /// Spare anything younger than this (must exceed the longest request;
        /// files a live process on this machine holds are spared whatever their age).
        #[arg(long, default_value_t = 3600)]
        min_age_secs: u64,
        /// Report what would be removed, remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// How long after the service can answer the store probe starts. The probe
/// builds the S3 client (about a million instructions, mostly code run for
/// the first time) and sends one request; run at once, it slowed the first
/// answer by about 0.6 ms on two cores. The first requests (a health check,
/// a cold Lambda's first event) go first; one that needs the store builds
/// the client itself, and a misconfigured store still stops the process
/// within a fraction of a second.
const PROBE_DELAY: std::time::Duration = std::time::Duration::from_millis(100);

fn init_tracing(lambda: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tower_http=info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi && !lambda)
        .with_writer(std::io::stderr);
    if lambda {
        builder.json().without_time().init();
    } else {
        builder.init();
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let lambda = std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some();
    init_tracing(lambda);
    let result = match cli.command {
        Some(Command::Gc {
            min_age_secs,
            dry_run,
        }) => gc(cli.config, min_age_secs, dry_run).await,
        Some(Command::Serve) | None => run(cli.config, lambda).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("plugin-api: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(config: ServiceConfig, lambda: bool) -> Result<(), String> {
    if !lambda {
        config.check_exposure()?;
    }
    // A local store is checked before serving (no network involved). An S3
    // store is checked by a probe, PROBE_DELAY after the service can answer:
    // building the client and the round trip stay off the cold start, and a
    // failed probe still stops the process with a clear message.
    let (app, location, probe) = match config.store_url()? {
        StoreUrl::S3 { bucket, prefix } => {
            let s = server::connect_s3(&bucket, &prefix, config.allow_unsafe_store).await;
            let probe = s.clone();
            let probe: BoxFuture<'static, Result<(), String>> = Box::pin(async move {
                server::check_store(&probe).await?;
                server::check_conditions(&probe).await
            });
            (server::build_app(s.clone(), &config)?, s.location(), probe)
        }
        url => {
            let StoreKind::Local(s) = server::open_store(&url).await? else {
                unreachable!("only S3 URLs open an S3 store")
            };
            let probe: BoxFuture<'static, Result<(), String>> = Box::pin(async { Ok(()) });
            (server::build_app(s.clone(), &config)?, s.location(), probe)
        }
    };
    // The service runs until it stops or the probe fails.
    let start_probe = move || {
        let probe = tokio::spawn(async move {
            tokio::time::sleep(PROBE_DELAY).await;
            probe.await
        });
        async move {
            probe
                .await
                .map_err(|e| format!("the store probe failed: {e}"))??;
            std::future::pending::<Result<(), String>>().await
        }
    };
    if lambda {
        let probe = start_probe();
        tracing::info!(store = %location, "serving AWS Lambda events");
        let serve = async {
            lambda_http::run(server::for_lambda(app))
                .await
                .map_err(|e| e.to_string())
        };
        return tokio::select! {
            r = serve => r,
            r = probe => r,
        };
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    // The first line on stdout says where we listen (tests and scripts read it).
    println!("plugin-api listening on http://{addr} (store: {location})");
    let probe = start_probe();
    let serve = async {
        server::serve_local(listener, app, config.server_timeouts())
            .await
            .map_err(|e| e.to_string())
    };
    tokio::select! {
        r = serve => r,
        r = probe => r,
    }
}

async fn gc(config: ServiceConfig, min_age_secs: u64, dry_run: bool) -> Result<(), String> {
    let min_age = std::time::Duration::from_secs(min_age_secs);
    let report = match config.store_url()? {
        StoreUrl::S3 { bucket, prefix } => {
            let s = server::connect_s3(&bucket, &prefix, config.allow_unsafe_store).await;
            server::check_store(&s).await?;
            server::check_conditions(&s).await?;
            server::build_registry(s, &config)?
                .gc(min_age, dry_run)
                .await
        }
        url => {
            let StoreKind::Local(s) = server::open_store(&url).await? else {
                unreachable!("only S3 URLs open an S3 store")
            };
            server::build_registry(s, &config)?
                .gc(min_age, dry_run)
                .await
        }
    }
    .map_err(|e| format!("gc failed: {e}"))?;
    println!(
        "{}",
        serde_json::to_string(&report).expect("report serialises")
    );
    Ok(())
}
