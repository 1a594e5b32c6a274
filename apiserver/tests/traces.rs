//! The apiserver's loops are traced: with an OpenTelemetry tracer installed
//! (the SDK's in-memory exporter instead of OTLP), an export pass and a
//! mirror's first sync of a peer (a resync) each export a span with what
//! they wrote. Real etcd; the loops run in this process.

use std::time::Duration;

use knit_apiserver::export::LocalCluster;
use knit_apiserver::export::exporter::{ExporterSettings, run_exporter};
use knit_apiserver::metrics::Metrics;
use knit_apiserver::mirror::{MeshSettings, mirror_peer};
use knit_kvstore::PeerIdentity;
use knit_sources::directory::DirectorySource;
use knit_testkit::TestCluster;
use knit_testkit::manifests::{node, pod};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing_subscriber::layer::SubscriberExt as _;

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.as_str().into_owned())
}

/// Starts etcd for `name` with one node and one pod in its source, and
/// exports it in this process.
async fn exporting(name: &str, id: u16) -> TestCluster {
    let mut cluster = TestCluster::new(name, id);
    cluster.write_source(
        "cluster.yaml",
        &(node(
            &format!("{name}-n1"),
            &format!("192.168.{id}.1"),
            &format!("10.{id}.1.0/24"),
        ) + &pod("x", "p", &format!("{name}-n1"), &format!("10.{id}.1.5"), "web")),
    );
    cluster.start_etcd();
    let client = cluster.admin().await;
    let settings = ExporterSettings {
        cluster: LocalCluster {
            name: name.into(),
            id,
            pod_cidrs: vec![cluster.pod_cidr().parse().unwrap()],
            tunnel_port: Some(8472),
            routing_mode: Default::default(),
        },
        lease_ttl_secs: 10,
        identities: knit_apiserver::export::identity_store::IdentityStore::Memory(Default::default()),
        node_report_wait: None,
    };
    let source = DirectorySource::new(cluster.source_dir(), Duration::from_secs(1));
    tokio::spawn(run_exporter(
        client,
        source,
        settings,
        Metrics::default(),
        Default::default(),
    ));
    cluster
}

#[tokio::test(flavor = "current_thread")]
async fn an_export_pass_and_a_mirror_resync_export_spans() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("knit-apiserver-test")));
    // A current-thread runtime: every spawned loop runs inside this subscriber.
    let _default = tracing::subscriber::set_default(subscriber);

    let a = exporting("a", 1).await;
    let b = exporting("b", 2).await;
    // a mirrors b straight from b's etcd (no auth enabled, no front here).
    let mut to_b = b.admin_config();
    to_b.peer = Some(PeerIdentity {
        cluster_name: "b".into(),
        cluster_id: 2,
        pod_cidrs: vec![b.pod_cidr()],
        limits: Default::default(),
    });
    let settings = MeshSettings {
        grace_period: Duration::from_secs(30),
        lease_ttl_secs: 10,
        metrics: Metrics::default(),
    };
    tokio::spawn(mirror_peer(a.admin().await, to_b, settings));

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let spans = exporter.get_finished_spans().unwrap();
        let exported = spans.iter().any(|s| {
            s.name == "export_pass"
                && attribute(s, "cluster").as_deref() == Some("a")
                && attribute(s, "records").is_some_and(|n| n.parse::<usize>().unwrap() > 0)
        });
        let resynced = spans.iter().any(|s| {
            s.name == "mirror_sync"
                && attribute(s, "peer").as_deref() == Some("b")
                && attribute(s, "resync").as_deref() == Some("true")
                && attribute(s, "written").is_some_and(|n| n.parse::<usize>().unwrap() > 0)
        });
        if exported && resynced {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "missing spans (export_pass of a: {exported}, mirror resync of b: {resynced}): {:?}",
            spans.iter().map(|s| (&s.name, &s.attributes)).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
