//! The node only ever touches files it installed: plugins placed by hand
//! survive syncs, are never overwritten, and an unreachable or mistyped store
//! removes nothing.

use std::fs;

use serde_json::json;

use crate::common::{lib, random_zip, so_zip, Env};

on_both_stores!(
    hand_placed_plugins_survive,
    unusable_store_removes_nothing,
    another_library_of_the_same_plugin_is_refused
);

async fn hand_placed_plugins_survive(env: Env) {
    let root = env.root();
    // An operator's own sink, and an Echo.so of their own.
    for dir in ["plugins/sinks", "plugins/functions", "etc/sinks"] {
        fs::create_dir_all(root.join(dir)).unwrap();
    }
    fs::write(root.join("plugins/sinks/Manual.so"), lib("print")).unwrap();
    fs::write(root.join("etc/sinks/manual.json"), "{}").unwrap();
    fs::write(root.join("plugins/functions/Echo.so"), b"operator's echo").unwrap();

    env.publish("sources", "random", random_zip()).await;
    env.publish("functions", "echo", so_zip("Echo.so", lib("echo")))
        .await;

    // The registry's echo would overwrite the operator's file: refused.
    let first = env.sync(&[]).await;
    first.assert_failed();
    assert_eq!(first.list("installed"), ["sources/random@"]);
    let err = first.error_of("functions/echo");
    assert!(err.contains("was not installed by kuiper-node"), "{err}");
    assert_eq!(
        env.node_file("plugins/functions/Echo.so"),
        b"operator's echo"
    );

    // The operator removes theirs; echo installs. They also add a file of
    // their own inside random's etc/ tree.
    fs::remove_file(root.join("plugins/functions/Echo.so")).unwrap();
    fs::write(root.join("etc/sources/random/conf/mine.txt"), "mine").unwrap();
    let second = env.run_once(&[]).await;
    second.assert_ok();
    assert_eq!(second.list("installed"), ["functions/echo@"]);
    // Only plugins the agent installed are loaded.
    assert_eq!(
        second.report["loaded"].as_array().unwrap().len(),
        2,
        "{}",
        second.report
    );

    // Everything is dropped from the registry: only the agent's files go.
    env.drop_plugin("sources", "random").await;
    env.drop_plugin("functions", "echo").await;
    let third = env.sync(&[]).await;
    third.assert_ok();
    assert_eq!(
        third.list("removed"),
        ["functions/echo@", "sources/random@"]
    );
    assert_eq!(
        env.node_files(),
        [
            "etc/sinks/manual.json",
            "etc/sources/random/conf/mine.txt",
            "plugins/sinks/Manual.so",
        ]
    );
    assert_eq!(env.node_file("plugins/sinks/Manual.so"), lib("print"));
    // The emptied directories of the agent's own etc/ tree are gone, eKuiper's stay.
    assert!(root.join("plugins/sources").is_dir());
    assert!(root.join("plugins/functions").is_dir());

    let fourth = env.sync(&[]).await;
    fourth.assert_ok();
    assert_eq!(fourth.report["removed"], json!([]));
}

async fn unusable_store_removes_nothing(env: Env) {
    env.publish("sources", "random", random_zip()).await;
    env.sync(&[]).await.assert_ok();
    let before = env.node_files();
    assert_eq!(before.len(), 7, "{before:?}");

    // A store that does not exist: nothing is removed, the error is reported.
    let root = env.root().display().to_string();
    let missing = match env.is_s3() {
        true => "s3://no-such-bucket/registry".to_string(),
        false => env.scratch().join("no-such-store").display().to_string(),
    };
    let run = env
        .node_with_args(&["run", "--once", "--store", &missing, "--root", &root])
        .await;
    run.assert_failed();
    let (plugin, err) = &run.failures()[0];
    assert_eq!(plugin, "/");
    assert!(err.contains("no-such"), "{err}");
    // `run` still loads what the node had installed.
    assert_eq!(
        run.report["loaded"],
        json!([{"type": "sources", "name": "random", "version": "1.0.0", "symbol": "Random"}])
    );
    assert_eq!(env.node_files(), before);
    assert!(
        !env.scratch().join("no-such-store").exists(),
        "a node never creates a store"
    );

    // An S3 outage while listing: the sync fails, nothing is removed.
    if let Some(s3) = &env.s3 {
        s3.fail_with(Some(503));
        let run = env.sync(&[]).await;
        s3.fail_with(None);
        run.assert_failed();
        assert_eq!(env.node_files(), before);
        assert_eq!(run.report["removed"], json!([]));
    }

    // A usage error is exit code 2 with clap's message, not a report.
    let out = env
        .node_command(&["sync", "--store", "gs://x", "--root", &root])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid store"));
}

/// eKuiper takes `Print.so` and `Print@v1.0.0.so` for one plugin, opens one
/// and reports the other's version: the node never puts a second library of
/// a plugin beside one it did not install.
async fn another_library_of_the_same_plugin_is_refused(env: Env) {
    let root = env.root();
    fs::create_dir_all(root.join("plugins/sinks")).unwrap();
    fs::write(root.join("plugins/sinks/print.so"), lib("print")).unwrap();
    env.publish("sinks", "print", so_zip("Print@v1.0.0.so", lib("print")))
        .await;
    let run = env.sync(&[]).await;
    run.assert_failed();
    let error = run.error_of("sinks/print");
    assert!(
        error.contains("plugins/sinks/print.so is another library of plugin print")
            && error.contains("remove it"),
        "{error}"
    );
    assert_eq!(env.node_files(), ["plugins/sinks/print.so"]);
    // Once the operator removed it, the plugin installs.
    fs::remove_file(root.join("plugins/sinks/print.so")).unwrap();
    env.sync(&[]).await.assert_ok();
    assert_eq!(env.node_files(), ["plugins/sinks/Print@v1.0.0.so"]);
}
