//! Running a plugin's `install.sh` in its staging directory.

use std::fs::{self, File};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::time::Duration;

/// Runs `/bin/sh install.sh {paras...}` in `dir`, in its own process group,
/// killing the group after `timeout`. Output goes to `dir/../install.log`.
pub(super) async fn run_install_script(
    dir: &Path,
    paras: &[String],
    timeout: Duration,
) -> Result<(), String> {
    let log_path = dir.with_file_name("install.log");
    let log = File::create(&log_path)
        .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
    let log2 = log
        .try_clone()
        .map_err(|e| format!("install.sh log: {e}"))?;
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.arg("install.sh")
        .args(paras)
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log2)
        .process_group(0);
    let mut child = tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run /bin/sh install.sh: {e}"))?;
    let pgid = child.id().map(|p| p as libc::pid_t);
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => return Err(format!("install.sh: {e}")),
        Err(_) => {
            if let Some(pgid) = pgid {
                // SAFETY: plain syscall on the script's own process group.
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
            }
            let _ = child.wait().await;
            return Err(format!(
                "install.sh did not finish within {}; it was killed and the plugin was not installed{}",
                humantime::format_duration(timeout),
                log_tail(&log_path)
            ));
        }
    };
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "install.sh failed ({status}); the plugin was not installed{}",
            log_tail(&log_path)
        ))
    }
}

/// The last lines of the script's output, for the error message.
fn log_tail(path: &Path) -> String {
    let Ok(bytes) = fs::read(path) else {
        return String::new();
    };
    let start = bytes.len().saturating_sub(1000);
    let text = String::from_utf8_lossy(&bytes[start..]);
    let text = text.trim();
    if text.is_empty() {
        String::new()
    } else {
        format!(": {text}")
    }
}
