//! Function plugins: function names are unique across all plugins; a clash
//! changes nothing.

use serde_json::json;

use crate::common::TestEnv;

both_stores!(
    udfs_list_and_describe,
    clash_changes_nothing,
    register_replaces_list,
    register_errors,
    function_names_are_compared_without_case,
    claims_from_earlier_versions_still_count,
    a_claim_whose_instance_is_gone_blocks_no_one
);

async fn create_fn(env: &TestEnv, name: &str, functions: &[&str]) -> crate::common::Resp {
    let url = env.serve_plugin("functions", name).await;
    env.post(
        "/plugins/functions",
        json!({"name": name, "file": url, "functions": functions}),
    )
    .await
}

async fn udfs_list_and_describe(env: TestEnv) {
    assert_eq!(env.get("/plugins/udfs").await.body, "[]");
    assert_eq!(
        create_fn(&env, "echo2", &["echo2", "echo3"]).await.status,
        201
    );
    env.create_ok("functions", "comp").await;
    let d = env.get("/plugins/functions/echo2").await.json();
    assert_eq!(d["functions"], json!(["echo2", "echo3"]));
    assert_eq!(
        env.get("/plugins/functions/comp").await.json()["functions"],
        json!(["comp"])
    );
    assert_eq!(
        env.get("/plugins/udfs").await.json(),
        json!(["comp", "echo2", "echo3"])
    );
    assert_eq!(
        env.get("/plugins/udfs/echo3").await.json(),
        json!({"name": "echo3", "plugin": "echo2"})
    );
    let r = env.get("/plugins/udfs/none").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_message(), "describe function none error: not found");
    // Deleting the plugin frees its names.
    assert_eq!(env.delete("/plugins/functions/echo2").await.status, 200);
    assert_eq!(env.get("/plugins/udfs").await.json(), json!(["comp"]));
    assert_eq!(env.get("/plugins/udfs/echo3").await.status, 404);
    assert_eq!(
        create_fn(&env, "misc", &["misc", "echo3"]).await.status,
        201
    );
}

async fn clash_changes_nothing(env: TestEnv) {
    assert_eq!(
        create_fn(&env, "echo2", &["echo2", "echo3"]).await.status,
        201
    );
    let before_files = env
        .stored_files()
        .await
        .into_iter()
        .filter(|f| !f.contains("blobs/"))
        .collect::<Vec<_>>();
    let r = create_fn(&env, "misc", &["misc", "echo3"]).await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.error_message(),
        "functions plugins create command error: function name echo3 already exists in plugin echo2"
    );
    // Unlike the reference (C11), nothing leaks: misc is neither a plugin nor a udf.
    assert_eq!(env.list("functions").await, vec!["echo2"]);
    assert_eq!(
        env.get("/plugins/udfs").await.json(),
        json!(["echo2", "echo3"])
    );
    assert_eq!(env.get("/plugins/udfs/misc").await.status, 404);
    let after_files = env
        .stored_files()
        .await
        .into_iter()
        .filter(|f| !f.contains("blobs/"))
        .collect::<Vec<_>>();
    assert_eq!(before_files, after_files);
    // A plugin whose own name is taken as a function elsewhere.
    let r = create_fn(&env, "echo3", &[]).await;
    assert_eq!(r.status, 400);
    assert!(
        r.error_message()
            .contains("function name echo3 already exists in plugin echo2"),
        "{}",
        r.body
    );
}

async fn register_replaces_list(env: TestEnv) {
    assert_eq!(create_fn(&env, "echo2", &[]).await.status, 201);
    let r = env
        .post(
            "/plugins/functions/echo2/register",
            json!({"functions": ["echo2", "echo4"]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body, "function plugin echo2 function list is registered");
    assert_eq!(
        env.get("/plugins/udfs").await.json(),
        json!(["echo2", "echo4"])
    );
    let r = env
        .post(
            "/plugins/functions/echo2/register",
            json!({"functions": ["echo5"]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(env.get("/plugins/udfs").await.json(), json!(["echo5"]));
    assert_eq!(
        env.get("/plugins/functions/echo2").await.json()["functions"],
        json!(["echo5"])
    );
    // echo4 is free again.
    assert_eq!(create_fn(&env, "other", &["echo4"]).await.status, 201);
    // A clash on register changes nothing.
    let r = env
        .post(
            "/plugins/functions/echo2/register",
            json!({"functions": ["echo6", "echo4"]}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.error_message(),
        "register functions plugin echo2 error: function name echo4 already exists in plugin other"
    );
    assert_eq!(
        env.get("/plugins/udfs").await.json(),
        json!(["echo4", "echo5"])
    );
    assert_eq!(env.get("/plugins/udfs/echo6").await.status, 404);
}

async fn register_errors(env: TestEnv) {
    assert_eq!(create_fn(&env, "echo2", &[]).await.status, 201);
    let r = env
        .post(
            "/plugins/functions/none/register",
            json!({"functions": ["echo2"]}),
        )
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.error_message(),
        "register functions plugin none error: not found"
    );
    let r = env
        .post(
            "/plugins/functions/echo2/register",
            json!({"functions": "echo2"}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(
        r.error_message().starts_with(
            "Invalid body: Error decoding the function list json: invalid type: string"
        ),
        "{}",
        r.body
    );
    for body in [
        json!({"functions": []}),
        json!({}),
        json!({"functions": null}),
    ] {
        let r = env.post("/plugins/functions/echo2/register", body).await;
        assert_eq!(r.status, 400);
        assert_eq!(
            r.error_message(),
            "register functions plugin echo2 error: property 'functions' must not be empty"
        );
    }
    let r = env
        .post(
            "/plugins/functions/echo2/register",
            json!({"functions": ["a.b"]}),
        )
        .await;
    assert_eq!(r.status, 400);
    let r = env
        .post(
            "/plugins/functions/echo2/register",
            json!({"functions": ["a", "a"]}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(
        r.error_message()
            .contains("function name a is listed twice"),
        "{}",
        r.body
    );
    assert_eq!(env.get("/plugins/udfs").await.json(), json!(["echo2"]));
}

/// eKuiper resolves SQL function names without case: `echo2` and `Echo2`
/// are one function.
async fn function_names_are_compared_without_case(env: TestEnv) {
    assert_eq!(create_fn(&env, "echo2", &["echo2"]).await.status, 201);
    let r = create_fn(&env, "misc", &["Echo2"]).await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.error_message(),
        "functions plugins create command error: function name Echo2 already exists in plugin echo2 as echo2: function names are compared without case"
    );
    assert_eq!(env.get("/plugins/functions/misc").await.status, 404);
    let r = create_fn(&env, "misc", &["misc", "MISC"]).await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.error_message(),
        "functions plugins create command error: function names misc and MISC differ only in case; eKuiper does not tell them apart"
    );
    // The owner may change a name's case.
    let r = env
        .post(
            "/plugins/functions/echo2/register",
            json!({"functions": ["ECHO2"]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(env.get("/plugins/udfs").await.json(), json!(["ECHO2"]));
    assert_eq!(
        env.get("/plugins/udfs/ECHO2").await.json(),
        json!({"name": "ECHO2", "plugin": "echo2"})
    );
    assert_eq!(env.get("/plugins/udfs/echo2").await.status, 404);
    let r = create_fn(&env, "misc", &["echo2"]).await;
    assert_eq!(r.status, 400);
    assert!(
        r.error_message()
            .contains("function name echo2 already exists in plugin echo2 as ECHO2"),
        "{}",
        r.body
    );
    assert_eq!(env.delete("/plugins/functions/echo2").await.status, 200);
    assert_eq!(create_fn(&env, "misc", &["Echo2"]).await.status, 201);
}

/// Claims written before names were compared without case sit under the
/// name as spelt (`udfs/Legacy.json`): they still describe, still block
/// every spelling, and are released with their plugin.
async fn claims_from_earlier_versions_still_count(env: TestEnv) {
    use crate::persistence::{delete_object, get_object, put_object};
    assert_eq!(create_fn(&env, "legacy", &["Legacy"]).await.status, 201);
    let claim = get_object(&env, "udfs/legacy.json")
        .await
        .expect("claim stored");
    put_object(&env, "udfs/Legacy.json", claim).await;
    delete_object(&env, "udfs/legacy.json").await;
    assert_eq!(
        env.get("/plugins/udfs/Legacy").await.json(),
        json!({"name": "Legacy", "plugin": "legacy"})
    );
    for spelling in ["LEGACY", "legacy", "Legacy"] {
        let r = create_fn(&env, "other", &[spelling]).await;
        assert_eq!(r.status, 400, "{spelling}: {}", r.body);
        assert!(
            r.error_message().contains(&format!(
                "function name {spelling} already exists in plugin legacy"
            )),
            "{}",
            r.body
        );
    }
    assert_eq!(env.delete("/plugins/functions/legacy").await.status, 200);
    assert!(get_object(&env, "udfs/Legacy.json").await.is_none());
    assert_eq!(create_fn(&env, "other", &["LEGACY"]).await.status, 201);
}

/// A register that died after claiming a name leaves a claim of an
/// instance; once that instance is deleted the claim blocks no one, even
/// while it is recent.
async fn a_claim_whose_instance_is_gone_blocks_no_one(env: TestEnv) {
    assert_eq!(create_fn(&env, "gone", &["gone"]).await.status, 201);
    let id = env.get("/plugins/functions/gone").await.json()["id"].clone();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claim = json!({"plugin": "gone", "id": id, "claimed_at": now, "function": "late", "creating": false});
    crate::persistence::put_object(&env, "udfs/late.json", claim.to_string().into_bytes()).await;
    // While the instance exists, its pending register holds the name.
    let r = create_fn(&env, "next", &["late"]).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(env.delete("/plugins/functions/gone").await.status, 200);
    assert_eq!(env.get("/plugins/udfs/late").await.status, 404);
    let r = create_fn(&env, "next", &["late"]).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(
        env.get("/plugins/udfs/late").await.json(),
        json!({"name": "late", "plugin": "next"})
    );
}
