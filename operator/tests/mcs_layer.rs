//! The MCS layer against a tower-test mock API server that asserts the
//! exact requests: namespaces listed; per imported service a derived
//! Service and a ServiceImport (spec with the derived Service's ClusterIP,
//! then status with the exporting clusters); leftovers pruned; this
//! cluster's ServiceExport conditions written.

mod common;

use common::kube_mock::*;
use http::{Method, Request, Response};
use knit_kvstore::records::{Protocol, ServiceExportFacts, ServicePort, ServiceRecord};
use knit_operator::kube::mcs_controller::{McsReport, reconcile_mcs};
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
    let items: Vec<Value> = items
        .iter()
        .map(|(ns, name)| json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": {"name": name, "namespace": ns}}))
        .collect();
    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList", "metadata": {"resourceVersion": "1"}, "items": items})
}

#[tokio::test]
async fn imports_the_clusterset_service_prunes_leftovers_and_reports_the_export() {
    let (client, mut handle) = mock();
    // a and b export shop/web; "other" does not exist in this cluster (c).
    let records = vec![
        export("cluster-b", "shop", 200),
        export("cluster-a", "shop", 100),
        export("cluster-a", "other", 1),
    ];
    let task = tokio::spawn(async move { reconcile_mcs(&client, "cluster-c", &records).await });
    let derived = derived_service_name("web");

    let (m, path, _, send) = next(&mut handle).await;
    assert_eq!(
        (m, path.split('?').next().unwrap()),
        (Method::GET, "/api/v1/namespaces")
    );
    respond(send, metadata_list(&[("", "shop"), ("", "default")]));

    let (m, path, body, send) = next(&mut handle).await;
    assert_eq!(m, Method::PATCH);
    assert!(
        path.starts_with(&format!("/api/v1/namespaces/shop/services/{derived}?")),
        "{path}"
    );
    assert!(
        path.contains("fieldManager=knit-operator") && path.contains("force=true"),
        "{path}"
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

    let (m, path, _, send) = next(&mut handle).await;
    assert_eq!(
        (m, path.split('?').next().unwrap()),
        (
            Method::DELETE,
            "/api/v1/namespaces/shop/services/derived-0000000000"
        )
    );
    respond(
        send,
        json!({"apiVersion": "v1", "kind": "Status", "status": "Success", "metadata": {}}),
    );

    let (m, path, _, send) = next(&mut handle).await;
    assert_eq!(m, Method::GET);
    assert!(
        path.starts_with("/apis/multicluster.x-k8s.io/v1alpha1/serviceimports?"),
        "{path}"
    );
    respond(send, metadata_list(&[("shop", "web")]));

    // This cluster exports shop/web too, but has no such Service: Valid=False.
    let (m, path, _, send) = next(&mut handle).await;
    assert_eq!(
        (m, path.split('?').next().unwrap()),
        (Method::GET, "/apis/multicluster.x-k8s.io/v1alpha1/serviceexports")
    );
    respond(
        send,
        json!({"apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceExportList", "metadata": {"resourceVersion": "1"},
        "items": [{"apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceExport", "metadata": {"name": "web", "namespace": "shop", "generation": 1}}]}),
    );

    let (m, path, body, send) = next(&mut handle).await;
    assert_eq!(m, Method::PATCH);
    assert!(
        path.starts_with("/apis/multicluster.x-k8s.io/v1alpha1/namespaces/shop/serviceexports/web/status?"),
        "{path}"
    );
    let conditions = body["status"]["conditions"].as_array().unwrap();
    let find = |t: &str| conditions.iter().find(|c| c["type"] == t).unwrap().clone();
    assert_eq!(
        (find("Valid")["status"].clone(), find("Valid")["reason"].clone()),
        (json!("False"), json!("NoService"))
    );
    assert_eq!(find("Conflict")["status"], "False");
    assert_eq!(find("Ready")["status"], "False");
    assert_eq!(find("Valid")["observedGeneration"], 1);
    respond(send, with_meta(body));

    let report = task.await.unwrap().unwrap();
    assert_eq!(
        report,
        McsReport {
            imported: 1,
            deleted: 1,
            statuses: 1
        }
    );
}
