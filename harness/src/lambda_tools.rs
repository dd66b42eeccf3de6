//! The tools of the Lambda path: cargo-lambda with zig (PyPI wheels, in the
//! virtualenv `.ci/lambda-tools` makes) and qemu user-mode emulation with an
//! aarch64 glibc (Debian's `qemu-user`, `libc6-arm64-cross`).
//!
//! A missing tool is a panic naming the command that installs it: the tests
//! that need one never skip.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// What installs the Lambda tools (`.ci/run` runs it).
pub const INSTALL: &str = "bash .ci/lambda-tools   # pip install cargo-lambda==1.9.2 ziglang==0.15.2 into ~/.cache/kuiper-lambda-venv; apt-get install qemu-user libc6-arm64-cross";

/// The virtualenv holding cargo-lambda and zig: `$KUIPER_LAMBDA_VENV`, or
/// `~/.cache/kuiper-lambda-venv`.
pub fn venv() -> PathBuf {
    match std::env::var_os("KUIPER_LAMBDA_VENV") {
        Some(v) => PathBuf::from(v),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
            .join(".cache/kuiper-lambda-venv"),
    }
}

/// `PATH` with the virtualenv's `bin` first: cargo-lambda finds zig through
/// its Python (`python3 -m ziglang`), and the nested `cargo` through `PATH`.
pub fn path() -> OsString {
    let mut dirs = vec![venv().join("bin")];
    if let Some(cargo) = std::env::var_os("CARGO") {
        if let Some(d) = Path::new(&cargo).parent() {
            dirs.push(d.to_path_buf());
        }
    }
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(dirs).expect("PATH entries")
}

/// The `cargo-lambda` binary; panics with [`INSTALL`] when it is absent.
pub fn cargo_lambda() -> PathBuf {
    let found = std::env::split_paths(&path())
        .map(|d| d.join("cargo-lambda"))
        .find(|p| p.is_file());
    match found {
        Some(p) => p,
        None => panic!(
            "cargo-lambda not found (in {} or PATH); install it with:\n  {INSTALL}",
            venv().display()
        ),
    }
}

/// `qemu-aarch64` and the sysroot (`-L`) holding the aarch64 dynamic loader;
/// panics with [`INSTALL`] when either is absent.
pub fn qemu_aarch64() -> (PathBuf, PathBuf) {
    let qemu = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("qemu-aarch64"))
        .find(|p| p.is_file());
    let sysroot = PathBuf::from("/usr/aarch64-linux-gnu");
    match qemu {
        Some(q) if sysroot.join("lib/ld-linux-aarch64.so.1").exists() => (q, sysroot),
        Some(_) => panic!(
            "no aarch64 glibc in {}; install it with:\n  {INSTALL}",
            sysroot.display()
        ),
        None => panic!("qemu-aarch64 not found on PATH; install it with:\n  {INSTALL}"),
    }
}
