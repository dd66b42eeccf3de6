//! Loading through the plugin ABI v1: a C plugin loads like the Rust ones,
//! and every way a library can fail the ABI is reported, without stopping the
//! other plugins.

use serde_json::json;

use crate::common::{c_lib, lib, random_zip, so_zip, Env};
use kuiper_harness::plugins::CPlugin;
use kuiper_harness::zips::ZipBuilder;

on_both_stores!(abi_failures_are_reported_per_plugin);

async fn abi_failures_are_reported_per_plugin(env: Env) {
    // Good ones: the Rust source and a C source.
    env.publish("sources", "random", random_zip()).await;
    let csource = ZipBuilder::new()
        .file("Csource@v0.1.so", c_lib("csource", 0, "0.1"))
        .file("csource.yaml", "default: {}\n")
        .build();
    env.publish("sources", "csource", csource).await;
    // `print`'s library published as sink `other`: it exports `Print`, not `Other`.
    env.publish("sinks", "other", so_zip("Other.so", lib("print")))
        .await;
    // A library cut short, in a store written before the registry refused
    // such libraries: published whole, then its stored zip replaced.
    env.publish("sinks", "cut", so_zip("Cut.so", lib("print")))
        .await;
    let mut cut = lib("print");
    cut.truncate(8 * 1024);
    replace_stored_zip(&env, "sinks", "cut", so_zip("Cut.so", cut)).await;
    // A library needing a shared library the node does not have: dlopen fails.
    env.publish(
        "sinks",
        "needy",
        so_zip("Needy.so", needing_missing_library()),
    )
    .await;
    // A function library installed as a sink.
    env.publish(
        "sinks",
        "kindly",
        so_zip("Kindly.so", c_lib("kindly", 2, "1")),
    )
    .await;
    // A descriptor naming another plugin.
    let misnamed = CPlugin {
        name: "someone".into(),
        ..CPlugin::new("misnamed", 1, "1")
    };
    env.publish("sinks", "misnamed", so_zip("Misnamed.so", misnamed.so()))
        .await;
    // A descriptor from a future ABI.
    let future = CPlugin {
        abi: 2,
        ..CPlugin::new("future", 1, "1")
    };
    env.publish("sinks", "future", so_zip("Future.so", future.so()))
        .await;

    let run = env.run_once(&[]).await;
    run.assert_failed();
    // Everything synced but the cut library, which the node's check of the
    // zip refuses before installing anything; the others failed loading.
    assert_eq!(run.list("installed").len(), 7, "{}", run.report);
    assert!(!env.root().join("plugins/sinks/Cut.so").exists());
    assert_eq!(
        run.report["loaded"],
        json!([
            {"type": "sources", "name": "csource", "version": "0.1", "symbol": "Csource"},
            {"type": "sources", "name": "random", "version": "1.0.0", "symbol": "Random"},
        ])
    );
    let failures = run.failures();
    let names: Vec<&str> = failures.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        names,
        [
            "sinks/cut",
            "sinks/future",
            "sinks/kindly",
            "sinks/misnamed",
            "sinks/needy",
            "sinks/other"
        ]
    );
    let err = |p: &str| run.error_of(p);
    assert!(
        err("sinks/other").contains("symbol Other not found"),
        "{}",
        err("sinks/other")
    );
    assert!(
        err("sinks/cut").contains("the file is truncated"),
        "{}",
        err("sinks/cut")
    );
    assert!(
        err("sinks/needy").contains("cannot load"),
        "{}",
        err("sinks/needy")
    );
    assert!(
        err("sinks/needy").contains("libmissing.so"),
        "{}",
        err("sinks/needy")
    );
    assert!(
        err("sinks/kindly").contains("kind 2 (functions)"),
        "{}",
        err("sinks/kindly")
    );
    assert!(
        err("sinks/kindly").contains("installed as sinks"),
        "{}",
        err("sinks/kindly")
    );
    assert!(
        err("sinks/misnamed").contains("named \"someone\"")
            && err("sinks/misnamed").contains("\"misnamed\""),
        "{}",
        err("sinks/misnamed")
    );
    assert!(
        err("sinks/future").contains("abi_version 2"),
        "{}",
        err("sinks/future")
    );

    // The files stay installed (they are what the registry holds); a plain
    // sync reports the cut library alone, and a second run reports the same
    // failures.
    let sync = env.sync(&[]).await;
    sync.assert_failed();
    assert_eq!(sync.list("unchanged").len(), 7);
    assert_eq!(sync.failures().len(), 1, "{}", sync.report);
    let again = env.run_once(&[]).await;
    again.assert_failed();
    assert_eq!(again.failures(), failures);
}

/// The example sink with its dependency on `libgcc_s.so.1` renamed to
/// `libmissing.so` (same length, in the dynamic string table).
fn needing_missing_library() -> Vec<u8> {
    let mut so = lib("print");
    let (from, to) = (&b"libgcc_s.so.1\0"[..], &b"libmissing.so\0"[..]);
    let at = so
        .windows(from.len())
        .position(|w| w == from)
        .expect("the example library needs libgcc_s.so.1");
    so[at..at + to.len()].copy_from_slice(to);
    so
}

/// Replaces the zip that `{ty}/{name}`'s metadata points at with `zip`,
/// straight in the store, and its recorded SHA-256 and size with `zip`'s:
/// what a store written by an earlier version of the registry may hold.
async fn replace_stored_zip(env: &Env, ty: &str, name: &str, zip: Vec<u8>) {
    use sha2::Digest;
    let meta_key = format!("plugins/{ty}/{name}.json");
    let mut meta: serde_json::Value =
        serde_json::from_slice(&env.read_object(&meta_key).await).unwrap();
    let blob = meta["blob"]
        .as_str()
        .expect("metadata names its zip")
        .to_string();
    meta["sha256"] = json!(hex::encode(sha2::Sha256::digest(&zip)));
    meta["size"] = json!(zip.len());
    env.write_object(&blob, zip).await;
    env.write_object(&meta_key, meta.to_string()).await;
}
