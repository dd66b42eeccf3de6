//! Stock eKuiper as a child of `kuiper-node ekuiper`: started in the synced
//! directory once the sync is done, every stop signal passed on to it, and
//! its exit code returned as kuiper-node's, so that a container or service
//! manager sees eKuiper itself.

use std::ffi::OsString;
use std::future::Future;
use std::path::Path;
use std::process::ExitStatus;

use tokio::process::{Child, Command};
use tokio::signal::unix::{signal, Signal, SignalKind};

/// The signals passed on to the child.
const FORWARDED: [(SignalKind, libc::c_int); 4] = [
    (SignalKind::terminate(), libc::SIGTERM),
    (SignalKind::interrupt(), libc::SIGINT),
    (SignalKind::hangup(), libc::SIGHUP),
    (SignalKind::quit(), libc::SIGQUIT),
];

/// Signal handlers, installed before the child starts so that none is lost.
pub struct Forwarder {
    streams: Vec<(Signal, libc::c_int)>,
}

impl Forwarder {
    /// Starts listening for the forwarded signals.
    pub fn install() -> Self {
        let streams = FORWARDED
            .iter()
            .filter_map(|(kind, sig)| signal(*kind).ok().map(|s| (s, *sig)))
            .collect();
        Forwarder { streams }
    }

    /// The next signal received.
    async fn next(&mut self) -> libc::c_int {
        if self.streams.is_empty() {
            return std::future::pending().await;
        }
        let futures = self.streams.iter_mut().map(|(s, sig)| {
            let sig = *sig;
            Box::pin(async move {
                s.recv().await;
                sig
            })
        });
        futures_util::future::select_all(futures).await.0
    }
}

/// Starts `program args` in `root`, with eKuiper's base directory set to it
/// (`KuiperBaseKey`) unless the environment already sets one.
pub fn spawn(program: &Path, args: &[OsString], root: &Path) -> Result<Child, String> {
    let mut cmd = Command::new(program);
    cmd.args(args).current_dir(root).kill_on_drop(false);
    if std::env::var_os("KuiperBaseKey").is_none() {
        cmd.env("KuiperBaseKey", root);
    }
    cmd.spawn()
        .map_err(|e| format!("cannot start eKuiper {}: {e}", program.display()))
}

/// Waits for `child` to exit, passing on every signal `forwarder` receives,
/// and runs `started` beside it (it is dropped if the child exits first).
pub async fn supervise(
    mut child: Child,
    mut forwarder: Forwarder,
    started: impl Future<Output = ()>,
) -> std::io::Result<ExitStatus> {
    let pid = child.id();
    let mut started = std::pin::pin!(started);
    let mut started_done = false;
    loop {
        tokio::select! {
            status = child.wait() => return status,
            sig = forwarder.next() => {
                if let Some(pid) = pid {
                    // SAFETY: a signal to our own child, not yet reaped.
                    unsafe { libc::kill(pid as libc::pid_t, sig) };
                }
            }
            () = &mut started, if !started_done => started_done = true,
        }
    }
}

/// The exit code a shell would give for `status`: the child's code, or 128
/// plus the signal that killed it.
pub fn exit_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => u8::try_from(c).unwrap_or(1),
        (None, Some(s)) => u8::try_from(128 + s).unwrap_or(255),
        _ => 1,
    }
}
