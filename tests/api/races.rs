//! Concurrent requests on one name: of racing creates exactly one wins (also
//! of names that differ only in case), of racing deletes exactly one
//! succeeds and calls back, a delete never removes a newer instance, and no
//! interleaving of register and delete leaves a function name blocked.

use serde_json::json;

use crate::common::TestEnv;

both_stores!(
    concurrent_creates_one_winner,
    mixed_operations_never_leave_dangling_metadata,
    creates_differing_in_case_one_winner,
    function_names_differing_in_case_one_winner,
    concurrent_deletes_one_success_one_callback,
    delete_racing_recreate_keeps_the_new_instance,
    register_racing_delete_blocks_no_name
);

async fn concurrent_creates_one_winner(env: TestEnv) {
    const N: usize = 50;
    let mut urls = Vec::new();
    for i in 0..N {
        // Different zips (the yaml differs), so each racer's content is recognisable.
        let zip = kuiper_harness::zips::ZipBuilder::new()
            .file("Racer.so", crate::common::real_so("sources"))
            .file("racer.yaml", format!("racer: {i}\n"))
            .build();
        urls.push(env.files.serve(&format!("/race/{i}.zip"), zip).await);
    }
    let mut tasks = Vec::new();
    for url in &urls {
        let (http, base, url) = (env.http.clone(), env.base.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let r = http
                .post(format!("{base}/plugins/sources"))
                .header("content-type", "application/json")
                .body(json!({"name": "racer", "file": url}).to_string())
                .send()
                .await
                .unwrap();
            (url, r.status().as_u16(), r.text().await.unwrap())
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        let (url, status, body) = t.await.unwrap();
        match status {
            201 => winners.push(url),
            400 => assert!(body.contains("invalid name racer: duplicate"), "{body}"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one create wins: {winners:?}");
    let d = env.get("/plugins/sources/racer").await.json();
    assert_eq!(
        d["source"], winners[0],
        "the stored metadata is the winner's"
    );
    let blob = env
        .stored_blobs()
        .await
        .into_iter()
        .find(|b| b.ends_with(d["blob"].as_str().unwrap()))
        .expect("winner's zip stored");
    use sha2::Digest;
    assert_eq!(
        hex::encode(sha2::Sha256::digest(env.read_object(&blob).await.unwrap())),
        d["sha256"].as_str().unwrap()
    );
}

/// Creates, updates and deletes of one name, all at once: every answer is a
/// clear 2xx/4xx, and whatever metadata is left points at a stored zip with the
/// content it names.
async fn mixed_operations_never_leave_dangling_metadata(env: TestEnv) {
    let mut urls = Vec::new();
    for i in 0..6 {
        let zip = kuiper_harness::zips::ZipBuilder::new()
            .file("Mixed.so", crate::common::real_so("sinks"))
            .file("mixed.json", format!("{{\"v\":{i}}}"))
            .build();
        urls.push(env.files.serve(&format!("/mixed/{i}.zip"), zip).await);
    }
    env.create_ok("sinks", "mixed").await;
    let mut tasks = Vec::new();
    for round in 0..30 {
        let (http, base, url) = (
            env.http.clone(),
            env.base.clone(),
            urls[round % urls.len()].clone(),
        );
        tasks.push(tokio::spawn(async move {
            let body = json!({"name": "mixed", "file": url}).to_string();
            let req = match round % 3 {
                0 => http.post(format!("{base}/plugins/sinks")).body(body),
                1 => http.put(format!("{base}/plugins/sinks/mixed")).body(body),
                _ => http.delete(format!("{base}/plugins/sinks/mixed")),
            };
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }));
    }
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert!(
            matches!(status, 200 | 201 | 404 | 409)
                || (status == 400 && body.contains("duplicate")),
            "{status}: {body}"
        );
    }
    let d = env.get("/plugins/sinks/mixed").await;
    if d.status == 200 {
        let meta = d.json();
        let blob = env
            .stored_files()
            .await
            .into_iter()
            .find(|f| f.ends_with(meta["blob"].as_str().unwrap()))
            .expect("the zip the metadata names is stored");
        use sha2::Digest;
        assert_eq!(
            hex::encode(sha2::Sha256::digest(env.read_object(&blob).await.unwrap())),
            meta["sha256"].as_str().unwrap()
        );
    } else {
        assert_eq!(d.status, 404);
        assert!(env.list("sinks").await.is_empty());
    }
}

/// Sends `req` and returns status and body.
async fn send(req: reqwest::RequestBuilder) -> (u16, String) {
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Sends one create of type `ty` per body, all at once (the files are served
/// before, so that no pre-check can see another's result), and returns the
/// tasks in the bodies' order.
fn create_together(
    env: &TestEnv,
    ty: &str,
    bodies: Vec<serde_json::Value>,
) -> Vec<tokio::task::JoinHandle<(u16, String)>> {
    bodies
        .into_iter()
        .map(|body| {
            let req = env
                .http
                .post(format!("{}/plugins/{ty}", env.base))
                .header("content-type", "application/json")
                .body(body.to_string());
            tokio::spawn(send(req))
        })
        .collect()
}

/// `random` and `Random` would need the same library file on every node:
/// of two racing creates, exactly one wins, the other names it.
async fn creates_differing_in_case_one_winner(env: TestEnv) {
    for round in 0..5 {
        let (lower, upper) = (format!("case{round}"), format!("Case{round}"));
        let mut bodies = Vec::new();
        for name in [&lower, &upper] {
            let url = env.serve_plugin("sources", name).await;
            bodies.push(json!({"name": name, "file": url}));
        }
        let tasks = create_together(&env, "sources", bodies);
        let mut created = Vec::new();
        for (t, (name, other)) in tasks.into_iter().zip([(&lower, &upper), (&upper, &lower)]) {
            let (status, body) = t.await.unwrap();
            match status {
                201 => created.push(name.clone()),
                400 => assert!(
                    body.contains(&format!("invalid name {name}: duplicate of {other}")),
                    "{body}"
                ),
                other => panic!("unexpected {other}: {body}"),
            }
        }
        assert_eq!(
            created.len(),
            1,
            "exactly one of {lower}/{upper} is created"
        );
        let listed: Vec<String> = env
            .list("sources")
            .await
            .into_iter()
            .filter(|n| n.eq_ignore_ascii_case(&lower))
            .collect();
        assert_eq!(listed, created);
    }
}

/// eKuiper resolves function names without case: of two function plugins
/// racing for `fnN` and `FNN`, exactly one is created.
async fn function_names_differing_in_case_one_winner(env: TestEnv) {
    for round in 0..5 {
        let names = [format!("fa{round}"), format!("fb{round}")];
        let functions = [format!("fn{round}"), format!("FN{round}")];
        let mut bodies = Vec::new();
        for (name, function) in names.iter().zip(&functions) {
            let url = env.serve_plugin("functions", name).await;
            bodies.push(json!({"name": name, "file": url, "functions": [function]}));
        }
        let tasks = create_together(&env, "functions", bodies);
        let mut created = 0;
        for t in tasks {
            let (status, body) = t.await.unwrap();
            match status {
                201 => created += 1,
                400 => assert!(body.contains("already exists in plugin"), "{body}"),
                other => panic!("unexpected {other}: {body}"),
            }
        }
        assert_eq!(created, 1, "exactly one of {functions:?} is claimed");
        let udfs: Vec<String> = serde_json::from_str(&env.get("/plugins/udfs").await.body).unwrap();
        assert_eq!(
            udfs.iter()
                .filter(|f| f.eq_ignore_ascii_case(&functions[0]))
                .count(),
            1,
            "{udfs:?}"
        );
    }
}

/// 20 simultaneous deletes of one plugin: one 200 and one callback; the
/// others find nothing to delete.
async fn concurrent_deletes_one_success_one_callback(env: TestEnv) {
    env.create_ok("sinks", "doomed").await;
    let cb = env.callbacks.url("/callback");
    let cb: String = url::form_urlencoded::byte_serialize(cb.as_bytes()).collect();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let req = env
            .http
            .delete(format!("{}/plugins/sinks/doomed?callback={cb}", env.base));
        tasks.push(tokio::spawn(send(req)));
    }
    let mut ok = 0;
    for t in tasks {
        let (status, body) = t.await.unwrap();
        match status {
            200 => ok += 1,
            404 => assert!(body.contains("invalid name doomed: not exist"), "{body}"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(ok, 1, "exactly one delete succeeds");
    assert_eq!(env.callbacks.calls("/callback").await, vec!["GET"]);
    assert_eq!(env.get("/plugins/sinks/doomed").await.status, 404);
    assert!(env.list("sinks").await.is_empty());
}

/// Deletes that read one instance race a client that deletes it and
/// creates the name again: the new instance is never removed by them.
async fn delete_racing_recreate_keeps_the_new_instance(env: TestEnv) {
    let url = env.serve_plugin("sinks", "phoenix").await;
    for _round in 0..6 {
        env.create_ok("sinks", "phoenix").await;
        let first = env.get("/plugins/sinks/phoenix").await.json()["id"].clone();
        let path = format!("{}/plugins/sinks/phoenix", env.base);
        let mut deletes = Vec::new();
        for _ in 0..8 {
            deletes.push(tokio::spawn(send(env.http.delete(&path))));
        }
        // Once the first instance is gone, create the name again while the
        // other deletes are still in flight.
        let recreate = {
            let (http, base, url) = (env.http.clone(), env.base.clone(), url.clone());
            tokio::spawn(async move {
                for attempt in 0.. {
                    assert!(attempt < 10_000, "the first instance was never deleted");
                    let r = http
                        .get(format!("{base}/plugins/sinks/phoenix"))
                        .send()
                        .await
                        .unwrap();
                    if r.status() == 404 {
                        break;
                    }
                }
                send(
                    http.post(format!("{base}/plugins/sinks"))
                        .header("content-type", "application/json")
                        .body(json!({"name": "phoenix", "file": url}).to_string()),
                )
                .await
            })
        };
        let mut ok = 0;
        for t in deletes {
            let (status, body) = t.await.unwrap();
            match status {
                200 => ok += 1,
                404 | 409 => {}
                other => panic!("unexpected {other}: {body}"),
            }
        }
        let (status, body) = recreate.await.unwrap();
        assert_eq!(status, 201, "{body}");
        assert_eq!(
            ok, 1,
            "the first instance is deleted once, the new one never"
        );
        let d = env.get("/plugins/sinks/phoenix").await;
        assert_eq!(d.status, 200, "the new instance stays: {}", d.body);
        assert_ne!(d.json()["id"], first);
        assert_eq!(env.list("sinks").await, vec!["phoenix"]);
        assert_eq!(env.delete("/plugins/sinks/phoenix").await.status, 200);
    }
}

/// `register` racing `delete`, repeated: afterwards the plugin is gone and
/// every name either request touched can be claimed by another plugin.
async fn register_racing_delete_blocks_no_name(env: TestEnv) {
    for round in 0..20 {
        let name = format!("reg{round}");
        let url = env.serve_plugin("functions", &name).await;
        let r = env
            .post("/plugins/functions", json!({"name": name, "file": url}))
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        let added = [format!("ra{round}"), format!("rb{round}")];
        let register = env
            .http
            .post(format!("{}/plugins/functions/{name}/register", env.base))
            .header("content-type", "application/json")
            .body(json!({"functions": [&name, &added[0], &added[1]]}).to_string());
        let delete = env
            .http
            .delete(format!("{}/plugins/functions/{name}", env.base));
        // The delete starts a little later each round, so that it meets the
        // register at different steps (its claims, its compare-and-swap).
        let stagger = std::time::Duration::from_micros(500 * (round % 8));
        let delete = async move {
            tokio::time::sleep(stagger).await;
            send(delete).await
        };
        let (registered, deleted) =
            tokio::join!(tokio::spawn(send(register)), tokio::spawn(delete));
        let (registered, deleted) = (registered.unwrap(), deleted.unwrap());
        assert!(matches!(registered.0, 200 | 404 | 409), "{registered:?}");
        assert!(matches!(deleted.0, 200 | 409), "{deleted:?}");
        if deleted.0 == 409 {
            assert_eq!(
                env.delete(&format!("/plugins/functions/{name}"))
                    .await
                    .status,
                200
            );
        }
        assert_eq!(
            env.get(&format!("/plugins/functions/{name}")).await.status,
            404
        );
        for f in [&name, &added[0], &added[1]] {
            assert_eq!(env.get(&format!("/plugins/udfs/{f}")).await.status, 404);
        }
        let other = format!("other{round}");
        let url = env.serve_plugin("functions", &other).await;
        let r = env
            .post(
                "/plugins/functions",
                json!({"name": other, "file": url, "functions": [&name, &added[0], &added[1]]}),
            )
            .await;
        assert_eq!(r.status, 201, "no name is blocked: {}", r.body);
    }
}
