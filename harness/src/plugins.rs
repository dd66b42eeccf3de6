//! Real `.so` plugins, compiled once per test run from the example crates in
//! `harness/plugins/` (Rust `cdylib`s exporting the ABI v1 descriptor).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The example plugins: crate directory name, plugin type directory, exported symbol.
pub const EXAMPLES: [(&str, &str, &str); 3] = [
    ("random", "sources", "Random"),
    ("print", "sinks", "Print"),
    ("echo", "functions", "Echo"),
];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The target directory used for the example plugins (separate from the
/// outer build, so a test can build them while `cargo test` runs).
pub fn target_dir() -> PathBuf {
    workspace_root().join("target").join("example-plugins")
}

static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// Builds every example plugin (once per process) and returns the directory
/// holding `libplugin_{name}.so`.
pub fn build_examples() -> Result<PathBuf, String> {
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.current_dir(workspace_root())
                .arg("build")
                .arg("--quiet")
                .env("CARGO_TARGET_DIR", target_dir());
            for (name, _, _) in EXAMPLES {
                cmd.arg("-p").arg(format!("plugin-{name}"));
            }
            let out = cmd.output().map_err(|e| format!("cannot run cargo: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "building the example plugins failed:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            Ok(target_dir().join("debug"))
        })
        .clone()
}

/// The bytes of example plugin `name` (`random`, `print` or `echo`).
pub fn example_so(name: &str) -> Vec<u8> {
    let dir = build_examples().expect("example plugins build");
    let path = dir.join(format!("libplugin_{name}.so"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}
