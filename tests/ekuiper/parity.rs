//! Layout parity: the same zips installed by stock eKuiper's own installer
//! (`POST /plugins/{type}`) and by `kuiper-node`, compared file by file and
//! through what eKuiper's REST API then shows.

use std::collections::BTreeMap;
use std::path::Path;

use kuiper_harness::ekuiper::Kuiperd;
use serde_json::{json, Value};

use crate::common::*;

/// Every file under the plugin directories of `root` that is not in the
/// stock base directory, with its contents.
fn plugin_files(root: &Path, base: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for top in ["plugins", "etc", "data"] {
        for ty in ["sources", "sinks", "functions"] {
            let dir = root.join(top).join(ty);
            let mut stack = vec![dir];
            while let Some(d) = stack.pop() {
                let Ok(rd) = std::fs::read_dir(&d) else {
                    continue;
                };
                for e in rd.flatten() {
                    let p = e.path();
                    if p.is_dir() {
                        stack.push(p);
                        continue;
                    }
                    let rel = p.strip_prefix(root).unwrap();
                    if base.join(rel).exists() {
                        continue;
                    }
                    out.insert(
                        rel.to_string_lossy().into_owned(),
                        std::fs::read(&p).unwrap(),
                    );
                }
            }
        }
    }
    out
}

/// What eKuiper's REST API shows about plugins: lists, describes, UDFs.
async fn rest_view(http: &reqwest::Client, rest: &str) -> Value {
    let mut view = serde_json::Map::new();
    for ty in ["sources", "sinks", "functions"] {
        for name in ek_list(http, rest, ty).await {
            let (status, mut d) = ek_get(http, rest, &format!("/plugins/{ty}/{name}")).await;
            assert_eq!(status, 200, "{ty}/{name}: {d}");
            if let Some(f) = d.get_mut("functions").and_then(Value::as_array_mut) {
                f.sort_by_key(|v| v.to_string());
            }
            view.insert(format!("{ty}/{name}"), d);
        }
    }
    for f in ["shout", "whisper"] {
        view.insert(
            format!("udfs/{f}"),
            ek_get(http, rest, &format!("/plugins/udfs/{f}")).await.1,
        );
    }
    Value::Object(view)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kuiper_node_lays_out_what_ekuipers_installer_does() {
    let stack = Stack::start().await;
    let http = &stack.http;
    let base = blocking(|| kuiper_harness::rig::Rig::get().base());

    // Stock eKuiper installs each zip through its own REST API.
    let theirs = stack.new_node_dir("stock");
    let log = stack.tmp.path().join("stock.log");
    let mut stock = blocking(|| {
        Kuiperd::start_with(
            &theirs,
            &log,
            // Its downloader refuses loopback hosts unless told otherwise.
            &[("KUIPER__BASIC__ENABLEPRIVATENET", "true")],
        )
    });
    let zips = [
        ("sources", "ticker", zips::ticker("v1", "1.0.0"), json!({})),
        ("sinks", "linefile", zips::linefile("v1"), json!({})),
        (
            "functions",
            "shout",
            zips::shout(),
            json!({"functions": ["shout", "whisper"]}),
        ),
    ];
    for (ty, name, zip, extra) in &zips {
        let url = stack
            .serve(&format!("/stock/{ty}/{name}.zip"), zip.clone())
            .await;
        let mut body = json!({"name": name, "file": url});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        ek_post(http, &stock.rest(), &format!("/plugins/{ty}"), body).await;
        stack.publish(ty, name, zip.clone(), extra.clone()).await;
    }
    // As a node would be used: restarted after installing.
    blocking(|| stock.restart());
    let stock_view = rest_view(http, &stock.rest()).await;
    blocking(|| stock.stop());

    // kuiper-node syncs the same zips from the registry, then starts eKuiper.
    let ours = stack.new_node_dir("synced");
    let node = stack.supervised(&ours).await;
    assert_eq!(node.report["failed"], json!([]), "{}", node.report);
    let our_view = rest_view(http, &node.rest()).await;
    node.stop().await;

    let their_files = plugin_files(&theirs, &base);
    let our_files = plugin_files(&ours, &base);
    let names = |m: &BTreeMap<String, Vec<u8>>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(&our_files), names(&their_files), "the same files");
    assert_eq!(our_files, their_files, "with the same contents");
    assert!(
        their_files.contains_key("data/sources/ticker.yaml"),
        "eKuiper writes data/ copies: {:?}",
        names(&their_files)
    );
    assert_eq!(our_view, stock_view, "eKuiper's REST shows the same");
    assert_eq!(
        our_view["functions/shout"]["functions"],
        json!(["shout", "whisper"]),
        "{our_view}"
    );
}

/// With files alone (`kuiper-node sync`, then a plain kuiperd), eKuiper
/// knows only the function named like the plugin: its list lives in its own
/// store. `kuiper-node ekuiper` is what registers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_alone_give_ekuiper_one_function() {
    let stack = Stack::start().await;
    publish_all(&stack).await;
    let root = stack.new_node_dir("node");
    let report = stack.sync(&root).await;
    assert_eq!(report["installed"].as_array().unwrap().len(), 3, "{report}");
    let log = stack.tmp.path().join("kuiperd.log");
    let k = blocking(|| Kuiperd::start(&root, &log));
    let http = &stack.http;
    assert_eq!(ek_list(http, &k.rest(), "sources").await, ["ticker"]);
    assert_eq!(ek_list(http, &k.rest(), "sinks").await, ["linefile"]);
    let (_, shout) = ek_get(http, &k.rest(), "/plugins/functions/shout").await;
    assert_eq!(shout["version"], "1.0.0", "{shout}");
    let (status, _) = ek_get(http, &k.rest(), "/plugins/udfs/whisper").await;
    assert_eq!(
        status, 404,
        "whisper is unknown to eKuiper from the files alone"
    );
}
