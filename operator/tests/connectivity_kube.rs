//! `knitctl connectivity test` in Kubernetes mode against a tower-test mock
//! API server that asserts the exact requests: nodes listed, every object
//! server-side applied (field manager knitctl) with its placement and
//! arguments, pods waited for, probes sent through the pod proxy, and the
//! namespace deleted and waited out.

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use common::kube_mock::*;
use http::{Method, Response};
use knit_operator::connectivity::kubernetes::{KubeSites, Waits};
use knit_operator::connectivity::{NAMESPACE, Sites, Source, plan};
use kube::client::Body;
use serde_json::{Value, json};

type Send = tower_test::mock::SendResponse<Response<Body>>;

/// The next request: asserts method and path-and-query (and, for applies,
/// the server-side-apply parameters); returns its JSON body.
async fn expect(handle: &mut Handle, method: Method, path_and_query: &str) -> (Value, Send) {
    let (req, send) = handle
        .next_request()
        .await
        .expect("client made no further request");
    let uri = req.uri().clone();
    if method == Method::PATCH {
        assert_eq!(
            (req.method(), uri.path()),
            (&method, path_and_query),
            "unexpected request {uri}"
        );
        let query = uri.query().unwrap_or_default();
        assert!(
            query.contains("fieldManager=knitctl") && query.contains("force=true"),
            "{uri}"
        );
        assert_eq!(req.headers()["content-type"], "application/apply-patch+yaml");
    } else {
        let got = uri.path_and_query().map(|p| p.as_str()).unwrap_or_default();
        assert_eq!(
            (req.method(), got),
            (&method, path_and_query),
            "unexpected request {uri}"
        );
    }
    (json_body(req).await, send)
}

fn node(name: &str, ready: bool, taint: Option<&str>) -> Value {
    let mut n = json!({
        "apiVersion": "v1", "kind": "Node", "metadata": { "name": name },
        "spec": {},
        "status": { "conditions": [{ "type": "Ready", "status": if ready { "True" } else { "False" } }] },
    });
    if let Some(effect) = taint {
        n["spec"]["taints"] = json!([{ "key": "node-role.kubernetes.io/control-plane", "effect": effect }]);
    }
    n
}

fn pod_status(name: &str, ip: Option<&str>, waiting: Option<&str>) -> Value {
    let mut p =
        json!({ "apiVersion": "v1", "kind": "Pod", "metadata": { "name": name, "namespace": NAMESPACE } });
    p["status"] = match (ip, waiting) {
        (Some(ip), None) => json!({
            "phase": "Running", "podIP": ip,
            "conditions": [{ "type": "Ready", "status": "True" }],
        }),
        (_, Some(reason)) => json!({
            "phase": "Pending",
            "conditions": [{ "type": "Ready", "status": "False" }],
            "containerStatuses": [{
                "name": "probe", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                "state": { "waiting": { "reason": reason, "message": "Back-off pulling image \"knit-probe:dev\"" } },
            }],
        }),
        (None, None) => json!({ "phase": "Pending" }),
    };
    p
}

fn sites(client: kube::Client, pods: Duration) -> KubeSites {
    let waits = Waits {
        pods,
        settle: Duration::from_secs(30),
        cleanup: Duration::from_secs(30),
        poll: Duration::from_millis(1),
    };
    KubeSites::new(vec![("cluster-a".to_owned(), client)], "knit-probe:dev", waits)
}

/// Answers the applies of one cluster, asserting their bodies.
async fn answer_applies(handle: &mut Handle) {
    let (_, send) = expect(handle, Method::GET, "/api/v1/nodes?").await;
    respond(
        send,
        list(
            "NodeList",
            vec![
                node("kind-control-plane", true, Some("NoSchedule")),
                node("w2", true, None),
                node("w1", true, None),
                node("w3-down", false, None),
            ],
        ),
    );
    let (body, send) = expect(handle, Method::PATCH, &format!("/api/v1/namespaces/{NAMESPACE}")).await;
    assert_eq!(
        body["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "privileged"
    );
    respond(send, with_meta(body));
    let pods = format!("/api/v1/namespaces/{NAMESPACE}/pods");
    // Nodes in name order among the usable ones: echo on w1, the client
    // (and its host-network twin) on w2.
    for (name, node, host, args) in [
        (
            "echo",
            "w1",
            false,
            json!(["serve", "--name", "cluster-a/echo", "--port", "8080"]),
        ),
        (
            "echo-denied",
            "w1",
            false,
            json!(["serve", "--name", "cluster-a/echo-denied", "--port", "8080"]),
        ),
        ("client", "w2", false, json!(["control", "--port", "4250"])),
        ("client-host", "w2", true, json!(["control", "--port", "4250"])),
    ] {
        let (body, send) = expect(handle, Method::PATCH, &format!("{pods}/{name}")).await;
        assert_eq!(body["spec"]["nodeName"], node, "{name}");
        assert_eq!(body["spec"]["hostNetwork"], host, "{name}");
        assert_eq!(body["spec"]["containers"][0]["image"], "knit-probe:dev");
        assert_eq!(body["spec"]["containers"][0]["args"], args, "{name}");
        assert_eq!(
            body["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "knitctl-connectivity"
        );
        respond(send, with_meta(body));
    }
    for (name, vip) in [("echo", "10.96.0.10"), ("echo-local", "10.96.0.11")] {
        let (mut body, send) = expect(
            handle,
            Method::PATCH,
            &format!("/api/v1/namespaces/{NAMESPACE}/services/{name}"),
        )
        .await;
        assert_eq!(body["spec"]["selector"], json!({ "app": "knit-echo" }));
        assert_eq!(body["spec"]["ports"][0]["port"], 8080);
        body["spec"]["clusterIP"] = json!(vip);
        respond(send, with_meta(body));
    }
    for (name, affinity) in [("echo", "none"), ("echo-local", "local")] {
        let path = format!("/apis/knit.dev/v1alpha1/namespaces/{NAMESPACE}/globalservicepolicies/{name}");
        let (body, send) = expect(handle, Method::PATCH, &path).await;
        assert_eq!(body["spec"]["services"], json!([name]));
        assert_eq!(body["spec"]["affinity"], affinity);
        respond(send, with_meta(body));
    }
    let path =
        format!("/apis/networking.k8s.io/v1/namespaces/{NAMESPACE}/networkpolicies/isolate-echo-denied");
    let (body, send) = expect(handle, Method::PATCH, &path).await;
    assert_eq!(
        body["spec"]["podSelector"]["matchLabels"],
        json!({ "app": "knit-echo-denied" })
    );
    assert_eq!(body["spec"]["policyTypes"], json!(["Ingress"]));
    respond(send, with_meta(body));
}

fn hits(names: Value) -> Value {
    json!({ "names": names, "errors": {}, "peer_mismatch": 0 })
}

#[tokio::test]
async fn deploys_waits_settles_probes_through_the_pod_proxy_and_deletes_the_namespace() {
    let (client, mut handle) = mock();
    let server = tokio::spawn(async move {
        answer_applies(&mut handle).await;
        let pods = format!("/api/v1/namespaces/{NAMESPACE}/pods");
        // First look: the twin is still being created; second: all Ready.
        let (_, send) = expect(&mut handle, Method::GET, &format!("{pods}?")).await;
        let mut items = vec![
            pod_status("echo", Some("10.1.1.5"), None),
            pod_status("echo-denied", Some("10.1.1.6"), None),
            pod_status("client", Some("10.1.2.7"), None),
            pod_status("client-host", None, Some("ContainerCreating")),
        ];
        respond(send, list("PodList", items.clone()));
        let (_, send) = expect(&mut handle, Method::GET, &format!("{pods}?")).await;
        items[3] = pod_status("client-host", Some("172.18.0.3"), None);
        respond(send, list("PodList", items));
        // Settling: the global service answers, the isolated pod does not.
        let proxy = format!("{pods}/client:4250/proxy/hits");
        let (_, send) = expect(
            &mut handle,
            Method::GET,
            &format!("{proxy}?to=10.96.0.10:8080&count=10"),
        )
        .await;
        respond(send, hits(json!({ "cluster-a/echo": 10 })));
        let (_, send) = expect(
            &mut handle,
            Method::GET,
            &format!("{proxy}?to=10.1.1.6:8080&count=1"),
        )
        .await;
        respond(
            send,
            json!({ "names": {}, "errors": { "TimedOut": 1 }, "peer_mismatch": 0 }),
        );
        // The check's probe from the node, through the host-network twin.
        let twin = format!("{pods}/client-host:4250/proxy/hits");
        let (_, send) = expect(
            &mut handle,
            Method::GET,
            &format!("{twin}?to=10.1.1.5:8080&count=3"),
        )
        .await;
        respond(send, hits(json!({ "cluster-a/echo": 2 })));
        // Cleanup: delete, still terminating once, then gone.
        let ns = format!("/api/v1/namespaces/{NAMESPACE}");
        let (body, send) = expect(&mut handle, Method::DELETE, &format!("{ns}?")).await;
        assert_eq!(body["propagationPolicy"], "Background");
        let terminating = json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": NAMESPACE }, "status": { "phase": "Terminating" } });
        respond(send, terminating.clone());
        let (_, send) = expect(&mut handle, Method::GET, &ns).await;
        respond(send, terminating);
        let (_, send) = expect(&mut handle, Method::GET, &ns).await;
        respond_not_found(send);
        handle
    });

    let mut sites = sites(client, Duration::from_secs(30));
    let deployed = sites.deploy(&plan(&["cluster-a".to_owned()])).await.unwrap();
    let key = |n: &str| ("cluster-a".to_owned(), n.to_owned());
    assert_eq!(deployed.pods[&key("echo")], Ipv4Addr::new(10, 1, 1, 5));
    assert_eq!(deployed.pods[&key("client")], Ipv4Addr::new(10, 1, 2, 7));
    assert_eq!(
        deployed.services[&key("echo-local")],
        Ipv4Addr::new(10, 96, 0, 11)
    );
    assert!(deployed.missing.is_empty(), "{:?}", deployed.missing);
    let answers = sites
        .probe(
            &Source::NodeOf("cluster-a".into(), "client".into()),
            SocketAddrV4::new(Ipv4Addr::new(10, 1, 1, 5), 8080),
            3,
        )
        .await
        .unwrap();
    assert_eq!((answers.total(), answers.failed), (2, 1));
    sites.cleanup().await.unwrap();
    let mut handle = server.await.unwrap();
    tokio::time::timeout(Duration::from_millis(50), handle.next_request())
        .await
        .expect_err("no request after cleanup");
}

#[tokio::test]
async fn a_pod_that_never_becomes_ready_is_missing_with_its_reason_and_is_not_probed() {
    let (client, mut handle) = mock();
    let server = tokio::spawn(async move {
        answer_applies(&mut handle).await;
        let (_, send) = expect(
            &mut handle,
            Method::GET,
            &format!("/api/v1/namespaces/{NAMESPACE}/pods?"),
        )
        .await;
        respond(
            send,
            list(
                "PodList",
                vec![
                    pod_status("echo", Some("10.1.1.5"), None),
                    pod_status("echo-denied", Some("10.1.1.6"), None),
                    pod_status("client", None, Some("ImagePullBackOff")),
                ],
            ),
        );
        let (_, send) = expect(
            &mut handle,
            Method::DELETE,
            &format!("/api/v1/namespaces/{NAMESPACE}?"),
        )
        .await;
        respond_not_found(send);
        handle
    });
    // No time to wait: the first look decides.
    let mut sites = sites(client, Duration::ZERO);
    let deployed = sites.deploy(&plan(&["cluster-a".to_owned()])).await.unwrap();
    let why = &deployed.missing[&("cluster-a".to_owned(), "client".to_owned())];
    assert_eq!(
        why,
        "pod client not ready (phase Pending, ImagePullBackOff: Back-off pulling image \"knit-probe:dev\")"
    );
    assert_eq!(deployed.pods.len(), 2);
    // A namespace already gone is not an error.
    sites.cleanup().await.unwrap();
    server.await.unwrap();
}
