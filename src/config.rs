//! Configuration of `plugin-api`: environment variables, each also a flag.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::fetch::policy::AddressPolicy;
use crate::fetch::FetchSettings;
use crate::package::ZipLimits;
use crate::registry::RegistrySettings;
use crate::server::ServerTimeouts;
use crate::store::StoreUrl;

/// Settings of the plugin API service.
#[derive(Debug, Clone, Args)]
pub struct ServiceConfig {
    /// Where plugins are stored: `s3://BUCKET[/PREFIX]`, `file:///abs/path` or a directory.
    #[arg(long, env = "KUIPER_STORE", default_value = "./data")]
    pub store: String,

    /// Address of the local server (ignored under AWS Lambda).
    #[arg(long, env = "KUIPER_LISTEN", default_value = "127.0.0.1:9081")]
    pub listen: SocketAddr,

    /// Directory `file://` plugin URLs may point into (local store only); unset refuses `file://`.
    #[arg(long, env = "KUIPER_UPLOADS_DIR")]
    pub uploads_dir: Option<PathBuf>,

    /// Directory for downloads in progress (default: the system temporary directory).
    #[arg(long, env = "KUIPER_TMP_DIR")]
    pub tmp_dir: Option<PathBuf>,

    /// Largest plugin zip downloaded, in bytes.
    #[arg(long, env = "KUIPER_MAX_DOWNLOAD_BYTES", default_value_t = 256 << 20)]
    pub max_download_bytes: u64,

    /// Largest request body, in bytes.
    #[arg(long, env = "KUIPER_MAX_BODY_BYTES", default_value_t = 64 << 10)]
    pub max_body_bytes: usize,

    /// Most entries in a plugin zip.
    #[arg(long, env = "KUIPER_MAX_ZIP_ENTRIES", default_value_t = 1000)]
    pub max_zip_entries: usize,

    /// Most bytes a plugin zip may decompress to (all entries together).
    #[arg(long, env = "KUIPER_MAX_UNCOMPRESSED_BYTES", default_value_t = 1 << 30)]
    pub max_uncompressed_bytes: u64,

    /// Seconds to establish a connection (downloads and callbacks).
    #[arg(long, env = "KUIPER_CONNECT_TIMEOUT_SECS", default_value_t = 10)]
    pub connect_timeout_secs: u64,

    /// Seconds for a whole download; keep it below the Lambda timeout.
    #[arg(long, env = "KUIPER_DOWNLOAD_TIMEOUT_SECS", default_value_t = 25)]
    pub download_timeout_secs: u64,

    /// Seconds a download or callback may stall between two reads.
    #[arg(long, env = "KUIPER_READ_TIMEOUT_SECS", default_value_t = 10)]
    pub read_timeout_secs: u64,

    /// Allow downloads and callbacks to private, loopback and link-local addresses.
    #[arg(long, env = "KUIPER_ALLOW_PRIVATE_NETWORK", default_value_t = false, action = clap::ArgAction::Set)]
    pub allow_private_network: bool,

    /// Hosts reachable whatever their addresses, comma-separated: `host` (any port) or `host:port` (that port only).
    #[arg(long, env = "KUIPER_ALLOWED_HOSTS", value_delimiter = ',')]
    pub allowed_hosts: Vec<String>,

    /// Directory of RSA public keys (PEM); when set, requests need an RS256 JWT whose `iss` names one.
    #[arg(long, env = "KUIPER_AUTH_KEYS_DIR")]
    pub auth_keys_dir: Option<PathBuf>,

    /// Allow listening on a non-loopback address without authentication.
    #[arg(long, env = "KUIPER_INSECURE", default_value_t = false, action = clap::ArgAction::Set)]
    pub insecure: bool,

    /// Seconds for a whole callback request.
    #[arg(long, env = "KUIPER_CALLBACK_TIMEOUT_SECS", default_value_t = 10)]
    pub callback_timeout_secs: u64,

    /// Seconds a client has to send a request's head, from the connection's start or the request's first byte (local server).
    #[arg(long, env = "KUIPER_HEADER_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub header_timeout_secs: u64,

    /// Seconds a client has to send a request's whole body, from its head; slower ones get 408 (local server).
    #[arg(long, env = "KUIPER_BODY_TIMEOUT_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub body_timeout_secs: u64,

    /// Seconds a connection may sit between requests, or a client take to read an answer (local server).
    #[arg(long, env = "KUIPER_IDLE_TIMEOUT_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout_secs: u64,

    /// Use an S3-compatible store that ignores conditional writes (If-None-Match, If-Match), with a warning on every start, instead of refusing to start.
    #[arg(long, env = "KUIPER_ALLOW_UNSAFE_STORE", default_value_t = false, action = clap::ArgAction::Set)]
    pub allow_unsafe_store: bool,

    /// Seconds SIGTERM or SIGINT waits for requests in progress before exiting (local server).
    #[arg(long, env = "KUIPER_SHUTDOWN_TIMEOUT_SECS", default_value_t = 30)]
    pub shutdown_timeout_secs: u64,

    /// Seconds without a report after which `GET /nodes` shows a node stale.
    /// Default: three of the node's own report intervals.
    #[arg(long, env = "KUIPER_NODE_STALE_SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub node_stale_secs: Option<u64>,
}

impl ServiceConfig {
    /// Refuses to expose an unauthenticated server beyond loopback unless told to.
    pub fn check_exposure(&self) -> Result<(), String> {
        if !self.listen.ip().is_loopback() && self.auth_keys_dir.is_none() && !self.insecure {
            return Err(format!(
                "refusing to listen on {} without authentication: set KUIPER_AUTH_KEYS_DIR, or KUIPER_INSECURE=true to accept the risk",
                self.listen
            ));
        }
        Ok(())
    }

    /// The parsed store location.
    pub fn store_url(&self) -> Result<StoreUrl, String> {
        StoreUrl::parse(&self.store)
    }

    /// Outbound request settings.
    pub fn fetch_settings(&self) -> FetchSettings {
        let local = matches!(self.store_url(), Ok(StoreUrl::Local(_)));
        FetchSettings {
            max_download_bytes: self.max_download_bytes,
            connect_timeout: Duration::from_secs(self.connect_timeout_secs),
            download_timeout: Duration::from_secs(self.download_timeout_secs),
            read_timeout: Duration::from_secs(self.read_timeout_secs),
            callback_timeout: Duration::from_secs(self.callback_timeout_secs),
            uploads_dir: self.uploads_dir.clone().filter(|_| local),
            policy: AddressPolicy {
                allow_private: self.allow_private_network,
                allowed_hosts: self.allowed_hosts.clone(),
            },
        }
    }

    /// Time limits of the local server.
    pub fn server_timeouts(&self) -> ServerTimeouts {
        ServerTimeouts {
            header: Duration::from_secs(self.header_timeout_secs),
            body: Duration::from_secs(self.body_timeout_secs),
            idle: Duration::from_secs(self.idle_timeout_secs),
            shutdown: Duration::from_secs(self.shutdown_timeout_secs),
        }
    }

    /// Registry settings.
    pub fn registry_settings(&self) -> RegistrySettings {
        let local = matches!(self.store_url(), Ok(StoreUrl::Local(_)));
        RegistrySettings {
            tmp_dir: self.tmp_dir.clone().unwrap_or_else(std::env::temp_dir),
            zip_limits: ZipLimits {
                max_entries: self.max_zip_entries,
                max_entry_bytes: self.max_uncompressed_bytes,
                max_total_bytes: self.max_uncompressed_bytes,
                ..ZipLimits::default()
            },
            allow_file_urls: local && self.uploads_dir.is_some(),
            node_stale_after: self.node_stale_secs.map(Duration::from_secs),
            ..RegistrySettings::default()
        }
    }
}

#[derive(Debug, clap::Parser)]
struct ArgsOnly {
    #[command(flatten)]
    config: ServiceConfig,
}

impl ServiceConfig {
    /// Parses flags (the environment fills what they leave out), e.g.
    /// `ServiceConfig::from_args(["--store", "/tmp/x"])`.
    pub fn from_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::Parser;
        let argv = std::iter::once(std::ffi::OsString::from("plugin-api"))
            .chain(args.into_iter().map(Into::into));
        ArgsOnly::try_parse_from(argv).map(|a| a.config)
    }
}
