//! A sync killed part-way (SIGKILL, while it is in the middle of installing)
//! leaves only whole libraries under `plugins/`, and the next sync repairs the
//! directory to the registry's state. A plugin that crashes while it loads
//! fails alone: `run` reports it and loads the others.

use std::path::Path;
use std::time::Duration;

use serde_json::json;

use crate::common::{c_lib, files_under, lib, random_zip, so_zip, Backend, Env};
use kuiper_harness::plugins::CPlugin;
use kuiper_harness::zips::ZipBuilder;

on_both_stores!(
    killed_sync_is_repaired_by_the_next,
    killed_at_any_moment_only_whole_libraries
);

/// Waits for `path` to appear (the sync reached the point the test kills it at).
async fn wait_for(path: &Path) -> String {
    for _ in 0..2400 {
        if let Ok(s) = std::fs::read_to_string(path) {
            if s.ends_with('\n') {
                return s;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{} never appeared", path.display());
}

async fn killed_sync_is_repaired_by_the_next(env: Env) {
    env.publish("sources", "random", random_zip()).await;
    env.publish("sinks", "print", so_zip("Print.so", lib("print")))
        .await;
    env.publish("functions", "echo", so_zip("Echo.so", lib("echo")))
        .await;
    env.sync(&[]).await.assert_ok();

    // The registry moves on: print 2.0.0, echo dropped, and a new sink whose
    // install.sh blocks the first time it runs (the point where the sync is killed).
    let v2 = c_lib("print", 1, "2.0.0");
    env.update("sinks", "print", so_zip("Print@v2.0.0.so", v2.clone()))
        .await;
    env.drop_plugin("functions", "echo").await;
    let started = env.scratch().join("blocker-started");
    let script =
        "if [ ! -e \"$1\" ]; then echo $$ > \"$1.tmp\"; mv \"$1.tmp\" \"$1\"; exec sleep 600; fi\n";
    let blocker = ZipBuilder::new()
        .file("Blocker.so", c_lib("blocker", 1, "1"))
        .file("install.sh", script)
        .build();
    env.publish_with(
        "sinks",
        "blocker",
        blocker,
        json!({"shellParas": [started.display().to_string()]}),
    )
    .await;

    let store = env.store_arg();
    let root = env.root().display().to_string();
    let mut child = env
        .node_command(&[
            "sync",
            "--store",
            &store,
            "--root",
            &root,
            "--allow-install-scripts",
        ])
        .spawn()
        .expect("spawn kuiper-node");
    let pid: libc::pid_t = wait_for(&started).await.trim().parse().expect("script pid");
    // Meanwhile another sync of the same directory is refused, changing nothing.
    let concurrent = env.sync(&[]).await;
    concurrent.assert_failed();
    let (what, err) = &concurrent.failures()[0];
    assert_eq!(what, "/");
    assert!(err.contains("another kuiper-node is syncing"), "{err}");
    child.kill().await.expect("SIGKILL kuiper-node");
    // SAFETY: killing the process group of the script this test made block.
    unsafe { libc::kill(-pid, libc::SIGKILL) };
    assert!(!child.wait().await.unwrap().success());

    // What the killed sync left: only whole libraries in plugins/, all of
    // them ones the registry published; blocker's files only in the agent's
    // temporary directory, never under a .so name in plugins/.
    let known = [lib("random"), lib("print"), lib("echo"), v2.clone()];
    for f in files_under(&env.root().join("plugins")) {
        assert!(f.ends_with(".so"), "stray file plugins/{f}");
        let bytes = env.node_file(&format!("plugins/{f}"));
        assert!(
            known.contains(&bytes),
            "plugins/{f} is not a whole published library"
        );
    }
    assert!(!env.root().join("plugins/sinks/Blocker.so").exists());
    let leftovers = files_under(&env.root().join(".kuiper-node/tmp"));
    assert!(
        leftovers.iter().any(|f| f.starts_with("sinks-blocker/")),
        "the sync was killed while installing blocker: {leftovers:?}"
    );
    let manifest = std::fs::read(env.root().join(".kuiper-node/manifest.json")).unwrap();
    serde_json::from_slice::<serde_json::Value>(&manifest)
        .expect("the manifest is never half-written");

    // The next run repairs everything and loads the new state.
    let run = env.run_once(&["--allow-install-scripts"]).await;
    run.assert_ok();
    assert_eq!(run.list("installed"), ["sinks/blocker@"]);
    let print_state = [run.list("updated"), run.list("unchanged")].concat();
    assert!(
        print_state.contains(&"sinks/print@2.0.0".to_string()),
        "{}",
        run.report
    );
    assert_eq!(
        run.report["loaded"],
        json!([
            {"type": "sources", "name": "random", "version": "1.0.0", "symbol": "Random"},
            {"type": "sinks", "name": "blocker", "version": "1", "symbol": "Blocker"},
            {"type": "sinks", "name": "print", "version": "2.0.0", "symbol": "Print"},
        ])
    );
    assert_eq!(
        env.node_files(),
        [
            "data/sources/random.json",
            "data/sources/random.yaml",
            "data/sources/random/conf/extra.txt",
            "etc/sources/random.json",
            "etc/sources/random.yaml",
            "etc/sources/random/conf/extra.txt",
            "plugins/sinks/Blocker.so",
            "plugins/sinks/Print@v2.0.0.so",
            "plugins/sources/Random.so",
        ]
    );
    assert_eq!(
        files_under(&env.root().join(".kuiper-node/tmp")),
        Vec::<String>::new()
    );
    let again = env.sync(&["--allow-install-scripts"]).await;
    again.assert_ok();
    assert_eq!(again.list("unchanged").len(), 3);
}

/// Kills syncs of a dozen large plugins after various delays (wherever that
/// lands: download, extraction, renames, manifest), checking each time that
/// only whole libraries are in `plugins/` and that the next sync repairs all.
async fn killed_at_any_moment_only_whole_libraries(env: Env) {
    let so = lib("print");
    let names: Vec<String> = (0..12).map(|i| format!("s{i}")).collect();
    for n in &names {
        // `s3` exports `S3`: its library is `S3.so`.
        env.publish("sinks", n, so_zip(&format!("S{}.so", &n[1..]), so.clone()))
            .await;
    }
    let store = env.store_arg();
    for (i, delay_ms) in [0u64, 3, 10, 25, 50, 100, 200, 400].into_iter().enumerate() {
        let root = env.scratch().join(format!("node{i}"));
        let root_s = root.display().to_string();
        let mut child = env
            .node_command(&["sync", "--store", &store, "--root", &root_s, "--jobs", "4"])
            .spawn()
            .expect("spawn kuiper-node");
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        let _ = child.kill().await;
        let _ = child.wait().await;

        for f in files_under(&root.join("plugins")) {
            assert!(
                f.starts_with("sinks/S") && f.ends_with(".so"),
                "stray file plugins/{f} (kill after {delay_ms} ms)"
            );
            let bytes = std::fs::read(root.join("plugins").join(&f)).unwrap();
            assert!(
                bytes == so,
                "plugins/{f} is not whole (kill after {delay_ms} ms)"
            );
        }
        if let Ok(m) = std::fs::read(root.join(".kuiper-node/manifest.json")) {
            serde_json::from_slice::<serde_json::Value>(&m)
                .expect("the manifest is never half-written");
        }

        let out = env
            .node_command(&["sync", "--store", &store, "--root", &root_s])
            .output()
            .await
            .unwrap();
        let run = crate::common::parse_run(out);
        run.assert_ok();
        let done = [
            run.list("installed"),
            run.list("updated"),
            run.list("unchanged"),
        ]
        .concat();
        assert_eq!(done.len(), names.len(), "{}", run.report);
        let mut expected: Vec<String> = (0..12).map(|i| format!("sinks/S{i}.so")).collect();
        expected.sort();
        assert_eq!(files_under(&root.join("plugins")), expected);
        assert_eq!(
            files_under(&root.join(".kuiper-node/tmp")),
            Vec::<String>::new()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_crashes_while_loading_fails_alone() {
    let env = Env::start(Backend::Local).await;
    env.publish("sinks", "print", so_zip("Print.so", lib("print")))
        .await;
    // An initialiser that calls abort(), and a descriptor whose name is a
    // wild pointer.
    let aborts = CPlugin {
        defect: 1,
        ..CPlugin::new("aborts", 1, "1")
    };
    env.publish("sinks", "aborts", so_zip("Aborts.so", aborts.so()))
        .await;
    let wild = CPlugin {
        defect: 2,
        ..CPlugin::new("wild", 1, "1")
    };
    env.publish("sinks", "wild", so_zip("Wild.so", wild.so()))
        .await;

    // The same on the first start and on every restart.
    for start in 0..3 {
        let run = env.run_once(&[]).await;
        run.assert_failed();
        assert_eq!(
            run.report["loaded"],
            json!([{"type": "sinks", "name": "print", "version": "1.0.0", "symbol": "Print"}]),
            "start {start}"
        );
        assert_eq!(
            run.failures(),
            [
                (
                    "sinks/aborts".to_string(),
                    "plugin sinks/aborts crashed while loading: killed by signal SIGABRT; not loaded"
                        .to_string()
                ),
                (
                    "sinks/wild".to_string(),
                    "plugin sinks/wild crashed while loading: killed by signal SIGSEGV; not loaded"
                        .to_string()
                ),
            ],
            "start {start}"
        );
        // Only the library that loaded is remembered (not probed again).
        let probed: serde_json::Value = serde_json::from_slice(
            &std::fs::read(env.root().join(".kuiper-node/probed.json")).unwrap(),
        )
        .unwrap();
        let keys: Vec<&String> = probed["passed"].as_object().unwrap().keys().collect();
        assert_eq!(keys, ["sinks/print"], "start {start}");
    }
}

/// A library that loads alone in the probe but crashes `run` itself: the
/// start it crashes leaves a marker, and every later start skips it with a
/// report saying why, until another version is installed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_crashes_run_itself_is_skipped_on_the_next_start() {
    let env = Env::start(Backend::Local).await;
    env.publish("sinks", "print", so_zip("Print.so", lib("print")))
        .await;
    let clash = CPlugin {
        defect: 3,
        ..CPlugin::new("clash", 1, "1")
    };
    env.publish("sinks", "clash", so_zip("Clash.so", clash.so()))
        .await;
    let root = env.root();
    let root_s = root.to_string_lossy().into_owned();
    let store = env.store_arg();

    // The first start passes the probe, then dies loading it in-process.
    let first = env
        .node_command(&["run", "--once", "--store", &store, "--root", &root_s])
        .output()
        .await
        .unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&first.status),
        Some(libc::SIGABRT),
        "{first:?}"
    );

    // Every later start reports it and loads the rest.
    for start in 1..3 {
        let run = env.run_once(&[]).await;
        run.assert_failed();
        assert_eq!(
            run.report["loaded"],
            json!([{"type": "sinks", "name": "print", "version": "1.0.0", "symbol": "Print"}]),
            "start {start}"
        );
        let failures = run.failures();
        assert_eq!(failures.len(), 1, "start {start}: {failures:?}");
        assert_eq!(failures[0].0, "sinks/clash");
        assert!(
            failures[0].1.starts_with(
                "plugin sinks/clash crashed kuiper-node run while loading on an earlier start"
            ),
            "start {start}: {}",
            failures[0].1
        );
    }

    // Another version of it is tried again, and loads.
    let fixed = CPlugin::new("clash", 1, "2");
    env.update("sinks", "clash", so_zip("Clash.so", fixed.so()))
        .await;
    let run = env.run_once(&[]).await;
    run.assert_ok();
    assert_eq!(
        run.report["loaded"].as_array().map(Vec::len),
        Some(2),
        "{}",
        run.report
    );
}
