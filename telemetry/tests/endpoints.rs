//! The metrics/health listener answers over real HTTP on loopback.

use std::sync::{Arc, Mutex};

use knit_telemetry::prometheus_client::metrics::counter::Counter;
use knit_telemetry::prometheus_client::registry::Registry;
use knit_telemetry::{Health, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn serves_metrics_health_and_readiness() {
    let mut registry = Registry::with_prefix("knit_test");
    let counter = Counter::<u64>::default();
    registry.register("reconciles", "Reconciles done", counter.clone());
    counter.inc_by(3);
    let health = Health::default();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(serve(
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(Mutex::new(registry)),
        health.clone(),
        Some(tx),
    ));
    let addr = rx.await.unwrap();

    let metrics = get(addr, "/metrics").await;
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(metrics.contains("knit_test_reconciles_total 3"), "{metrics}");

    assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
    assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 503"));
    health.set_waiting_for("the local etcd");
    let waiting = get(addr, "/readyz").await;
    assert!(
        waiting.starts_with("HTTP/1.1 503") && waiting.contains("not ready: waiting for the local etcd"),
        "readiness says what it waits for: {waiting}"
    );
    health.set_ready(true);
    assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
    health.set_alive(false);
    assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 503"));
    server.abort();
}
