//! `install.sh`: never run without `--allow-install-scripts`; with it, run as
//! `/bin/sh install.sh {shellParas...}` in the plugin's temporary directory; a
//! failing or hanging script fails its plugin and leaves none of its files.

use serde_json::json;

use crate::common::{c_lib, random_zip, Env};
use kuiper_harness::zips::ZipBuilder;

on_both_stores!(install_scripts_only_when_allowed);

fn scripted_zip(name: &str, script: &str) -> Vec<u8> {
    let upper = format!("{}{}", name[..1].to_uppercase(), &name[1..]);
    ZipBuilder::new()
        .file(&format!("{upper}.so"), c_lib(name, 1, "1.0"))
        .file_with_mode("install.sh", script, 0o755)
        .file("deps/needed.txt", "dependency")
        .file(&format!("{name}.json"), "{}")
        .build()
}

async fn install_scripts_only_when_allowed(env: Env) {
    let marker = env.scratch().join("ran");
    let marker_s = marker.display().to_string();
    let ok_script = "#!/bin/sh\ntest -f deps/needed.txt || exit 7\nprintf '%s\\n' \"$@\" > \"$1\"\npwd >> \"$1\"\n";
    env.publish_with(
        "sinks",
        "scripted",
        scripted_zip("scripted", ok_script),
        json!({"shellParas": [marker_s, "--flag"]}),
    )
    .await;
    env.publish(
        "sinks",
        "failing",
        scripted_zip("failing", "echo 'libfoo is missing' >&2\nexit 3\n"),
    )
    .await;
    env.publish("sinks", "hanging", scripted_zip("hanging", "sleep 600\n"))
        .await;
    env.publish("sources", "random", random_zip()).await;

    // Not allowed (the default): plugins with a script fail, nothing runs.
    let denied = env.run_once(&[]).await;
    denied.assert_failed();
    assert_eq!(denied.list("installed"), ["sources/random@"]);
    for p in ["sinks/failing", "sinks/hanging", "sinks/scripted"] {
        let err = denied.error_of(p);
        assert!(err.contains("--allow-install-scripts"), "{p}: {err}");
    }
    assert!(!marker.exists(), "install.sh must not run");
    assert!(
        env.node_files().iter().all(|f| !f.contains("sinks")),
        "{:?}",
        env.node_files()
    );

    // Allowed: the good script runs with its parameters in a temporary
    // directory holding the zip's root files; the others fail cleanly.
    let allowed = env
        .run_once(&["--allow-install-scripts", "--install-timeout", "5s"])
        .await;
    allowed.assert_failed();
    assert_eq!(allowed.list("installed"), ["sinks/scripted@"]);
    assert_eq!(allowed.list("unchanged"), ["sources/random@"]);
    let ran = std::fs::read_to_string(&marker).expect("install.sh ran");
    let lines: Vec<&str> = ran.lines().collect();
    assert_eq!(lines.len(), 3, "{ran}");
    assert_eq!(&lines[..2], [marker_s.as_str(), "--flag"]);
    let state = env.root().canonicalize().unwrap().join(".kuiper-node/tmp");
    assert!(
        lines[2].starts_with(&state.display().to_string()),
        "cwd {}",
        lines[2]
    );
    assert!(
        !std::path::Path::new(lines[2]).exists(),
        "the temporary directory is removed"
    );

    let failing = allowed.error_of("sinks/failing");
    assert!(failing.contains("install.sh failed"), "{failing}");
    assert!(failing.contains("libfoo is missing"), "{failing}");
    let hanging = allowed.error_of("sinks/hanging");
    assert!(hanging.contains("did not finish within 5s"), "{hanging}");
    assert_eq!(allowed.failures().len(), 2, "{}", allowed.report);

    // Only the scripted plugin's own files were installed: the library and
    // its json; install.sh and deps/ stayed in the temporary directory.
    assert_eq!(
        env.node_files(),
        [
            "data/sinks/scripted.json",
            "data/sources/random.json",
            "data/sources/random.yaml",
            "data/sources/random/conf/extra.txt",
            "etc/sinks/scripted.json",
            "etc/sources/random.json",
            "etc/sources/random.yaml",
            "etc/sources/random/conf/extra.txt",
            "plugins/sinks/Scripted.so",
            "plugins/sources/Random.so",
        ]
    );
    assert_eq!(
        allowed.report["loaded"],
        json!([
            {"type": "sources", "name": "random", "version": "1.0.0", "symbol": "Random"},
            {"type": "sinks", "name": "scripted", "version": "1.0", "symbol": "Scripted"},
        ])
    );
}
