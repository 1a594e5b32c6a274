//! The Kubernetes source asks the API server for exactly the kinds its
//! reader needs: an agent (one per node) lists and watches NetworkPolicies
//! and Cilium's policies, and nothing else. Checked against a tower-test mock API server that sees
//! every request.

use std::time::Duration;

use http::{Request, Response};
use knit_sources::kubernetes::KubernetesSource;
use knit_sources::{Kinds, Source};
use kube::Client;
use kube::client::Body;
use serde_json::json;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

async fn next_path(handle: &mut Handle) -> Option<(String, tower_test::mock::SendResponse<Response<Body>>)> {
    let (req, send) = tokio::time::timeout(Duration::from_secs(2), handle.next_request())
        .await
        .ok()??;
    let uri = req.uri();
    Some((
        format!("{}?{}", uri.path(), uri.query().unwrap_or_default()),
        send,
    ))
}

#[tokio::test]
async fn an_agent_watches_network_policies_only() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let mut source = KubernetesSource::new(client, Kinds::AGENT);
    assert!(!source.is_ready(), "nothing listed yet");

    let driver = tokio::spawn(async move {
        while !source.is_ready() {
            source.next_change().await;
        }
        source
    });
    // NetworkPolicies, and Cilium's two policy kinds (not installed here: 404).
    let mut asked = Vec::new();
    for _ in 0..3 {
        let (path, send) = next_path(&mut handle).await.expect("a list per kind");
        let resource = path.split('?').next().unwrap().to_owned();
        if resource == "/apis/networking.k8s.io/v1/networkpolicies" {
            let policy = json!({
                "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": "web", "namespace": "shop", "resourceVersion": "5"},
                "spec": {"podSelector": {}}
            });
            let list = json!({
                "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicyList",
                "metadata": {"resourceVersion": "5"}, "items": [policy]
            });
            send.send_response(
                Response::builder()
                    .body(Body::from(serde_json::to_vec(&list).unwrap()))
                    .unwrap(),
            );
        } else {
            let status = json!({"apiVersion": "v1", "kind": "Status", "status": "Failure",
                "reason": "NotFound", "code": 404, "metadata": {}});
            send.send_response(
                Response::builder()
                    .status(404)
                    .body(Body::from(serde_json::to_vec(&status).unwrap()))
                    .unwrap(),
            );
        }
        asked.push(resource);
    }
    asked.sort();
    assert_eq!(
        asked,
        [
            "/apis/cilium.io/v2/ciliumclusterwidenetworkpolicies",
            "/apis/cilium.io/v2/ciliumnetworkpolicies",
            "/apis/networking.k8s.io/v1/networkpolicies",
        ]
    );
    let source = tokio::time::timeout(Duration::from_secs(5), driver)
        .await
        .expect("ready after one list each, Cilium's CRDs absent")
        .unwrap();
    assert_eq!(
        source.state().network_policies.keys().collect::<Vec<_>>(),
        ["shop/web"]
    );
    assert!(source.state().pods.is_empty() && source.state().services.is_empty());

    // Whatever else it asks for is one of those watches; never another kind.
    while let Some((path, _send)) = next_path(&mut handle).await {
        assert!(
            path.starts_with("/apis/networking.k8s.io/v1/networkpolicies?")
                || path.starts_with("/apis/cilium.io/v2/"),
            "an agent asked for another kind: {path}"
        );
    }
}

#[tokio::test]
async fn the_apiserver_watches_every_kind_it_exports() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let source = KubernetesSource::new(client, Kinds::ALL);
    let driver = tokio::spawn(async move {
        let mut source = source;
        loop {
            source.next_change().await;
        }
    });
    let mut kinds = Vec::new();
    while let Some((path, send)) = next_path(&mut handle).await {
        kinds.push(
            path.split('?')
                .next()
                .unwrap()
                .rsplit('/')
                .next()
                .unwrap()
                .to_owned(),
        );
        drop(send);
        if kinds.len() == 8 {
            break;
        }
    }
    driver.abort();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "endpointslices",
            "globalservicepolicies",
            "namespaces",
            "networkpolicies",
            "nodes",
            "pods",
            "serviceexports",
            "services"
        ]
    );
}

#[tokio::test]
async fn without_the_service_export_crd_the_apiserver_still_becomes_ready() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let mut source = KubernetesSource::new(client, Kinds::ALL);
    let driver = tokio::spawn(async move {
        while !source.is_ready() {
            source.next_change().await;
        }
        source
    });
    let mut answered = 0;
    while answered < 8 {
        let (path, send) = next_path(&mut handle).await.expect("a list per kind");
        let path = path.split('?').next().unwrap().to_owned();
        if path.ends_with("/serviceexports") {
            let status = json!({"apiVersion": "v1", "kind": "Status", "status": "Failure",
                "reason": "NotFound", "code": 404, "metadata": {}});
            send.send_response(
                Response::builder()
                    .status(404)
                    .body(Body::from(serde_json::to_vec(&status).unwrap()))
                    .unwrap(),
            );
        } else {
            let list = json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": []});
            send.send_response(
                Response::builder()
                    .body(Body::from(serde_json::to_vec(&list).unwrap()))
                    .unwrap(),
            );
        }
        answered += 1;
    }
    let source = tokio::time::timeout(Duration::from_secs(5), driver)
        .await
        .expect("ready although ServiceExports cannot be listed")
        .unwrap();
    assert!(source.state().service_exports.is_empty());
}
