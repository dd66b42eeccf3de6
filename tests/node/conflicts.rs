//! Stores written before the registry refused them may hold plugins that
//! eKuiper cannot tell apart: names of one type equal without regard to case,
//! or function names claimed twice without regard to case. Every node
//! reports each of them failed, naming the other, installs neither and keeps
//! what it had of them.

use serde_json::{json, Value};

use crate::common::{c_lib, lib, random_zip, so_zip, Backend, Env, NodeRun};

/// Writes the metadata of `{ty}/{from}` again as `{ty}/{to}` (same zip),
/// straight into the store, with `change` applied.
async fn copy_meta(env: &Env, ty: &str, from: &str, to: &str, change: impl FnOnce(&mut Value)) {
    let src = env.read_object(&format!("plugins/{ty}/{from}.json")).await;
    let mut meta: Value = serde_json::from_slice(&src).unwrap();
    meta["name"] = json!(to);
    change(&mut meta);
    env.write_object(&format!("plugins/{ty}/{to}.json"), meta.to_string())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_equal_without_case_install_neither() {
    let env = Env::start(Backend::Local).await;
    env.publish("sources", "random", random_zip()).await;
    env.publish("sinks", "print", so_zip("Print.so", lib("print")))
        .await;
    env.sync(&[]).await.assert_ok();
    let before = env.node_files();

    // `Random` appears next to `random`: both need plugins/sources/Random.so.
    copy_meta(&env, "sources", "random", "Random", |_| {}).await;
    let check = |run: &NodeRun| {
        run.assert_failed();
        assert_eq!(
            run.error_of("sources/random"),
            "random and Random differ only in case; eKuiper needs plugins/sources/Random.so for both; delete one in the registry; neither is installed or updated on this node (what it had of them is left as it was)"
        );
        assert!(
            run.error_of("sources/Random")
                .starts_with("Random and random differ only in case; eKuiper needs plugins/sources/Random.so for both;"),
            "{}",
            run.report
        );
        assert_eq!(run.failures().len(), 2, "{}", run.report);
    };
    // On the node that had random: kept as it was (and loaded), reported failed.
    for _ in 0..2 {
        let run = env.run_once(&[]).await;
        check(&run);
        assert_eq!(run.list("installed"), Vec::<String>::new());
        assert_eq!(run.list("unchanged"), ["sinks/print@"]);
        assert_eq!(env.node_files(), before);
        let loaded: Vec<&str> = run.report["loaded"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["name"].as_str().unwrap())
            .collect();
        assert_eq!(loaded, ["random", "print"]);
    }
    // On a new node: neither is installed.
    let (store, root) = (env.store_arg(), env.scratch().join("new-node"));
    let root_s = root.display().to_string();
    let run = env
        .node_with_args(&["sync", "--store", &store, "--root", &root_s])
        .await;
    check(&run);
    assert_eq!(run.list("installed"), ["sinks/print@"]);
    assert_eq!(
        crate::common::files_under(&root.join("plugins")),
        ["sinks/Print.so"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_names_equal_without_case_install_neither() {
    let env = Env::start(Backend::Local).await;
    env.publish("functions", "echo", so_zip("Echo.so", lib("echo")))
        .await;
    env.publish(
        "functions",
        "misc",
        so_zip("Misc.so", c_lib("misc", 2, "1")),
    )
    .await;
    env.sync(&[]).await.assert_ok();
    let before = env.node_files();

    // misc's metadata is changed to claim ECHO as well as misc: echo claims echo.
    let meta_key = "plugins/functions/misc.json";
    let mut meta: Value = serde_json::from_slice(&env.read_object(meta_key).await).unwrap();
    meta["functions"] = json!(["misc", "ECHO"]);
    env.write_object(meta_key, meta.to_string()).await;

    for _ in 0..2 {
        let run = env.sync(&[]).await;
        run.assert_failed();
        let echo = run.error_of("functions/echo");
        assert!(
            echo.starts_with("function plugins echo and misc both claim the function echo and ECHO; eKuiper's function names ignore case"),
            "{echo}"
        );
        let misc = run.error_of("functions/misc");
        assert!(
            misc.starts_with(
                "function plugins misc and echo both claim the function ECHO and echo;"
            ),
            "{misc}"
        );
        assert_eq!(run.list("unchanged"), Vec::<String>::new());
        assert_eq!(env.node_files(), before);
    }

    // A new node installs neither.
    let (store, root) = (env.store_arg(), env.scratch().join("new-node"));
    let root_s = root.display().to_string();
    let run = env
        .node_with_args(&["sync", "--store", &store, "--root", &root_s])
        .await;
    run.assert_failed();
    assert_eq!(run.failures().len(), 2, "{}", run.report);
    assert_eq!(run.list("installed"), Vec::<String>::new());
    assert_eq!(
        crate::common::files_under(&root.join("plugins")),
        Vec::<String>::new()
    );
}
