//! The MCS layer against a tower-test mock API server that asserts the
//! exact requests: ServiceImports and namespaces listed; per imported
//! service a derived Service and a ServiceImport (spec with the derived
//! Service's ClusterIP, then status with the exporting clusters), all by
//! server-side apply without force; leftovers pruned; this cluster's
//! ServiceExport conditions written; and on a pass where nothing changed,
//! no write at all.

mod common;

use common::kube_mock::*;
use http::{Method, Request, Response};
use knit_kvstore::records::{Protocol, ServiceExportFacts, ServicePort, ServiceRecord};
use knit_operator::kube::mcs_controller::{McsReport, McsSync};
use knit_operator::mcs::derived_service_name;
use kube::client::Body;
use serde_json::{Value, json};

fn export(cluster: &str, namespace: &str, created: i64) -> ServiceRecord {
    ServiceRecord {
        cluster: cluster.into(),
        namespace: namespace.into(),
        name: "web".into(),
        ports: vec![ServicePort {
            name: "http".into(),
            port: 80,
            protocol: Protocol::Tcp,
        }],
        cluster_ips: vec![],
        backends: vec![],
        export: true,
        import: true,
        affinity: Default::default(),
        preferred_clusters: vec![],
        import_clusters: None,
        failover: None,
        service_export: Some(ServiceExportFacts {
            created_unix: created,
            headless: false,
            session_affinity: "None".into(),
        }),
        withdrawn: false,
    }
}

async fn next(
    handle: &mut Handle,
) -> (
    Method,
    String,
    Value,
    tower_test::mock::SendResponse<Response<Body>>,
) {
    let (req, send): (Request<Body>, _) = handle.next_request().await.expect("a further request");
    let (method, uri) = (req.method().clone(), req.uri().clone());
    let bytes = req.into_body().collect_bytes().await.unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let target = format!("{}?{}", uri.path(), uri.query().unwrap_or_default());
    (method, target, body, send)
}

fn metadata_list(items: &[(&str, &str)]) -> Value {
    labelled_list(items, json!({}))
}

/// Objects Knit made carry its managed-by label.
fn ours(items: &[(&str, &str)]) -> Value {
    labelled_list(
        items,
        json!({"app.kubernetes.io/managed-by": "knit-operator", "app.kubernetes.io/component": "mcs"}),
    )
}

fn labelled_list(items: &[(&str, &str)], labels: Value) -> Value {
    let items: Vec<Value> = items
        .iter()
        .map(|(ns, name)| json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": {"name": name, "namespace": ns, "labels": labels}}))
        .collect();
    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList", "metadata": {"resourceVersion": "1"}, "items": items})
}

const IMPORTS: &str = "/apis/multicluster.x-k8s.io/v1alpha1/serviceimports";
const EXPORTS: &str = "/apis/multicluster.x-k8s.io/v1alpha1/serviceexports";

async fn expect_get(handle: &mut Handle, path: &str) -> tower_test::mock::SendResponse<Response<Body>> {
    let (m, target, _, send) = next(handle).await;
    assert_eq!(
        (m, target.split('?').next().unwrap()),
        (Method::GET, path),
        "{target}"
    );
    send
}

fn export_list(status: Option<Value>) -> Value {
    let mut export = json!({"apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceExport", "metadata": {"name": "web", "namespace": "shop", "generation": 1}});
    if let Some(status) = status {
        export["status"] = status;
    }
    json!({"apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceExportList", "metadata": {"resourceVersion": "1"}, "items": [export]})
}

#[tokio::test]
async fn imports_the_clusterset_service_prunes_leftovers_reports_the_export_then_writes_nothing_while_nothing_changes()
 {
    let (client, mut handle) = mock();
    // a and b export shop/web; "other" does not exist in this cluster (c).
    let records = vec![
        export("cluster-b", "shop", 200),
        export("cluster-a", "shop", 100),
        export("cluster-a", "other", 1),
    ];
    let mut sync = McsSync::new(client, "cluster-c");
    let task = {
        let records = records.clone();
        tokio::spawn(async move {
            let report = sync.reconcile(&records).await;
            (sync, report)
        })
    };
    let derived = derived_service_name("web");

    let send = expect_get(&mut handle, IMPORTS).await;
    respond(send, ours(&[("shop", "web"), ("shop", "old")]));
    let send = expect_get(&mut handle, "/api/v1/namespaces").await;
    respond(send, metadata_list(&[("", "shop"), ("", "default")]));

    let (m, path, body, send) = next(&mut handle).await;
    assert_eq!(m, Method::PATCH);
    assert!(
        path.starts_with(&format!("/api/v1/namespaces/shop/services/{derived}?")),
        "{path}"
    );
    assert!(
        path.contains("fieldManager=knit-operator") && !path.contains("force"),
        "server-side apply without force: a field another controller owns is a conflict, not taken over: {path}"
    );
    assert_eq!(
        body["metadata"]["labels"]["multicluster.kubernetes.io/service-name"],
        "web"
    );
    assert_eq!(body["spec"]["type"], "ClusterIP");
    assert!(
        body["spec"].get("selector").is_none(),
        "a derived Service selects no pods"
    );
    let mut allocated = body.clone();
    allocated["spec"]["clusterIP"] = json!("10.96.240.7");
    allocated["spec"]["clusterIPs"] = json!(["10.96.240.7"]);
    respond(send, with_meta(allocated));

    let (m, path, body, send) = next(&mut handle).await;
    assert_eq!(m, Method::PATCH);
    assert!(
        path.starts_with("/apis/multicluster.x-k8s.io/v1alpha1/namespaces/shop/serviceimports/web?"),
        "{path}"
    );
    assert!(!path.contains("force"), "{path}");
    assert_eq!(
        body["spec"]["ips"],
        json!(["10.96.240.7"]),
        "the clusterset VIP is the derived Service's ClusterIP"
    );
    assert_eq!(body["spec"]["type"], "ClusterSetIP");
    assert_eq!(body["spec"]["ports"][0]["port"], 80);
    assert!(
        body.get("status").is_none(),
        "status goes through the status subresource"
    );
    respond(send, with_meta(body));

    let (m, path, body, send) = next(&mut handle).await;
    assert_eq!(m, Method::PATCH);
    assert!(
        path.starts_with("/apis/multicluster.x-k8s.io/v1alpha1/namespaces/shop/serviceimports/web/status?"),
        "{path}"
    );
    assert_eq!(
        body["status"]["clusters"],
        json!([{"cluster": "cluster-a"}, {"cluster": "cluster-b"}])
    );
    respond(
        send,
        with_meta(
            json!({"apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceImport",
        "metadata": {"name": "web", "namespace": "shop"}, "spec": {"type": "ClusterSetIP", "ports": []}}),
        ),
    );

    let (m, path, _, send) = next(&mut handle).await;
    assert_eq!(m, Method::GET);
    assert!(path.starts_with("/api/v1/services?"), "{path}");
    assert!(path.contains("labelSelector=app.kubernetes.io%2Fmanaged-by%3Dknit-operator%2Cmulticluster.kubernetes.io%2Fservice-name"), "{path}");
    respond(
        send,
        metadata_list(&[("shop", &derived), ("shop", "derived-0000000000")]),
    );
    for stale in [
        "/api/v1/namespaces/shop/services/derived-0000000000",
        "/apis/multicluster.x-k8s.io/v1alpha1/namespaces/shop/serviceimports/old",
    ] {
        let (m, path, _, send) = next(&mut handle).await;
        assert_eq!((m, path.split('?').next().unwrap()), (Method::DELETE, stale));
        respond(
            send,
            json!({"apiVersion": "v1", "kind": "Status", "status": "Success", "metadata": {}}),
        );
    }

    // This cluster exports shop/web too, but has no such Service: Valid=False.
    let send = expect_get(&mut handle, EXPORTS).await;
    respond(send, export_list(None));
    let (m, path, body, send) = next(&mut handle).await;
    assert_eq!(m, Method::PATCH);
    assert!(
        path.starts_with("/apis/multicluster.x-k8s.io/v1alpha1/namespaces/shop/serviceexports/web/status?"),
        "{path}"
    );
    assert!(!path.contains("force"), "{path}");
    let status = body["status"].clone();
    let conditions = status["conditions"].as_array().unwrap();
    let find = |t: &str| conditions.iter().find(|c| c["type"] == t).unwrap().clone();
    assert_eq!(
        (find("Valid")["status"].clone(), find("Valid")["reason"].clone()),
        (json!("False"), json!("NoService"))
    );
    assert_eq!(find("Conflict")["status"], "False");
    assert_eq!(find("Ready")["status"], "False");
    assert_eq!(find("Valid")["observedGeneration"], 1);
    respond(send, with_meta(body));

    let (mut sync, report) = task.await.unwrap();
    assert_eq!(
        report.unwrap(),
        McsReport {
            imported: 1,
            applied: 3,
            deleted: 2,
            statuses: 1,
            ..McsReport::default()
        }
    );

    // Nothing changed: four lists, no write (an idle mesh of 500 imported
    // services used to cost 1,500 applies every 5 s).
    let task = tokio::spawn(async move { sync.reconcile(&records).await });
    let send = expect_get(&mut handle, IMPORTS).await;
    respond(send, ours(&[("shop", "web")]));
    let send = expect_get(&mut handle, "/api/v1/namespaces").await;
    respond(send, metadata_list(&[("", "shop"), ("", "default")]));
    let send = expect_get(&mut handle, "/api/v1/services").await;
    respond(send, metadata_list(&[("shop", &derived)]));
    let send = expect_get(&mut handle, EXPORTS).await;
    respond(send, export_list(Some(status)));
    let report = tokio::time::timeout(std::time::Duration::from_secs(2), task)
        .await
        .expect("no further request")
        .unwrap()
        .unwrap();
    assert_eq!(
        report,
        McsReport {
            imported: 1,
            ..McsReport::default()
        }
    );
}

#[tokio::test]
async fn a_service_import_another_controller_made_is_left_alone() {
    let (client, mut handle) = mock();
    let records = vec![export("cluster-a", "shop", 100)];
    let mut sync = McsSync::new(client, "cluster-c");
    let task = tokio::spawn(async move { sync.reconcile(&records).await });
    let send = expect_get(&mut handle, IMPORTS).await;
    respond(send, metadata_list(&[("shop", "web")]));
    let send = expect_get(&mut handle, "/api/v1/namespaces").await;
    respond(send, metadata_list(&[("", "shop")]));
    // No derived Service, no ServiceImport apply, no delete of theirs.
    let send = expect_get(&mut handle, "/api/v1/services").await;
    respond(send, metadata_list(&[]));
    let send = expect_get(&mut handle, EXPORTS).await;
    respond(
        send,
        json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": []}),
    );
    let report = task.await.unwrap().unwrap();
    assert_eq!(
        report,
        McsReport {
            foreign: 1,
            ..McsReport::default()
        }
    );
}

#[tokio::test]
async fn without_the_mcs_crds_a_pass_does_nothing() {
    let (client, mut handle) = mock();
    let records = vec![export("cluster-a", "shop", 100)];
    let mut sync = McsSync::new(client, "cluster-c");
    let task = tokio::spawn(async move { sync.reconcile(&records).await });
    let send = expect_get(&mut handle, IMPORTS).await;
    respond_not_found(send);
    assert_eq!(task.await.unwrap().unwrap(), McsReport::default());
}
