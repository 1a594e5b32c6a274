//! A tower-test mock of the Kubernetes API server and canned answers.

use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};

/// The test's end of the mock: requests in, responses out.
pub type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

pub fn mock() -> (Client, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), handle)
}

pub fn respond(send: tower_test::mock::SendResponse<Response<Body>>, body: Value) {
    send.send_response(
        Response::builder()
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap(),
    );
}

pub fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({ "apiVersion": "v1", "kind": kind, "metadata": { "resourceVersion": "1" }, "items": items })
}

pub fn respond_not_found(send: tower_test::mock::SendResponse<Response<Body>>) {
    let status = json!({ "apiVersion": "v1", "kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404, "metadata": {} });
    send.send_response(
        Response::builder()
            .status(404)
            .body(Body::from(serde_json::to_vec(&status).unwrap()))
            .unwrap(),
    );
}

pub fn with_meta(mut body: Value) -> Value {
    body["metadata"]["resourceVersion"] = json!("2");
    body["metadata"]["uid"] = json!("uid-1");
    body
}

/// A request's body as JSON (`Null` when empty).
pub async fn json_body(req: Request<Body>) -> Value {
    let bytes = req.into_body().collect_bytes().await.unwrap();
    if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    }
}
