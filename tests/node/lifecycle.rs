//! The main story: publish, run, drop and update, run again, run with nothing
//! changed; and `run` staying up until SIGTERM.

use std::os::unix::fs::MetadataExt;
use std::sync::atomic::Ordering;

use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::common::{c_lib, lib, random_zip, so_zip, Env};

on_both_stores!(publish_update_drop_and_rerun, run_waits_for_sigterm);

async fn publish_update_drop_and_rerun(env: Env) {
    env.publish("sources", "random", random_zip()).await;
    env.publish("sinks", "print", so_zip("Print.so", lib("print")))
        .await;
    env.publish("functions", "echo", so_zip("Echo.so", lib("echo")))
        .await;

    // First run: all three installed in eKuiper's layout and loaded.
    let first = env.run_once(&[]).await;
    first.assert_ok();
    assert_eq!(
        first.list("installed"),
        ["functions/echo@", "sinks/print@", "sources/random@"]
    );
    assert_eq!(
        first.report["loaded"],
        json!([
            {"type": "sources", "name": "random", "version": "1.0.0", "symbol": "Random"},
            {"type": "sinks", "name": "print", "version": "1.0.0", "symbol": "Print"},
            {"type": "functions", "name": "echo", "version": "1.0.0", "symbol": "Echo"},
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
            "plugins/functions/Echo.so",
            "plugins/sinks/Print.so",
            "plugins/sources/Random.so",
        ]
    );
    assert_eq!(env.node_file("plugins/sources/Random.so"), lib("random"));
    assert_eq!(
        env.node_file("etc/sources/random.yaml"),
        b"default:\n  interval: 1000\n"
    );
    assert_eq!(env.node_file("etc/sources/random/conf/extra.txt"), b"extra");
    assert!(
        first.stderr.contains("installed"),
        "progress on stderr: {}",
        first.stderr
    );

    // The registry drops echo and gets print 2.0.0 (a C build of the sink).
    env.drop_plugin("functions", "echo").await;
    let v2 = c_lib("print", 1, "2.0.0");
    env.update("sinks", "print", so_zip("Print@v2.0.0.so", v2.clone()))
        .await;

    let second = env.run_once(&[]).await;
    second.assert_ok();
    assert_eq!(second.list("removed"), ["functions/echo@"]);
    assert_eq!(second.list("updated"), ["sinks/print@2.0.0"]);
    assert_eq!(second.list("unchanged"), ["sources/random@"]);
    assert_eq!(second.list("installed"), Vec::<String>::new());
    assert_eq!(
        second.report["loaded"],
        json!([
            {"type": "sources", "name": "random", "version": "1.0.0", "symbol": "Random"},
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
            "plugins/sinks/Print@v2.0.0.so",
            "plugins/sources/Random.so",
        ]
    );
    assert_eq!(env.node_file("plugins/sinks/Print@v2.0.0.so"), v2);

    // Third run, nothing changed: nothing is downloaded. The stored zips are
    // made unreadable first, so a download could not succeed.
    for (ty, name) in [("sources", "random"), ("sinks", "print")] {
        env.write_object(&env.blob_key(ty, name).await, b"gone".to_vec())
            .await;
    }
    let before = env.s3.as_ref().map(|s| {
        (
            s.stats().gets.load(Ordering::SeqCst),
            s.stats().lists.load(Ordering::SeqCst),
        )
    });
    let third = env.run_once(&[]).await;
    third.assert_ok();
    assert_eq!(
        third.list("unchanged"),
        ["sinks/print@2.0.0", "sources/random@"]
    );
    for list in ["installed", "updated", "removed"] {
        assert_eq!(third.report[list], json!([]), "{list}: {}", third.report);
    }
    assert_eq!(third.report["loaded"].as_array().unwrap().len(), 2);
    if let (Some(s3), Some((gets, lists))) = (&env.s3, before) {
        // One listing and no read: the listing shows the tags the plugins
        // were installed from.
        assert_eq!(s3.stats().gets.load(Ordering::SeqCst) - gets, 0);
        assert_eq!(s3.stats().lists.load(Ordering::SeqCst) - lists, 1);
    }

    // `sync` prints the same report shape without `loaded`.
    let sync = env.sync(&[]).await;
    sync.assert_ok();
    assert!(sync.report.get("loaded").is_none(), "{}", sync.report);
    assert_eq!(sync.list("unchanged").len(), 2);
}

async fn run_waits_for_sigterm(env: Env) {
    env.publish("sources", "random", random_zip()).await;
    // Store and root from the environment this time.
    let mut cmd = env.node_command(&["run"]);
    cmd.env("KUIPER_STORE", env.store_arg())
        .env("KUIPER_NODE_ROOT", env.root());
    let mut child = cmd.spawn().expect("spawn kuiper-node run");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines.next_line().await.unwrap().expect("a report line");
    let report: serde_json::Value = serde_json::from_str(&line).expect("JSON report");
    assert_eq!(
        report["loaded"],
        json!([{"type": "sources", "name": "random", "version": "1.0.0", "symbol": "Random"}])
    );
    // Still running with the plugin loaded until told to stop.
    assert!(child.try_wait().unwrap().is_none(), "run must keep running");

    // Meanwhile the registry gets a new build under the same file name, and a
    // sync installs it: as a new file renamed over the name, never by writing
    // into the library the running node has mapped.
    let lib_path = env.root().join("plugins/sources/Random.so");
    let before = std::fs::metadata(&lib_path).unwrap();
    let v3 = c_lib("random", 0, "3.0.0");
    let zip = kuiper_harness::zips::ZipBuilder::new()
        .file("Random.so", v3.clone())
        .file("random.yaml", "default: {}\n")
        // etc/conf was a directory (etc/conf/extra.txt) and becomes a file.
        .file("etc/conf", "now a file")
        .build();
    env.update("sources", "random", zip).await;
    let sync = env.sync(&[]).await;
    sync.assert_ok();
    assert_eq!(sync.list("updated"), ["sources/random@"]);
    let after = std::fs::metadata(&lib_path).unwrap();
    assert_ne!(
        before.ino(),
        after.ino(),
        "the library must be replaced, not rewritten"
    );
    assert_eq!(std::fs::read(&lib_path).unwrap(), v3);
    assert_eq!(env.node_file("etc/sources/random/conf"), b"now a file");
    assert!(
        child.try_wait().unwrap().is_none(),
        "the running node is unaffected"
    );
    let pid = child.id().expect("pid") as libc::pid_t;
    // SAFETY: signalling the child this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = child.wait().await.unwrap();
    assert!(status.success(), "graceful exit on SIGTERM: {status}");
    assert_eq!(lines.next_line().await.unwrap(), None, "one report only");
}
