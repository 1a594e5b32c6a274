//! The Kubernetes source asks the API server for exactly the kinds its
//! reader needs: an agent (one per node) lists and watches NetworkPolicies,
//! and Cilium's policies while their CRDs exist, and nothing else. Checked against a tower-test mock API server that sees
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

fn respond(send: tower_test::mock::SendResponse<Response<Body>>, body: serde_json::Value) {
    send.send_response(
        Response::builder()
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap(),
    );
}

const CRDS: &str = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";

fn crd_list(names: &[&str]) -> serde_json::Value {
    let items: Vec<_> = names
        .iter()
        .map(|n| {
            json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": n, "resourceVersion": "3"}})
        })
        .collect();
    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
        "metadata": {"resourceVersion": "3"}, "items": items})
}

#[tokio::test]
async fn an_agent_watches_network_policies_only_and_never_polls_for_cilium() {
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
    // NetworkPolicies, and whether Cilium's two CRDs exist (they do not).
    let mut asked = Vec::new();
    for _ in 0..3 {
        let (path, send) = next_path(&mut handle).await.expect("a list per kind");
        let (resource, query) = path.split_once('?').unwrap();
        if resource == "/apis/networking.k8s.io/v1/networkpolicies" {
            let policy = json!({
                "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": "web", "namespace": "shop", "resourceVersion": "5"},
                "spec": {"podSelector": {}}
            });
            respond(
                send,
                json!({
                    "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicyList",
                    "metadata": {"resourceVersion": "5"}, "items": [policy]
                }),
            );
            asked.push(resource.to_owned());
        } else {
            assert_eq!(resource, CRDS);
            respond(send, crd_list(&[]));
            asked.push(
                query
                    .split('&')
                    .find(|q| q.starts_with("fieldSelector"))
                    .unwrap()
                    .to_owned(),
            );
        }
    }
    asked.sort();
    assert_eq!(
        asked,
        [
            "/apis/networking.k8s.io/v1/networkpolicies",
            "fieldSelector=metadata.name%3Dciliumclusterwidenetworkpolicies.cilium.io",
            "fieldSelector=metadata.name%3Dciliumnetworkpolicies.cilium.io",
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

    // What follows are the three watches, held open: no re-list of a kind
    // that does not exist (a 404-retrying watcher would ask again within a
    // second).
    let mut watches = Vec::new();
    while let Some((path, send)) = next_path(&mut handle).await {
        assert!(
            path.starts_with("/apis/networking.k8s.io/v1/networkpolicies?") || path.starts_with(CRDS),
            "an agent asked for another kind: {path}"
        );
        assert!(path.contains("watch=true"), "a list again: {path}");
        watches.push(send);
    }
    assert_eq!(watches.len(), 3);
}

#[tokio::test]
async fn cilium_policies_are_watched_once_their_crd_is_installed() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let mut source = KubernetesSource::new(client, Kinds::AGENT);
    let driver = tokio::spawn(async move {
        while !source.is_ready() {
            source.next_change().await;
        }
        source
    });
    let mut cilium_listed = Vec::new();
    let mut held = Vec::new();
    while let Some((path, send)) = next_path(&mut handle).await {
        let (resource, _) = path.split_once('?').unwrap();
        if resource == CRDS && !path.contains("watch=true") {
            // Installed: the list names it.
            let name = if path.contains("clusterwide") {
                "ciliumclusterwidenetworkpolicies.cilium.io"
            } else {
                "ciliumnetworkpolicies.cilium.io"
            };
            respond(send, crd_list(&[name]));
        } else if !path.contains("watch=true") {
            let policy = if resource == "/apis/cilium.io/v2/ciliumnetworkpolicies" {
                cilium_listed.push(resource.to_owned());
                vec![
                    json!({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
                    "metadata": {"name": "l7", "namespace": "shop", "resourceVersion": "9"},
                    "spec": {"endpointSelector": {}}}),
                ]
            } else {
                if resource.starts_with("/apis/cilium.io/") {
                    cilium_listed.push(resource.to_owned());
                }
                vec![]
            };
            respond(
                send,
                json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "9"}, "items": policy}),
            );
        } else {
            held.push(send);
        }
    }
    cilium_listed.sort();
    assert_eq!(
        cilium_listed,
        [
            "/apis/cilium.io/v2/ciliumclusterwidenetworkpolicies",
            "/apis/cilium.io/v2/ciliumnetworkpolicies"
        ]
    );
    let source = tokio::time::timeout(Duration::from_secs(5), driver)
        .await
        .expect("ready once the Cilium kinds are listed")
        .unwrap();
    assert_eq!(
        source.state().cilium_policies.keys().collect::<Vec<_>>(),
        ["shop/l7"]
    );
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
