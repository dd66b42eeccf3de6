//! What the node checks before installing: the zip's SHA-256 against the
//! metadata, every entry's data as it extracts it, and the library's
//! architecture against the node's.

use serde_json::json;

use crate::common::{lib, random_zip, so_zip, Env};

on_both_stores!(
    sha256_mismatch_installs_nothing,
    mismatch_names_what_differs,
    damaged_entry_installs_nothing,
    other_architecture_is_skipped
);

async fn sha256_mismatch_installs_nothing(env: Env) {
    env.publish("sources", "random", random_zip()).await;
    env.publish("sinks", "print", so_zip("Print.so", lib("print")))
        .await;
    // Someone replaces print's stored zip with another valid plugin zip.
    let sha = env.meta("sinks", "print").await["sha256"]
        .as_str()
        .unwrap()
        .to_string();
    let blob = env.blob_key("sinks", "print").await;
    env.write_object(&blob, so_zip("Print.so", lib("echo")))
        .await;

    let run = env.run_once(&[]).await;
    run.assert_failed();
    let err = run.error_of("sinks/print");
    assert!(err.contains("sha256 mismatch"), "{err}");
    assert!(err.contains(&sha), "{err}");
    assert_eq!(run.list("installed"), ["sources/random@"]);
    assert_eq!(
        run.report["loaded"],
        json!([{"type": "sources", "name": "random", "version": "1.0.0", "symbol": "Random"}])
    );
    // Nothing of print is on the node.
    assert!(
        env.node_files().iter().all(|f| !f.contains("sinks")),
        "{:?}",
        env.node_files()
    );

    // Once the store holds the right zip again, the next run installs it.
    let original = env.meta("sinks", "print").await;
    assert_eq!(original["sha256"], sha.as_str());
    env.write_object(&blob, so_zip("Print.so", lib("print")))
        .await;
    let again = env.run_once(&[]).await;
    again.assert_ok();
    assert_eq!(again.list("installed"), ["sinks/print@"]);
    assert_eq!(env.node_file("plugins/sinks/Print.so"), lib("print"));
}

/// The metadata's size and SHA-256 checked one by one: a report names
/// the one that differs, with both values.
async fn mismatch_names_what_differs(env: Env) {
    use sha2::Digest;
    env.publish("sinks", "print", so_zip("Print.so", lib("print")))
        .await;
    let blob = env.blob_key("sinks", "print").await;
    let zip = env.read_object(&blob).await;
    let meta_key = "plugins/sinks/print.json";
    let meta: serde_json::Value = serde_json::from_slice(&env.read_object(meta_key).await).unwrap();
    let sha = meta["sha256"].as_str().unwrap().to_string();
    assert_eq!(meta["size"], json!(zip.len()));

    // Only the size differs: the metadata says one byte more.
    let mut wrong_size = meta.clone();
    wrong_size["size"] = json!(zip.len() + 1);
    env.write_object(meta_key, wrong_size.to_string()).await;
    let run = env.sync(&[]).await;
    run.assert_failed();
    let err = run.error_of("sinks/print");
    assert!(
        err.contains(&format!(
            "size mismatch: metadata says {} bytes, downloaded {}",
            zip.len() + 1,
            zip.len()
        )),
        "{err}"
    );
    assert!(!err.contains("sha256 mismatch"), "{err}");

    // Only the hash differs: the stored zip has one byte changed.
    env.write_object(meta_key, meta.to_string()).await;
    let mut changed = zip.clone();
    let last = changed.len() - 1;
    changed[last] ^= 0x01;
    env.write_object(&blob, changed.clone()).await;
    let run = env.sync(&[]).await;
    run.assert_failed();
    let err = run.error_of("sinks/print");
    assert!(
        err.contains(&format!(
            "sha256 mismatch: metadata says {sha}, downloaded {}",
            hex::encode(sha2::Sha256::digest(&changed))
        )),
        "{err}"
    );
    assert!(!err.contains("size mismatch"), "{err}");
    assert!(
        env.node_files().iter().all(|f| !f.contains("sinks")),
        "{:?}",
        env.node_files()
    );
}

/// A zip in the store, damaged, with its metadata rewritten to match it (its
/// SHA-256 and size), so that its library no longer decompresses to what its
/// header says:
/// the node extracts entries as it checks them, and a damaged one installs
/// nothing of the plugin.
async fn damaged_entry_installs_nothing(env: Env) {
    use sha2::Digest;
    env.publish("sources", "random", random_zip()).await;
    env.publish("sinks", "print", so_zip("Print.so", lib("print")))
        .await;
    let blob = env.blob_key("sinks", "print").await;
    let mut zip = env.read_object(&blob).await;
    // One byte in the middle of the library's deflated data, found from its local header.
    let u16_at = |i: usize| u16::from_le_bytes([zip[i], zip[i + 1]]) as usize;
    let compressed = u32::from_le_bytes(zip[18..22].try_into().unwrap()) as usize;
    assert_eq!(u16_at(8), 8, "the library is deflated");
    let data_start = 30 + u16_at(26) + u16_at(28);
    zip[data_start + compressed / 2] ^= 0x55;
    env.write_object(&blob, zip.clone()).await;
    let meta_key = "plugins/sinks/print.json";
    let mut meta: serde_json::Value =
        serde_json::from_slice(&env.read_object(meta_key).await).unwrap();
    meta["sha256"] = json!(hex::encode(sha2::Sha256::digest(&zip)));
    meta["size"] = json!(zip.len());
    env.write_object(meta_key, meta.to_string()).await;

    // With no memory budget the zip goes through disk and the library is
    // decoded as a stream; with the default one, both stay in memory.
    let scratch = env.scratch();
    for (i, budget) in [&["--memory-bytes", "0"][..], &[]].into_iter().enumerate() {
        let (store, root) = (env.store_arg(), scratch.join(format!("node-{i}")));
        let root = root.display().to_string();
        let mut args = vec!["run", "--once", "--store", &store, "--root", &root];
        args.extend_from_slice(budget);
        let run = env.node_with_args(&args).await;
        run.assert_failed();
        let err = run.error_of("sinks/print");
        assert!(err.contains("fails the node's check"), "{budget:?}: {err}");
        assert!(
            err.contains("\"Print.so\" cannot be read"),
            "{budget:?}: {err}"
        );
        assert_eq!(run.list("installed"), ["sources/random@"]);
        let files = crate::common::files_under(std::path::Path::new(&root));
        assert!(files.iter().all(|f| !f.contains("sinks")), "{files:?}");
    }
}

/// The example sink with its ELF machine changed to another architecture.
fn foreign_library() -> (Vec<u8>, &'static str) {
    let mut so = lib("print");
    let (machine, name): (u16, &str) = if std::env::consts::ARCH == "aarch64" {
        (62, "x86_64")
    } else {
        (183, "aarch64")
    };
    assert_eq!(&so[..4], b"\x7fELF");
    assert_eq!(so[5], 1, "little-endian ELF expected");
    so[18..20].copy_from_slice(&machine.to_le_bytes());
    (so, name)
}

async fn other_architecture_is_skipped(env: Env) {
    let (so, arch) = foreign_library();
    env.publish("sinks", "print", so_zip("Print.so", so)).await;
    env.publish("sources", "random", random_zip()).await;
    assert_eq!(env.meta("sinks", "print").await["arch"], arch);

    let check = |run: &crate::common::NodeRun| {
        run.assert_failed();
        let err = run.error_of("sinks/print");
        assert!(err.contains(&format!("built for {arch}")), "{err}");
        assert!(err.contains("not installed and not loaded"), "{err}");
        assert_eq!(run.failures().len(), 1, "{}", run.report);
    };
    let sync = env.sync(&[]).await;
    check(&sync);
    assert_eq!(sync.list("installed"), ["sources/random@"]);
    let run = env.run_once(&[]).await;
    check(&run);
    assert_eq!(
        run.report["loaded"],
        json!([{"type": "sources", "name": "random", "version": "1.0.0", "symbol": "Random"}])
    );
    assert!(
        env.node_files().iter().all(|f| !f.contains("sinks")),
        "{:?}",
        env.node_files()
    );
}
