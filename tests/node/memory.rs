//! The node's memory budget (`--memory-bytes`): it bounds what a sync holds
//! in memory, never what it installs.

use std::path::Path;

use kuiper_harness::zips::compressible;
use tokio::io::{AsyncBufReadExt as _, BufReader};

use crate::common::{files_under, lib, parse_run, random_zip, so_zip, Env, NodeRun};

on_both_stores!(memory_budget_bounds_memory_not_what_is_installed);

/// `kuiper-node run --jobs 1` into `root` with `extra` flags, until its
/// report is out: the report, and the node's peak resident memory in MiB so
/// far (the sync and the loading), read while it waits for a signal. Then
/// stops it. One plugin at a time, so that each has the whole budget.
async fn run_measured(env: &Env, root: &Path, extra: &[&str]) -> (NodeRun, f64) {
    let (store, root) = (env.store_arg(), root.display().to_string());
    let mut args = vec!["run", "--store", &store, "--root", &root, "--jobs", "1"];
    args.extend_from_slice(extra);
    let mut child = env.node_command(&args).spawn().expect("run kuiper-node");
    let mut stdout = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut stdout)
        .await
        .expect("read the report");
    if stdout.is_empty() {
        let out = child.wait_with_output().await.expect("kuiper-node ends");
        panic!(
            "kuiper-node ended without a report ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let pid = child.id().expect("kuiper-node runs");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let peak_kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    // SAFETY: signalling the child this test started.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) }, 0);
    let mut out = child.wait_with_output().await.expect("kuiper-node ends");
    out.stdout = stdout.into_bytes();
    (parse_run(out), peak_kib / 1024.0)
}

/// A plugin with a 20 MiB library (about 10 MiB deflated) synced and loaded
/// with the default budget, which holds the zip, the library's compressed
/// bytes and the library in memory, and with `--memory-bytes 0`, which
/// streams all three through disk: the same files; without a budget, about
/// the memory of a node with a small plugin only, and at least the library's
/// size less than with the default one (the big plugin's zip and its
/// library twice over, about 50 MiB, fit in the default 64 MiB, so it is
/// decoded whole).
async fn memory_budget_bounds_memory_not_what_is_installed(env: Env) {
    const MIB: usize = 1 << 20;
    env.publish("sources", "random", random_zip()).await;
    let scratch = env.scratch();
    let (small, small_rss) =
        run_measured(&env, &scratch.join("small"), &["--memory-bytes", "0"]).await;
    small.assert_ok();

    let mut big = lib("print");
    big.extend(compressible(16 * MIB, 7));
    let big_mib = big.len() as f64 / MIB as f64;
    env.publish("sinks", "print", so_zip("Print.so", big.clone()))
        .await;
    let (streamed, streamed_rss) =
        run_measured(&env, &scratch.join("streamed"), &["--memory-bytes", "0"]).await;
    streamed.assert_ok();
    let (in_memory, in_memory_rss) = run_measured(&env, &scratch.join("in-memory"), &[]).await;
    in_memory.assert_ok();

    for run in [&streamed, &in_memory] {
        assert_eq!(run.list("installed"), ["sinks/print@", "sources/random@"]);
    }
    let files = |root: &Path| -> Vec<(String, Vec<u8>)> {
        files_under(root)
            .into_iter()
            .filter(|f| !f.starts_with(".kuiper-node/"))
            .map(|f| {
                let bytes = std::fs::read(root.join(&f)).expect("read installed file");
                (f, bytes)
            })
            .collect()
    };
    let installed = files(&scratch.join("streamed"));
    assert!(
        installed.contains(&("plugins/sinks/Print.so".to_string(), big)),
        "{:?}",
        installed.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    assert!(installed == files(&scratch.join("in-memory")));
    let figures = format!(
        "peak RSS with --memory-bytes 0: {small_rss:.1} MiB with the small plugin alone, \
         {streamed_rss:.1} MiB with the {big_mib:.1} MiB library too; \
         {in_memory_rss:.1} MiB with the default budget"
    );
    // Without a budget, installing and loading the big library costs about
    // what the small plugin alone does: it is never held in memory whole.
    assert!(streamed_rss < small_rss + big_mib / 3.0, "{figures}");
    // The default budget holds at least the library in memory.
    assert!(streamed_rss + big_mib <= in_memory_rss, "{figures}");
}
