//! Operator leader election against a tower-test mock API server that
//! asserts the exact Lease requests: created when missing, followed while
//! another replica renews it, taken over (replace with the read
//! resourceVersion, one more transition) once it expires, a lost race
//! (409) followed, a leader that finds another holder steps down, and a
//! stopping leader releases the lease (only its own).

mod common;

use std::cell::RefCell;
use std::time::Duration;

use common::kube_mock::*;
use http::{Method, Response};
use knit_operator::kube::lease::LeaderElector;
use knit_operator::leadership::LeaseTimes;
use kube::client::Body;
use serde_json::{Value, json};

type Send = tower_test::mock::SendResponse<Response<Body>>;

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/knit-system/leases";

async fn expect(handle: &mut Handle, method: Method, path: &str) -> (Value, Send) {
    let (req, send) = handle
        .next_request()
        .await
        .expect("client made no further request");
    assert_eq!(
        (req.method(), req.uri().path()),
        (&method, path),
        "unexpected request {}",
        req.uri()
    );
    (json_body(req).await, send)
}

/// A Lease held by `holder`, renewed `ago` seconds before now.
fn lease(holder: &str, ago: i64, version: &str) -> Value {
    let renewed = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(ago);
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": { "name": "knit-operator", "namespace": "knit-system", "resourceVersion": version },
        "spec": {
            "holderIdentity": holder, "leaseDurationSeconds": 15, "leaseTransitions": 3,
            "acquireTime": "2026-12-07T00:00:00.000000Z",
            "renewTime": renewed.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
        },
    })
}

fn respond_conflict(send: Send) {
    let status = json!({ "apiVersion": "v1", "kind": "Status", "status": "Failure", "reason": "Conflict", "code": 409, "metadata": {} });
    send.send_response(
        Response::builder()
            .status(409)
            .body(Body::from(serde_json::to_vec(&status).unwrap()))
            .unwrap(),
    );
}

/// Quick retries; `renew_deadline` long unless a test is about it, so a
/// slow machine never steps a leader down by chance.
fn fast(renew_deadline: Duration) -> LeaseTimes {
    LeaseTimes {
        duration: Duration::from_secs(15),
        renew_deadline,
        retry: Duration::from_millis(5),
    }
}

#[tokio::test]
async fn a_missing_lease_is_created_a_live_one_followed_an_expired_one_taken_over() {
    let (client, mut handle) = mock();
    let elector = LeaderElector::new(client, "knit-system", "op-0", fast(Duration::from_secs(600)));
    let server = tokio::spawn(async move {
        let path = format!("{LEASES}/knit-operator");
        // No Lease: create it, holding it from now.
        let (_, send) = expect(&mut handle, Method::GET, &path).await;
        respond_not_found(send);
        let (body, send) = expect(&mut handle, Method::POST, LEASES).await;
        assert_eq!(body["metadata"]["name"], "knit-operator");
        assert_eq!(body["spec"]["holderIdentity"], "op-0");
        assert_eq!(body["spec"]["leaseDurationSeconds"], 15);
        assert_eq!(body["spec"]["leaseTransitions"], 0);
        assert_eq!(body["spec"]["acquireTime"], body["spec"]["renewTime"]);
        respond(send, with_meta(body));
        // op-1 renewed 3 s ago: follow, write nothing.
        let (_, send) = expect(&mut handle, Method::GET, &path).await;
        respond(send, lease("op-1", 3, "7"));
        // op-1 last renewed 20 s ago (15 s lease): take it over.
        let (_, send) = expect(&mut handle, Method::GET, &path).await;
        respond(send, lease("op-1", 20, "8"));
        let (body, send) = expect(&mut handle, Method::PUT, &path).await;
        assert_eq!(
            body["metadata"]["resourceVersion"], "8",
            "the replace is conditional"
        );
        assert_eq!(body["spec"]["holderIdentity"], "op-0");
        assert_eq!(body["spec"]["leaseTransitions"], 4);
        assert_ne!(body["spec"]["acquireTime"], "2026-12-07T00:00:00.000000Z");
        respond(send, with_meta(body));
        // Expired again, but another replica writes first: 409, follow.
        let (_, send) = expect(&mut handle, Method::GET, &path).await;
        respond(send, lease("op-2", 30, "9"));
        let (_, send) = expect(&mut handle, Method::PUT, &path).await;
        respond_conflict(send);
    });
    assert_eq!(elector.try_acquire_or_renew().await.unwrap(), Ok(()));
    assert_eq!(
        elector.try_acquire_or_renew().await.unwrap(),
        Err("op-1".to_owned())
    );
    assert_eq!(elector.try_acquire_or_renew().await.unwrap(), Ok(()));
    assert!(elector.try_acquire_or_renew().await.unwrap().is_err());
    server.await.unwrap();
}

#[tokio::test]
async fn a_follower_leads_once_the_lease_expires_and_a_leader_that_finds_another_holder_stops() {
    let (client, mut handle) = mock();
    let elector = LeaderElector::new(client, "knit-system", "op-0", fast(Duration::from_secs(600)));
    let server = tokio::spawn(async move {
        let path = format!("{LEASES}/knit-operator");
        for ago in [1, 2] {
            let (_, send) = expect(&mut handle, Method::GET, &path).await;
            respond(send, lease("op-1", ago, "7"));
        }
        let (_, send) = expect(&mut handle, Method::GET, &path).await;
        respond(send, lease("op-1", 16, "8"));
        let (body, send) = expect(&mut handle, Method::PUT, &path).await;
        respond(send, with_meta(body.clone()));
        // Renewals: one lands, then op-1 holds it (it took it while we
        // were partitioned): step down.
        let (_, send) = expect(&mut handle, Method::GET, &path).await;
        respond(send, with_meta(body.clone()));
        let (body, send) = expect(&mut handle, Method::PUT, &path).await;
        assert_eq!(body["spec"]["holderIdentity"], "op-0");
        assert_eq!(body["spec"]["leaseTransitions"], 4, "a renewal is no transition");
        respond(send, with_meta(body));
        let (_, send) = expect(&mut handle, Method::GET, &path).await;
        respond(send, lease("op-1", 0, "11"));
    });
    let seen = RefCell::new(Vec::new());
    let work_started = RefCell::new(false);
    let out = elector
        .lead(
            async {
                *work_started.borrow_mut() = true;
                std::future::pending::<()>().await
            },
            |leads| seen.borrow_mut().push(leads),
        )
        .await;
    let err = out.expect_err("the leader stepped down");
    assert_eq!(
        err.to_string(),
        "lost the operator's leader lease: op-1 holds the lease now"
    );
    assert!(*work_started.borrow());
    assert_eq!(*seen.borrow(), vec![false, false, true]);
    server.await.unwrap();
}

#[tokio::test]
async fn a_leader_that_cannot_renew_for_the_deadline_stops() {
    let (client, mut handle) = mock();
    let elector = LeaderElector::new(client, "knit-system", "op-0", fast(Duration::from_millis(200)));
    let server = tokio::spawn(async move {
        let path = format!("{LEASES}/knit-operator");
        let (_, send) = expect(&mut handle, Method::GET, &path).await;
        respond(send, lease("op-0", 1, "7"));
        let (body, send) = expect(&mut handle, Method::PUT, &path).await;
        respond(send, with_meta(body));
        // The API server fails every renewal from here.
        loop {
            let Some((_, send)) = handle.next_request().await else {
                break;
            };
            send.send_response(
                Response::builder()
                    .status(500)
                    .body(Body::from(b"{}".to_vec()))
                    .unwrap(),
            );
        }
    });
    let err = elector
        .lead(std::future::pending::<()>(), |_| {})
        .await
        .expect_err("stepped down");
    assert!(err.to_string().contains("not renewed for 200ms"), "{err}");
    drop(elector);
    server.abort();
}

#[tokio::test]
async fn a_stopping_leader_releases_the_lease_and_a_follower_leaves_it_alone() {
    let (client, mut handle) = mock();
    let elector = LeaderElector::new(client, "knit-system", "op-0", fast(Duration::from_secs(600)));
    let server = tokio::spawn(async move {
        let path = format!("{LEASES}/knit-operator");
        // Ours: replaced at the version read, held by nobody, 1 s long.
        let (_, send) = expect(&mut handle, Method::GET, &path).await;
        respond(send, lease("op-0", 1, "7"));
        let (body, send) = expect(&mut handle, Method::PUT, &path).await;
        assert_eq!(body["metadata"]["resourceVersion"], "7");
        assert_eq!(body["spec"].get("holderIdentity"), None, "{body}");
        assert_eq!(body["spec"]["leaseDurationSeconds"], 1);
        assert_eq!(body["spec"]["leaseTransitions"], 3);
        respond(send, with_meta(body));
        // Another replica's: read, not written.
        let (_, send) = expect(&mut handle, Method::GET, &path).await;
        respond(send, lease("op-1", 1, "9"));
        // Taken over between our read and write: the 409 is not an error.
        let (_, send) = expect(&mut handle, Method::GET, &path).await;
        respond(send, lease("op-0", 1, "10"));
        let (_, send) = expect(&mut handle, Method::PUT, &path).await;
        respond_conflict(send);
    });
    assert!(elector.release().await.unwrap(), "our lease is released");
    assert!(!elector.release().await.unwrap(), "another's lease is left alone");
    assert!(!elector.release().await.unwrap(), "a lost race releases nothing");
    server.await.unwrap();
}
