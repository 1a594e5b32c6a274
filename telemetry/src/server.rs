//! The HTTP listener for `/metrics`, `/healthz` and `/readyz`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;

use crate::{Error, Health, Result};

#[derive(Clone)]
struct AppState {
    registry: Arc<Mutex<Registry>>,
    health: Health,
}

/// The routes, for embedding or testing.
pub fn router(registry: Arc<Mutex<Registry>>, health: Health) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AppState { registry, health })
}

/// Serves the routes on `addr` until the future is dropped. Returns the
/// bound address through `bound` before serving (useful with port 0).
pub async fn serve(
    addr: SocketAddr,
    registry: Arc<Mutex<Registry>>,
    health: Health,
    bound: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::BindListener { addr, source })?;
    if let Some(tx) = bound {
        let local = listener
            .local_addr()
            .map_err(|source| Error::BindListener { addr, source })?;
        let _ = tx.send(local);
    }
    axum::serve(listener, router(registry, health))
        .await
        .map_err(Error::Serve)
}

/// The usual start of a binary: a fresh [`Health`] and the future serving
/// `registry` and that health on `addr` (poll it alongside the real work).
pub fn serve_registry(
    addr: SocketAddr,
    registry: Registry,
) -> (Health, impl std::future::Future<Output = Result<()>>) {
    let health = Health::default();
    let server = serve(addr, Arc::new(Mutex::new(registry)), health.clone(), None);
    (health, server)
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let mut body = String::new();
    let encoded = {
        let registry = state
            .registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        prometheus_client::encoding::text::encode(&mut body, &registry)
    };
    match encoded {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        ),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            "encoding metrics failed".to_owned(),
        ),
    }
}

async fn healthz(State(state): State<AppState>) -> (StatusCode, &'static str) {
    if state.health.is_alive() {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not alive\n")
    }
}

async fn readyz(State(state): State<AppState>) -> (StatusCode, String) {
    if state.health.is_ready() {
        (StatusCode::OK, "ready\n".into())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: waiting for {}\n", state.health.waiting_for()),
        )
    }
}
