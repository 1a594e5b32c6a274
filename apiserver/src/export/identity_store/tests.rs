use super::*;

fn labels(app: &str) -> Labels {
    Labels::from([("app".into(), app.into())])
}

fn set(apps: &[&str]) -> BTreeSet<Labels> {
    apps.iter().map(|a| labels(a)).collect()
}

fn numbers(allocs: &Allocations) -> BTreeMap<String, u32> {
    allocs
        .iter()
        .map(|(id, s)| (s.labels["app"].clone(), *id))
        .collect()
}

const GRACE: Duration = Duration::from_secs(600);

#[test]
fn new_label_sets_get_the_lowest_free_number_or_the_one_they_had() {
    let mut allocs = Allocations::new();
    let none = BTreeMap::new();
    assert!(reconcile(&mut allocs, &set(&["web", "db"]), &none, 1, 0, GRACE));
    // In label order: db, then web.
    assert_eq!(
        numbers(&allocs),
        BTreeMap::from([("db".into(), identity(1, 1)), ("web".into(), identity(1, 2))])
    );
    assert!(
        !reconcile(&mut allocs, &set(&["web", "db"]), &none, 1, 5, GRACE),
        "nothing to change"
    );
    // What the local etcd published before the store is kept when free;
    // another cluster's number, or one taken, is not.
    let preferred = BTreeMap::from([
        (labels("cache"), identity(1, 9)),
        (labels("queue"), identity(2, 4)),
        (labels("search"), identity(1, 2)),
    ]);
    reconcile(
        &mut allocs,
        &set(&["web", "db", "cache", "queue", "search"]),
        &preferred,
        1,
        10,
        GRACE,
    );
    let n = numbers(&allocs);
    assert_eq!(n["cache"], identity(1, 9));
    assert_eq!(n["queue"], identity(1, 3));
    assert_eq!(n["search"], identity(1, 4));
}

#[test]
fn an_unused_number_stays_reserved_for_the_grace_period_then_is_given_again() {
    let mut allocs = Allocations::new();
    let none = BTreeMap::new();
    reconcile(&mut allocs, &set(&["web", "db"]), &none, 1, 0, GRACE);
    let db = numbers(&allocs)["db"];
    assert!(reconcile(&mut allocs, &set(&["web"]), &none, 1, 100, GRACE));
    assert_eq!(allocs[&db].unused_since, Some(100));
    // Another label set does not get it meanwhile.
    reconcile(&mut allocs, &set(&["web", "cache"]), &none, 1, 200, GRACE);
    assert_ne!(numbers(&allocs)["cache"], db);
    // Used again within the grace: the same number, unmarked.
    assert!(reconcile(
        &mut allocs,
        &set(&["web", "cache", "db"]),
        &none,
        1,
        300,
        GRACE
    ));
    assert_eq!((numbers(&allocs)["db"], allocs[&db].unused_since), (db, None));
    // Unused past the grace: forgotten, and the number is free again.
    reconcile(&mut allocs, &set(&["web", "cache"]), &none, 1, 400, GRACE);
    assert!(reconcile(
        &mut allocs,
        &set(&["web", "cache"]),
        &none,
        1,
        1001,
        GRACE
    ));
    assert!(!allocs.contains_key(&db));
    reconcile(
        &mut allocs,
        &set(&["web", "cache", "queue"]),
        &none,
        1,
        1002,
        GRACE,
    );
    assert_eq!(numbers(&allocs)["queue"], db);
}

fn update<'a>(in_use: &'a BTreeSet<Labels>, preferred: &'a BTreeMap<Labels, u32>, now: i64) -> Update<'a> {
    Update {
        in_use,
        preferred,
        cluster_id: 1,
        now,
    }
}

/// Two writers on one file, each from its own thread and runtime, with
/// overlapping label sets: every label set ends with one number, and both
/// writers see the same number for the labels they share.
#[test]
fn writers_racing_on_one_file_agree_on_every_number() {
    let dir = knit_testkit::TempDir::new("identity-file");
    let path = dir.path().join("identities.json");
    let run = |apps: Vec<String>| {
        let path = path.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let mut store = IdentityStore::File(path);
            let none = BTreeMap::new();
            let mut seen = Vec::new();
            for round in 0..50 {
                let mut in_use: BTreeSet<Labels> = apps.iter().map(|a| labels(a)).collect();
                in_use.insert(labels(&format!("{}-{round}", apps[0])));
                let allocs = rt.block_on(store.update(&update(&in_use, &none, 0))).unwrap();
                seen.push(numbers(&allocs)["shared"]);
            }
            seen
        })
    };
    let a = run(vec!["a".into(), "shared".into()]);
    let b = run(vec!["b".into(), "shared".into()]);
    let (a, b) = (a.join().unwrap(), b.join().unwrap());
    let stored: Allocations = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let shared = numbers(&stored)["shared"];
    assert!(a.iter().chain(&b).all(|n| *n == shared), "{a:?} {b:?}");
    // 2 + 2 x 50 label sets, each its own number.
    let distinct: BTreeSet<&Labels> = stored.values().map(|s| &s.labels).collect();
    assert_eq!((stored.len(), distinct.len()), (103, 103));
}

mod configmap {
    use super::*;
    use http::{Method, Request, Response};
    use kube::client::Body;
    use serde_json::{Value, json};

    type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;
    const PATH: &str = "/api/v1/namespaces/knit-system/configmaps";

    async fn next(
        handle: &mut Handle,
        method: Method,
        path: &str,
    ) -> (Value, tower_test::mock::SendResponse<Response<Body>>) {
        let (req, send) = handle.next_request().await.expect("a request");
        assert_eq!((req.method(), req.uri().path()), (&method, path), "{}", req.uri());
        let bytes = req.into_body().collect_bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        (body, send)
    }

    fn reply(send: tower_test::mock::SendResponse<Response<Body>>, status: u16, body: Value) {
        send.send_response(
            Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(&body).unwrap()))
                .unwrap(),
        );
    }

    fn status(code: u16, reason: &str) -> Value {
        json!({ "apiVersion": "v1", "kind": "Status", "status": "Failure", "reason": reason, "code": code, "metadata": {} })
    }

    fn configmap(allocs: &Allocations, version: &str) -> Value {
        json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": { "name": "knit-identities", "namespace": "knit-system", "resourceVersion": version },
            "data": { CONFIGMAP_KEY: serde_json::to_string(allocs).unwrap() },
        })
    }

    /// The exact requests: created when missing; nothing written when
    /// nothing changed; replaced at the version read, and after a conflict
    /// read again and merged with what the other writer added.
    #[tokio::test]
    async fn created_then_replaced_at_the_version_read_and_read_again_after_a_conflict() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api: Api<ConfigMap> = Api::namespaced(kube::Client::new(service, "default"), "knit-system");
        let mut store = IdentityStore::ConfigMap(Box::new(api), "knit-identities".into());
        let server = tokio::spawn(async move {
            let one = format!("{PATH}/knit-identities");
            let (_, send) = next(&mut handle, Method::GET, &one).await;
            reply(send, 404, status(404, "NotFound"));
            let (body, send) = next(&mut handle, Method::POST, PATH).await;
            assert_eq!(body["metadata"]["name"], "knit-identities");
            let created: Allocations =
                serde_json::from_str(body["data"][CONFIGMAP_KEY].as_str().unwrap()).unwrap();
            assert_eq!(
                numbers(&created),
                BTreeMap::from([("web".into(), identity(1, 1))])
            );
            reply(send, 201, configmap(&created, "1"));
            // Unchanged: a read, no write.
            let (_, send) = next(&mut handle, Method::GET, &one).await;
            reply(send, 200, configmap(&created, "1"));
            // db is new; the replace at version 1 loses to another writer
            // that added cache; read again, db gets the next number.
            let (_, send) = next(&mut handle, Method::GET, &one).await;
            reply(send, 200, configmap(&created, "1"));
            let (body, send) = next(&mut handle, Method::PUT, &one).await;
            assert_eq!(body["metadata"]["resourceVersion"], "1");
            reply(send, 409, status(409, "Conflict"));
            let mut theirs = created.clone();
            theirs.insert(
                identity(1, 2),
                StoredIdentity {
                    labels: labels("cache"),
                    unused_since: None,
                },
            );
            let (_, send) = next(&mut handle, Method::GET, &one).await;
            reply(send, 200, configmap(&theirs, "2"));
            let (body, send) = next(&mut handle, Method::PUT, &one).await;
            assert_eq!(body["metadata"]["resourceVersion"], "2");
            reply(send, 200, body);
        });
        let none = BTreeMap::new();
        let web = set(&["web"]);
        let first = store.update(&update(&web, &none, 0)).await.unwrap();
        assert_eq!(numbers(&first)["web"], identity(1, 1));
        store.update(&update(&web, &none, 1)).await.unwrap();
        let both = set(&["web", "db"]);
        let last = store.update(&update(&both, &none, 2)).await.unwrap();
        let n = numbers(&last);
        assert_eq!(
            (n["web"], n["cache"], n["db"]),
            (identity(1, 1), identity(1, 2), identity(1, 3))
        );
        // cache is not used here: marked unused, not dropped.
        assert_eq!(last[&identity(1, 2)].unused_since, Some(2));
        server.await.unwrap();
    }
}
