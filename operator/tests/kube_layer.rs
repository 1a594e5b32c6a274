//! The thin Kubernetes layer against a tower-test mock API server that
//! asserts the exact requests: list, server-side apply, prune (delete),
//! status patch and Events.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::kube_mock::*;
use common::*;
use http::{Method, Response};
use knit_crds::{ClusterMeshPeer, GlobalServicePolicy, GlobalServicePolicySpec};
use knit_operator::kube::mesh::{MeshContext, reconcile_mesh};
use knit_operator::kube::{Applier, gsp_controller};
use kube::client::Body;
use serde_json::{Value, json};

/// Receives the next request, asserts method and path (and, for applies, the
/// server-side-apply parameters), and returns it with its JSON body.
async fn expect(
    handle: &mut Handle,
    method: Method,
    path: &str,
) -> (Value, tower_test::mock::SendResponse<Response<Body>>) {
    let (req, send) = handle
        .next_request()
        .await
        .expect("client made no further request");
    let uri = req.uri().clone();
    assert_eq!(
        (req.method(), uri.path()),
        (&method, path),
        "unexpected request {uri}"
    );
    if method == Method::PATCH {
        let query = uri.query().unwrap_or_default();
        assert!(
            query.contains("fieldManager=knit-operator") && query.contains("force=true"),
            "{uri}"
        );
        assert_eq!(req.headers()["content-type"], "application/apply-patch+yaml");
    }
    if method == Method::GET && path.ends_with("/secrets") {
        assert!(
            uri.query()
                .unwrap_or_default()
                .contains("labelSelector=app.kubernetes.io%2Fmanaged-by%3Dknit-operator"),
            "{uri}"
        );
    }
    (json_body(req).await, send)
}

fn cmp_b() -> ClusterMeshPeer {
    let input = peer("b", "b", 2, "2026-01-01T00:00:00Z");
    let mut cmp = ClusterMeshPeer::new("b", input.spec);
    cmp.metadata.generation = Some(1);
    cmp.metadata.uid = Some("uid-b".into());
    cmp
}

#[tokio::test]
async fn first_reconcile_applies_every_object_prunes_leftovers_and_writes_status() {
    let (client, mut handle) = mock();
    let ctx = MeshContext {
        config: config_a(),
        applier: Applier::new(client, "knit-system", Some("op-0".into())),
        reports: Default::default(),
        node_sources: Default::default(),
    };
    let peers = vec![Arc::new(cmp_b())];
    let task = tokio::spawn(async move { reconcile_mesh(&ctx, &peers).await });

    let ns = "/api/v1/namespaces/knit-system";
    let (_, send) = expect(&mut handle, Method::GET, &format!("{ns}/secrets")).await;
    let stale = json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "knit-peer-old", "namespace": "knit-system" } });
    respond(send, list("SecretList", vec![stale]));
    let (_, send) = expect(
        &mut handle,
        Method::GET,
        &format!("{ns}/services/knit-apiserver-peers"),
    )
    .await;
    respond_not_found(send);

    for name in [
        "knit-ca",
        "knit-local-ca",
        "knit-apiserver-server-cert",
        "knit-peer-front-cert",
        "knit-admin-client-cert",
        "knit-local-client-cert",
        "knit-peer-access",
        "knit-peer-configs",
    ] {
        let (body, send) = expect(&mut handle, Method::PATCH, &format!("{ns}/secrets/{name}")).await;
        assert_eq!(
            (body["kind"].as_str(), body["metadata"]["name"].as_str()),
            (Some("Secret"), Some(name))
        );
        respond(send, with_meta(body));
    }
    for name in ["knit-mesh-ca", "knit-trusted-client-cas", "knit-etcd-users"] {
        let (body, send) = expect(&mut handle, Method::PATCH, &format!("{ns}/configmaps/{name}")).await;
        assert_eq!(body["kind"], "ConfigMap");
        respond(send, with_meta(body));
    }
    let (body, send) = expect(
        &mut handle,
        Method::PATCH,
        &format!("{ns}/services/knit-apiserver"),
    )
    .await;
    assert_eq!(body["spec"]["type"], "ClusterIP", "etcd is never exposed outside");
    assert_eq!(body["spec"]["ports"].as_array().unwrap().len(), 1);
    assert_eq!(body["spec"]["ports"][0]["name"], "etcd");
    respond(send, with_meta(body));
    let (body, send) = expect(
        &mut handle,
        Method::PATCH,
        &format!("{ns}/services/knit-apiserver-replicas"),
    )
    .await;
    assert_eq!(
        body["spec"]["clusterIP"], "None",
        "headless: one address per replica"
    );
    assert_eq!(body["spec"]["ports"][0]["name"], "etcd");
    respond(send, with_meta(body));
    let (body, send) = expect(
        &mut handle,
        Method::PATCH,
        &format!("{ns}/services/knit-apiserver-peers"),
    )
    .await;
    assert_eq!(body["spec"]["type"], "LoadBalancer");
    assert_eq!(body["spec"]["ports"].as_array().unwrap().len(), 1);
    assert_eq!(body["spec"]["ports"][0]["name"], "peers");
    respond(send, with_meta(body));
    let (body, send) = expect(
        &mut handle,
        Method::PATCH,
        "/apis/networking.k8s.io/v1/namespaces/knit-system/networkpolicies/knit-apiserver",
    )
    .await;
    assert_eq!(body["spec"]["policyTypes"][0], "Ingress");
    respond(send, with_meta(body));
    let (body, send) = expect(
        &mut handle,
        Method::PATCH,
        "/apis/policy/v1/namespaces/knit-system/poddisruptionbudgets/knit-apiserver",
    )
    .await;
    assert_eq!(body["spec"]["minAvailable"], 1);
    assert_eq!(
        body["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"],
        "knit-apiserver"
    );
    respond(send, with_meta(body));
    let (body, send) = expect(
        &mut handle,
        Method::PATCH,
        "/apis/apps/v1/namespaces/knit-system/deployments/knit-apiserver",
    )
    .await;
    assert_eq!(body["kind"], "Deployment");
    assert_eq!(body["spec"]["replicas"], 2);
    assert_eq!(
        body["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
            [0]["podAffinityTerm"]["topologyKey"],
        "kubernetes.io/hostname"
    );
    respond(send, with_meta(body));

    let (_, send) = expect(
        &mut handle,
        Method::DELETE,
        &format!("{ns}/secrets/knit-peer-old"),
    )
    .await;
    respond(
        send,
        json!({ "apiVersion": "v1", "kind": "Status", "status": "Success", "metadata": {} }),
    );
    let (_, send) = expect(&mut handle, Method::GET, &format!("{ns}/configmaps")).await;
    respond(send, list("ConfigMapList", vec![]));

    let (body, send) = expect(
        &mut handle,
        Method::PATCH,
        "/apis/knit.dev/v1alpha1/clustermeshpeers/b/status",
    )
    .await;
    assert_eq!(
        (body["apiVersion"].as_str(), body["kind"].as_str()),
        (Some("knit.dev/v1alpha1"), Some("ClusterMeshPeer"))
    );
    let types: Vec<&str> = body["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, vec!["CertificateReady", "Connected", "Synced", "Ready"]);
    assert_eq!(body["status"]["observedGeneration"], 1);
    assert!(
        body.get("spec").is_none(),
        "a status patch must not touch the spec"
    );
    let mut echoed = serde_json::to_value(cmp_b()).unwrap();
    echoed["status"] = body["status"].clone();
    respond(send, with_meta(echoed));

    // `kubectl describe` selects Events by the object's UID: each Event
    // names it, a cluster-scoped peer's in namespace default (the only one
    // the API server accepts for it), the Deployment's in its own.
    let mut events = BTreeMap::new();
    while !task.is_finished() {
        let Ok(Some((req, send))) =
            tokio::time::timeout(std::time::Duration::from_secs(2), handle.next_request()).await
        else {
            break;
        };
        assert_eq!(req.method(), Method::POST);
        let path = req.uri().path().to_owned();
        let body: Value = serde_json::from_slice(&req.into_body().collect_bytes().await.unwrap()).unwrap();
        events.insert(body["reason"].as_str().unwrap().to_owned(), (path, body.clone()));
        respond(send, with_meta(body));
    }
    let plan = task.await.unwrap().unwrap();
    assert_eq!(plan.accepted.len(), 1);
    let (path, body) = &events["ReadyFalse"];
    assert_eq!(path, "/apis/events.k8s.io/v1/namespaces/default/events");
    assert_eq!(
        body["regarding"],
        json!({ "apiVersion": "knit.dev/v1alpha1", "kind": "ClusterMeshPeer", "name": "b", "uid": "uid-b" })
    );
    assert_eq!(body["type"], "Warning");
    assert_eq!(body["action"], "Reconcile");
    assert_eq!(body["reportingController"], "knit-operator");
    assert_eq!(body["reportingInstance"], "op-0");
    assert!(
        body["note"].as_str().unwrap().starts_with("Connected: "),
        "{body}"
    );
    let (path, body) = &events["CertificateIssued"];
    assert_eq!(path, "/apis/events.k8s.io/v1/namespaces/knit-system/events");
    assert_eq!(
        body["regarding"],
        json!({ "apiVersion": "apps/v1", "kind": "Deployment", "name": "knit-apiserver", "namespace": "knit-system", "uid": "uid-1" }),
        "the UID the Deployment's apply returned"
    );
    assert_eq!(body["type"], "Normal");
    assert!(body["note"].as_str().unwrap().len() <= 1024);
    assert_eq!(events.len(), 2, "{:?}", events.keys());
}

#[tokio::test]
async fn reconcile_with_nothing_changed_writes_no_status_and_no_events() {
    // Render once to learn the stored state and status a converged cluster has.
    let config = config_a();
    let mut cmp = cmp_b();
    let first = render(
        &config,
        &[knit_operator::files::offline_peer_input(&cmp)],
        &Default::default(),
        jiff::Timestamp::now(),
    );
    cmp.status = Some(first.peer_statuses["b"].clone());

    let (client, mut handle) = mock();
    let ctx = MeshContext {
        config,
        applier: Applier::new(client, "knit-system", None),
        reports: Default::default(),
        node_sources: Default::default(),
    };
    let peers = vec![Arc::new(cmp)];
    let task = tokio::spawn(async move { reconcile_mesh(&ctx, &peers).await });
    let ns = "/api/v1/namespaces/knit-system";
    let (_, send) = expect(&mut handle, Method::GET, &format!("{ns}/secrets")).await;
    let secrets: Vec<Value> = first
        .secrets
        .iter()
        .map(|s| with_meta(serde_json::to_value(s).unwrap()))
        .collect();
    respond(send, list("SecretList", secrets));
    let (_, send) = expect(
        &mut handle,
        Method::GET,
        &format!("{ns}/services/knit-apiserver-peers"),
    )
    .await;
    respond_not_found(send);
    // Seventeen idempotent applies, one ConfigMap list; nothing else.
    for _ in 0..17 {
        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!(req.method(), Method::PATCH, "{}", req.uri());
        assert!(
            !req.uri().path().ends_with("/status"),
            "status written although unchanged"
        );
        let body: Value = serde_json::from_slice(&req.into_body().collect_bytes().await.unwrap()).unwrap();
        if body["kind"] == "Secret" {
            let before = first
                .secrets
                .iter()
                .find(|s| s.metadata.name.as_deref() == body["metadata"]["name"].as_str())
                .unwrap();
            assert_eq!(
                body["data"],
                serde_json::to_value(before).unwrap()["data"],
                "a stored certificate was re-issued"
            );
        }
        respond(send, with_meta(body));
    }
    let (_, send) = expect(&mut handle, Method::GET, &format!("{ns}/configmaps")).await;
    respond(send, list("ConfigMapList", vec![]));
    let plan = task.await.unwrap().unwrap();
    assert!(plan.events.is_empty(), "{:?}", plan.events);
}

#[tokio::test]
async fn the_load_balancer_address_gets_into_the_server_certificate() {
    let mut config = config_a();
    config.apiserver.external_addresses.clear();
    let first = render(&config, &[], &Default::default(), jiff::Timestamp::now());
    let (client, mut handle) = mock();
    let ctx = MeshContext {
        config,
        applier: Applier::new(client, "knit-system", None),
        reports: Default::default(),
        node_sources: Default::default(),
    };
    let task = tokio::spawn(async move { reconcile_mesh(&ctx, &[]).await });
    let ns = "/api/v1/namespaces/knit-system";
    let (_, send) = expect(&mut handle, Method::GET, &format!("{ns}/secrets")).await;
    let secrets = first
        .secrets
        .iter()
        .map(|s| with_meta(serde_json::to_value(s).unwrap()))
        .collect();
    respond(send, list("SecretList", secrets));
    let (_, send) = expect(
        &mut handle,
        Method::GET,
        &format!("{ns}/services/knit-apiserver-peers"),
    )
    .await;
    respond(
        send,
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": { "name": "knit-apiserver-peers", "namespace": "knit-system" },
            "status": { "loadBalancer": { "ingress": [ { "ip": "192.0.2.7" }, { "hostname": "mesh.lb.example.com" } ] } }
        }),
    );
    let mut server_cert = None;
    while !task.is_finished() {
        let Ok(Some((req, send))) =
            tokio::time::timeout(std::time::Duration::from_secs(2), handle.next_request()).await
        else {
            break;
        };
        let path = req.uri().path().to_owned();
        let bytes = req.into_body().collect_bytes().await.unwrap();
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        if path.ends_with("/secrets/knit-apiserver-server-cert") {
            let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(body.clone()).unwrap();
            server_cert = Some(String::from_utf8(secret.data.unwrap()["tls.crt"].0.clone()).unwrap());
        }
        if path.ends_with("/configmaps") {
            respond(send, list("ConfigMapList", vec![]));
        } else {
            respond(send, with_meta(body));
        }
    }
    task.await.unwrap().unwrap();
    let sans = knit_operator::pki::inspect(&server_cert.expect("server certificate applied"))
        .unwrap()
        .sans;
    for address in ["192.0.2.7", "mesh.lb.example.com"] {
        assert!(
            sans.contains(&address.to_owned()),
            "the exported address {address} is missing from the server certificate: {sans:?}"
        );
    }
}

#[tokio::test]
async fn policy_statuses_are_patched_only_when_they_change() {
    let (client, mut handle) = mock();
    let applier = Applier::new(client, "knit-system", None);
    let spec = |services: &[&str]| GlobalServicePolicySpec {
        services: Some(services.iter().map(|s| s.to_string()).collect()),
        selector: None,
        export: true,
        import: true,
        affinity: knit_crds::Affinity::Local,
        clusters: None,
        preferred_clusters: None,
        failover: None,
    };
    let mut older = GlobalServicePolicy::new("older", spec(&["web"]));
    older.metadata.namespace = Some("shop".into());
    older.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        "2026-01-01T00:00:00Z".parse().unwrap(),
    ));
    let mut newer = GlobalServicePolicy::new("newer", spec(&["web"]));
    newer.metadata.namespace = Some("shop".into());
    newer.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        "2026-02-01T00:00:00Z".parse().unwrap(),
    ));
    let policies = vec![Arc::new(older), Arc::new(newer)];
    let task =
        tokio::spawn(async move { gsp_controller::reconcile_namespace(&applier, "shop", &policies).await });

    let (_, send) = expect(&mut handle, Method::GET, "/api/v1/namespaces/shop/services").await;
    let web = json!({ "apiVersion": "v1", "kind": "Service", "metadata": { "name": "web", "namespace": "shop", "labels": { "app": "web" } } });
    respond(send, list("ServiceList", vec![web]));

    let mut seen = BTreeMap::new();
    for _ in 0..2 {
        let (req, send) = handle.next_request().await.unwrap();
        let path = req.uri().path().to_owned();
        assert_eq!(req.method(), Method::PATCH);
        let body: Value = serde_json::from_slice(&req.into_body().collect_bytes().await.unwrap()).unwrap();
        assert_eq!(body["kind"], "GlobalServicePolicy");
        seen.insert(path, body["status"].clone());
        let mut echoed = body.clone();
        echoed["metadata"] = json!({ "name": "x", "namespace": "shop", "resourceVersion": "3" });
        echoed["spec"] = json!({ "services": ["web"] });
        respond(send, echoed);
    }
    assert_eq!(task.await.unwrap().unwrap(), 2);
    let newer = &seen["/apis/knit.dev/v1alpha1/namespaces/shop/globalservicepolicies/newer/status"];
    assert_eq!(newer["conflicts"][0]["governedBy"], "older");
    let older = &seen["/apis/knit.dev/v1alpha1/namespaces/shop/globalservicepolicies/older/status"];
    assert_eq!(older["matchedServices"], json!(["web"]));
    drop(handle);
}

#[test]
fn the_peers_services_allocated_node_port_is_read_for_the_export() {
    let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(json!({
        "metadata": { "name": "knit-apiserver-peers" },
        "spec": { "type": "NodePort", "ports": [
            { "name": "metrics", "port": 9962, "nodePort": 30001 },
            { "name": "peers", "port": 2480, "nodePort": 31234 }
        ] },
        "status": { "loadBalancer": { "ingress": [{ "ip": "192.0.2.7" }] } }
    }))
    .unwrap();
    let view = knit_operator::kube::apply::peers_service_view(&svc);
    assert_eq!(view.node_port, Some(31234));
    assert_eq!(view.ingress, vec!["192.0.2.7"]);
}
