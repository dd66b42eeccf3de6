//! The gate predicts stock eKuiper: each Go plugin the rig builds is both
//! synced through the gate (`kuiper-node sync --ekuiper-bin kuiperd`) and
//! given, without the gate, to the rig's real kuiperd. The gate must skip
//! exactly what kuiperd refuses (or crashes on), naming the difference.

use kuiper_harness::ekuiper::Kuiperd;
use kuiper_harness::rig::Rig;
use kuiper_harness::zips::ZipBuilder;
use serde_json::{json, Value};

use crate::common::*;

/// `kuiper-node sync ARGS` into `root`; returns the report (any exit code).
async fn sync_with(stack: &Stack, root: &std::path::Path, extra: &[&str]) -> (Value, String) {
    let store = stack.store_arg();
    let root_s = root.display().to_string();
    let mut args = vec!["sync", "--store", &store, "--root", &root_s];
    args.extend_from_slice(extra);
    let out = stack
        .node_command(&args)
        .output()
        .await
        .expect("kuiper-node");
    let report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("report ({e}): {}", String::from_utf8_lossy(&out.stdout)));
    (report, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Publishes the rig's sink build `set` as plugin `linefile`, and returns
/// (whether the gate lets it through, its reasons, whether kuiperd loads
/// it, kuiperd's log).
async fn both_verdicts(set: &str) -> (bool, Vec<String>, bool, String) {
    let library = blocking(Rig::get).plugin_bytes(set, "sinks/Linefile.so");
    verdicts_of(library).await
}

/// [`both_verdicts`] of the library `library`.
async fn verdicts_of(library: Vec<u8>) -> (bool, Vec<String>, bool, String) {
    let stack = Stack::start().await;
    let rig = blocking(Rig::get);
    let zip = ZipBuilder::new()
        .file("Linefile@v1.0.0.so", library)
        .build();
    stack.publish("sinks", "linefile", zip, json!({})).await;

    // The gate.
    let gated = stack.new_node_dir("gated");
    let kuiperd = rig.kuiperd().display().to_string();
    let (report, stderr) = sync_with(&stack, &gated, &["--ekuiper-bin", &kuiperd]).await;
    assert_eq!(report["gate"]["checked"], true, "{report}");
    let skipped = report["skipped"].as_array().unwrap();
    let passes = skipped.is_empty();
    let reasons: Vec<String> = skipped
        .first()
        .map(|s| serde_json::from_value(s["reasons"].clone()).unwrap())
        .unwrap_or_default();
    if passes {
        assert_eq!(report["installed"][0]["name"], "linefile", "{report}");
    } else {
        assert_eq!(skipped[0]["name"], "linefile", "{report}");
        assert!(
            report["installed"].as_array().unwrap().is_empty(),
            "{report}"
        );
        assert!(
            !gated.join("plugins/sinks/Linefile@v1.0.0.so").exists(),
            "a skipped plugin is not installed"
        );
        assert!(stderr.contains("skipped   sinks/linefile"), "{stderr}");
    }

    // Stock eKuiper, given the library without the gate.
    let plain = stack.new_node_dir("plain");
    let (report, _) = sync_with(&stack, &plain, &[]).await;
    assert_eq!(report["installed"][0]["name"], "linefile", "{report}");
    let log = stack.tmp.path().join("kuiperd.log");
    let started = blocking(|| Kuiperd::try_start(&plain, &log, &[]));
    let loads = match started {
        Ok(k) => {
            let listed = ek_list(&stack.http, &k.rest(), "sinks").await;
            drop(k);
            listed == ["linefile"]
        }
        Err(_) => false,
    };
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    (passes, reasons, loads, log)
}

fn assert_refused_for(reasons: &[String], want: &str) {
    assert!(
        reasons.iter().any(|r| r.contains(want)),
        "the gate's reasons {reasons:?} name {want:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_built_like_kuiperd_passes_and_loads() {
    let (passes, reasons, loads, log) = both_verdicts("v1").await;
    assert!(passes, "{reasons:?}");
    assert!(loads, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_contract_version_is_skipped_as_ekuiper_refuses_it() {
    let (passes, reasons, loads, log) = both_verdicts("contract230").await;
    assert!(
        !passes && !loads,
        "gate {passes}, eKuiper {loads}: {reasons:?}\n{log}"
    );
    assert_refused_for(
        &reasons,
        "github.com/lf-edge/ekuiper/contract/v2 v2.3.0 here, v2.3.1 on the node",
    );
    assert!(log.contains("plugin was built with a different version of package github.com/lf-edge/ekuiper/contract/v2"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_trimpath_setting_is_skipped_as_ekuiper_refuses_it() {
    let (passes, reasons, loads, log) = both_verdicts("notrim").await;
    assert!(
        !passes && !loads,
        "gate {passes}, eKuiper {loads}: {reasons:?}\n{log}"
    );
    assert_refused_for(&reasons, "built without -trimpath");
    assert!(
        log.contains("plugin was built with a different version of package"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_go_release_is_skipped_as_it_crashes_ekuiper() {
    let (passes, reasons, loads, log) = both_verdicts("go1254").await;
    assert!(
        !passes && !loads,
        "gate {passes}, eKuiper {loads}: {reasons:?}\n{log}"
    );
    assert_refused_for(&reasons, "built with go1.25.4, node has go1.26.8");
    assert!(
        log.contains("no plugin module data"),
        "kuiperd crashes at start:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_musl_library_is_skipped_as_ekuiper_refuses_it() {
    let (passes, reasons, loads, log) = both_verdicts("musl").await;
    assert!(
        !passes && !loads,
        "gate {passes}, eKuiper {loads}: {reasons:?}\n{log}"
    );
    assert_refused_for(&reasons, "needs musl, node is glibc");
    assert!(log.contains("plugin linefile open error"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_library_not_built_by_go_is_skipped_as_it_crashes_ekuiper() {
    let c_abi = blocking(|| kuiper_harness::plugins::example_so("print"));
    let (passes, reasons, loads, log) = verdicts_of(c_abi).await;
    assert!(
        !passes && !loads,
        "gate {passes}, eKuiper {loads}: {reasons:?}\n{log}"
    );
    assert_refused_for(&reasons, "not built by Go");
    assert!(
        log.contains("no plugin module data"),
        "kuiperd crashes at start:\n{log}"
    );
}

/// An update the node's eKuiper would refuse is skipped, and the version the
/// node runs stays as it was; without a known eKuiper nothing is checked,
/// and the node says so once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_update_keeps_the_installed_version() {
    let stack = Stack::start().await;
    let rig = blocking(Rig::get);
    let kuiperd = rig.kuiperd().display().to_string();
    stack
        .publish("sinks", "linefile", zips::linefile("v1"), json!({}))
        .await;
    let root = stack.new_node_dir("node");
    let (report, _) = sync_with(&stack, &root, &["--ekuiper-bin", &kuiperd]).await;
    assert_eq!(report["installed"][0]["name"], "linefile", "{report}");

    stack
        .update(
            "sinks",
            "linefile",
            zips::linefile("contract230"),
            json!({}),
        )
        .await;
    let (report, stderr) = sync_with(&stack, &root, &["--ekuiper-bin", &kuiperd]).await;
    assert_eq!(report["skipped"][0]["name"], "linefile", "{report}");
    assert_eq!(report["updated"], json!([]), "{report}");
    assert_eq!(report["removed"], json!([]), "{report}");
    assert_eq!(
        std::fs::read(root.join("plugins/sinks/Linefile@v1.0.0.so")).unwrap(),
        rig.plugin_bytes("v1", "sinks/Linefile.so"),
        "the installed v1 build stays"
    );
    assert_eq!(
        stderr.matches("skipped   sinks/linefile").count(),
        1,
        "{stderr}"
    );

    // Without --ekuiper-bin: installed as before the gate, with one line saying so.
    let (report, stderr) = sync_with(&stack, &root, &[]).await;
    assert_eq!(report["updated"][0]["name"], "linefile", "{report}");
    assert_eq!(report["gate"]["checked"], false, "{report}");
    assert_eq!(
        stderr.matches("plugins are not checked against it").count(),
        1,
        "{stderr}"
    );
}

/// The registry answers before publish: the node's kuiperd fingerprint is
/// stored once, and a create naming it refuses a library that would not
/// load, with the same reasons the node's gate gives; describe says whether
/// a plugin fits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_checks_against_a_stored_ekuiper() {
    let stack = Stack::start().await;
    let rig = blocking(Rig::get);
    let out = stack
        .node_command(&["fingerprint", &rig.kuiperd().display().to_string()])
        .output()
        .await
        .expect("kuiper-node fingerprint");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fingerprint: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(fingerprint["go"]["goVersion"], "go1.26.8", "{fingerprint}");
    let (status, body) = stack
        .registry(
            reqwest::Method::PUT,
            "/fingerprints/rig",
            Some(fingerprint.clone()),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, names) = stack
        .registry(reqwest::Method::GET, "/fingerprints", None)
        .await;
    assert_eq!(names, "[\"rig\"]");

    let create = |zip: Vec<u8>, ekuiper: Value, path: &'static str| {
        let stack = &stack;
        async move {
            let url = stack.serve(path, zip).await;
            stack
                .registry(
                    reqwest::Method::POST,
                    "/plugins/sinks",
                    Some(json!({"name": "linefile", "file": url, "ekuiper": ekuiper})),
                )
                .await
        }
    };
    // Refused, by name and inline, naming the difference; nothing stored.
    for (ekuiper, path) in [(json!("rig"), "/c1.zip"), (fingerprint.clone(), "/c2.zip")] {
        let (status, body) = create(zips::linefile("contract230"), ekuiper, path).await;
        assert_eq!(status, 400, "{body}");
        assert!(
            body.contains("the library would not load into eKuiper")
                && body.contains(
                    "github.com/lf-edge/ekuiper/contract/v2 v2.3.0 here, v2.3.1 on the node"
                ),
            "{body}"
        );
    }
    let (_, list) = stack
        .registry(reqwest::Method::GET, "/plugins/sinks", None)
        .await;
    assert_eq!(list, "[]");
    // An unknown name is refused before anything is downloaded.
    let (status, body) = create(zips::linefile("v1"), json!("prod"), "/unknown.zip").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("no fingerprint named prod"), "{body}");
    assert_eq!(
        stack.files.hits("/unknown.zip").await,
        0,
        "nothing downloaded"
    );
    // A matching library is created; describe says it fits.
    let (status, body) = create(zips::linefile("v1"), json!("rig"), "/v1.zip").await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = stack
        .registry(
            reqwest::Method::GET,
            "/plugins/sinks/linefile?fits=rig",
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let meta: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        meta["fits"],
        json!({"ekuiper": "rig", "fits": true, "reasons": []})
    );
    // An update to a build that does not fit is refused; the old one stays.
    let url = stack.serve("/notrim.zip", zips::linefile("notrim")).await;
    let (status, body) = stack
        .registry(
            reqwest::Method::PUT,
            "/plugins/sinks/linefile",
            Some(json!({"file": url, "ekuiper": "rig"})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("built without -trimpath"), "{body}");
}
