//! A reconcile is traced: with an OpenTelemetry tracer installed (here the
//! SDK's in-memory exporter instead of OTLP), `reconcile_mesh` exports a
//! span, and every Event the reconcile records names that span's trace id.

mod common;

use std::sync::Arc;

use common::kube_mock::*;
use common::*;
use http::Method;
use knit_operator::kube::Applier;
use knit_operator::kube::mesh::{MeshContext, reconcile_mesh};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use serde_json::{Value, json};
use tracing_subscriber::layer::SubscriberExt as _;

#[tokio::test(flavor = "current_thread")]
async fn a_reconcile_exports_a_span_and_its_events_carry_the_trace_id() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("knit-operator-test")));
    let _default = tracing::subscriber::set_default(subscriber);

    let (client, mut handle) = mock();
    let ctx = MeshContext {
        config: config_a(),
        applier: Applier::new(client, "knit-system", Some("op-0".into())),
        reports: Default::default(),
        node_sources: Default::default(),
    };
    let input = peer("b", "b", 2, "2026-01-01T00:00:00Z");
    let mut cmp = knit_crds::ClusterMeshPeer::new("b", input.spec);
    cmp.metadata.generation = Some(1);
    let stored = serde_json::to_value(&cmp).unwrap();
    let peers = vec![Arc::new(cmp)];
    // A current-thread runtime: the reconcile runs on this thread, inside
    // the subscriber above.
    let task = tokio::spawn(async move { reconcile_mesh(&ctx, &peers).await });
    let notes = async {
        let mut notes = Vec::new();
        while let Ok(Some((req, send))) =
            tokio::time::timeout(std::time::Duration::from_secs(2), handle.next_request()).await
        {
            let (method, path) = (req.method().clone(), req.uri().path().to_owned());
            let bytes = req.into_body().collect_bytes().await.unwrap();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            match method {
                Method::GET if path.ends_with("/secrets") => respond(send, list("SecretList", vec![])),
                Method::GET if path.ends_with("/configmaps") => respond(send, list("ConfigMapList", vec![])),
                Method::GET => respond_not_found(send),
                Method::POST => {
                    notes.push(body["note"].as_str().unwrap_or_default().to_owned());
                    respond(send, with_meta(body));
                }
                _ if path.ends_with("/status") => {
                    let mut echoed = stored.clone();
                    echoed["status"] = body["status"].clone();
                    respond(send, with_meta(echoed));
                }
                _ if body.is_null() => respond(
                    send,
                    json!({"apiVersion": "v1", "kind": "Status", "metadata": {}}),
                ),
                _ => respond(send, with_meta(body)),
            }
        }
        notes
    }
    .await;
    task.await.unwrap().expect("the reconcile succeeds");

    let spans = exporter.get_finished_spans().unwrap();
    let reconcile = spans
        .iter()
        .find(|s| s.name == "reconcile_mesh")
        .expect("a reconcile_mesh span was exported");
    let trace_id = reconcile.span_context.trace_id().to_string();
    assert_eq!(trace_id.len(), 32);
    assert!(!notes.is_empty(), "the first reconcile records Events");
    for note in &notes {
        assert!(note.ends_with(&format!("(trace {trace_id})")), "{note}");
    }
    assert!(
        reconcile
            .attributes
            .iter()
            .any(|kv| kv.key.as_str() == "trace_id" && kv.value.as_str() == trace_id),
        "the span records its own trace id for the logs: {:?}",
        reconcile.attributes
    );
}
