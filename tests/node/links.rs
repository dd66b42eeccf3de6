//! Symbolic links inside the node directory: the agent never writes, renames,
//! removes or creates anything through one, and says which link it refused.
//! The root itself may be a link.

use std::os::unix::fs::symlink;

use crate::common::{files_under, lib, random_zip, so_zip, Backend, Env};

/// Runs `kuiper-node {args}` with `--store` and `--root root`.
async fn node_at(env: &Env, command: &[&str], root: &std::path::Path) -> crate::common::NodeRun {
    let (store, root) = (env.store_arg(), root.display().to_string());
    let mut args = command.to_vec();
    args.extend_from_slice(&["--store", &store, "--root", &root]);
    env.node_with_args(&args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_inside_the_root_are_never_written_through() {
    let env = Env::start(Backend::Local).await;
    env.publish("sources", "random", random_zip()).await;
    let scratch = env.scratch();
    for (i, link) in [
        "plugins/sources",
        "etc/sources",
        ".kuiper-node",
        "plugins",
        "etc",
    ]
    .into_iter()
    .enumerate()
    {
        let root = scratch.join(format!("node-{i}"));
        let elsewhere = scratch.join(format!("elsewhere-{i}"));
        std::fs::create_dir_all(&elsewhere).unwrap();
        let at = root.join(link);
        std::fs::create_dir_all(at.parent().unwrap()).unwrap();
        symlink(&elsewhere, &at).unwrap();

        for command in [&["sync"][..], &["run", "--once"]] {
            let run = node_at(&env, command, &root).await;
            run.assert_failed();
            assert_eq!(
                files_under(&elsewhere),
                Vec::<String>::new(),
                "{link}: written through the link by {command:?}"
            );
            let err = if link == ".kuiper-node" {
                run.error_of("/")
            } else {
                run.error_of("sources/random")
            };
            assert!(
                err.contains(&format!("{link} is a symbolic link")),
                "{link}, {command:?}: {err}"
            );
            assert_eq!(run.list("installed"), Vec::<String>::new(), "{link}");
        }
        assert!(std::fs::symlink_metadata(&at).unwrap().is_symlink());
    }

    // The root itself may be a link.
    let real = scratch.join("real-root");
    std::fs::create_dir_all(&real).unwrap();
    let linked = scratch.join("linked-root");
    symlink(&real, &linked).unwrap();
    let run = node_at(&env, &["run", "--once"], &linked).await;
    run.assert_ok();
    assert_eq!(run.list("installed"), ["sources/random@"]);
    assert!(real.join("plugins/sources/Random.so").is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_plugin_is_not_removed_through_a_link() {
    let env = Env::start(Backend::Local).await;
    env.publish("sinks", "print", so_zip("Print.so", lib("print")))
        .await;
    env.sync(&[]).await.assert_ok();

    // plugins/sinks becomes a link to a directory elsewhere holding a file
    // of the same name, and the registry drops print.
    let elsewhere = env.scratch().join("elsewhere");
    std::fs::rename(env.root().join("plugins/sinks"), &elsewhere).unwrap();
    symlink(&elsewhere, env.root().join("plugins/sinks")).unwrap();
    env.drop_plugin("sinks", "print").await;

    let run = env.sync(&[]).await;
    run.assert_failed();
    let err = run.error_of("sinks/print");
    assert!(err.contains("plugins/sinks is a symbolic link"), "{err}");
    assert_eq!(
        std::fs::read(elsewhere.join("Print.so")).unwrap(),
        lib("print")
    );
}
