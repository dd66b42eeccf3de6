//! The artifacts `template.yaml` deploys, built as the README says
//! (`cargo lambda build --profile deploy --arm64 --bin plugin-api`, and
//! `--x86-64`), started against the harness's Lambda Runtime API emulator and
//! answering API Gateway v2 events: the aarch64 one under qemu user-mode
//! emulation, the x86_64 one natively. Needs cargo-lambda, zig and qemu
//! (`bash .ci/lambda-tools`); without them these tests fail, they never skip.

use std::path::{Path, PathBuf};
use std::process::Command;

use kuiper_harness::lambda_round_trip::function_round_trip;
use kuiper_harness::lambda_runtime::Source;
use kuiper_harness::lambda_tools::{cargo_lambda, path, qemu_aarch64};
use kuiper_harness::rig::repo_root;
use object::elf;
use object::read::elf::{ElfFile64, FileHeader, ProgramHeader};
use object::{Architecture, Endianness, Object};

/// Runs `cargo lambda build --profile deploy {arch} --bin plugin-api` into
/// `lambda_dir` (relative to the repository) and returns its bootstrap.
fn build(arch: &[&str], lambda_dir: &str) -> PathBuf {
    let out = Command::new(cargo_lambda())
        .current_dir(repo_root())
        .env("PATH", path())
        .args(["lambda", "build", "--profile", "deploy"])
        .args(arch)
        .args(["--bin", "plugin-api", "--lambda-dir", lambda_dir])
        .output()
        .expect("run cargo lambda build");
    assert!(
        out.status.success(),
        "cargo lambda build {arch:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `.ci/run` prints its size.
    let bootstrap = repo_root().join(lambda_dir).join("plugin-api/bootstrap");
    assert!(bootstrap.is_file(), "no {}", bootstrap.display());
    bootstrap
}

/// Asserts that `bootstrap` is an ELF executable (not a library) for `arch`.
fn assert_executable_for(bootstrap: &Path, arch: Architecture) {
    let bytes = std::fs::read(bootstrap).unwrap();
    let elf = ElfFile64::<Endianness>::parse(&*bytes).expect("a 64-bit ELF file");
    let shown = bootstrap.display();
    assert_eq!(elf.architecture(), arch, "{shown}");
    // A position-independent executable is ET_DYN, like a shared library;
    // what makes it a program is an interpreter to start it and an entry.
    let endian = elf.endian();
    let interp = elf
        .elf_program_headers()
        .iter()
        .any(|ph| ph.p_type(endian) == elf::PT_INTERP);
    match elf.elf_header().e_type(endian) {
        elf::ET_EXEC => {}
        elf::ET_DYN => assert!(interp && elf.entry() != 0, "{shown} is a library"),
        other => panic!("{shown} is ELF type {other}, not an executable"),
    }
}

/// Starts `cmd` (the bootstrap, maybe under qemu) as the function and runs
/// the round trip through API Gateway v2 events.
async fn answers_events(cmd: tokio::process::Command) {
    function_round_trip(cmd, &[], &[Source::ApiGateway]).await;
}

/// The aarch64 artifact, at the path `template.yaml`'s CodeUri names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arm64_bootstrap_answers_under_qemu() {
    let bootstrap = build(&["--arm64"], "target/lambda");
    assert_eq!(
        bootstrap,
        repo_root().join("target/lambda/plugin-api/bootstrap")
    );
    assert_executable_for(&bootstrap, Architecture::Aarch64);
    let (qemu, sysroot) = qemu_aarch64();
    let mut cmd = tokio::process::Command::new(qemu);
    cmd.arg("-L").arg(sysroot).arg(&bootstrap);
    answers_events(cmd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x86_64_bootstrap_answers_natively() {
    // With the host's compiler: zig 0.15's clang refuses libdeflate's AVX-512
    // code (no `evex512`); the template deploys arm64, which zig builds.
    let bootstrap = build(&["--x86-64", "--compiler", "cargo"], "target/lambda-x86_64");
    assert_executable_for(&bootstrap, Architecture::X86_64);
    answers_events(tokio::process::Command::new(&bootstrap)).await;
}

/// `cargo lambda deploy` gives the function no variables from `Cargo.toml`:
/// a deployed function's filesystem is read-only, so `KUIPER_STORE=./data`
/// there would break every create, and the stack sets its own. Measured with
/// cargo-lambda 1.9.2: `[package.metadata.lambda.env]` does not reach a
/// deploy, `[package.metadata.lambda.deploy.env]` does: this fails on any
/// variable the dry run would set.
/// (A dry run: nothing leaves the machine; the credentials are dummies.)
#[test]
fn cargo_lambda_deploy_sets_no_variables() {
    // `deploy` zips {lambda-dir}/plugin-api/bootstrap, any Linux executable:
    // this test's own binary stands in, which keeps it off the real build.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("plugin-api")).unwrap();
    let exe = std::env::current_exe().unwrap();
    std::fs::copy(exe, dir.path().join("plugin-api/bootstrap")).unwrap();
    let out = Command::new(cargo_lambda())
        .current_dir(repo_root())
        .env("PATH", path())
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
        .env("AWS_SECRET_ACCESS_KEY", "dummy")
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .args(["lambda", "deploy", "--dry", "--output-format", "json"])
        .args(["--binary-name", "plugin-api", "--lambda-dir"])
        .arg(dir.path())
        .output()
        .expect("run cargo lambda deploy --dry");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cargo lambda deploy --dry failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Its progress line may come first on stdout when it is not a terminal.
    let json = &stdout[stdout.find('{').unwrap_or(0)..];
    let plan: serde_json::Value = serde_json::from_str(json).expect("a JSON plan");
    let env = &plan["config"]["env_var"];
    assert!(env.is_null() || env == &serde_json::json!([]), "{plan}");
    assert!(!stdout.contains("KUIPER_STORE"), "{stdout}");
}
