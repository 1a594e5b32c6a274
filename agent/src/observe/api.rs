//! The agent's local API on a unix socket (see `knit_agent_api`): flows
//! from the [`FlowLog`], tables from the pinned maps. Whatever needs the
//! agent's view of the mesh (names, the rendered maps) is asked of the
//! agent's loop as a [`Query`], answered between two of its events.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use knit_agent_api::FlowPage;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use super::describe::describe;
use super::directory::IndexDirectory;
use super::log::FlowLog;
use super::pinned::{self, Tables};
use super::{LoopView, Query, tables};
use crate::metrics::Metrics;

/// Flows served per request at most.
pub const MAX_PAGE: usize = 10_000;

/// What the handlers share.
#[derive(Clone)]
pub struct Api {
    /// This node.
    pub node: String,
    /// The flow history.
    pub log: Arc<Mutex<FlowLog>>,
    /// Questions for the agent's loop.
    pub queries: mpsc::Sender<Query>,
    /// The datapath's pin directory.
    pub pin_dir: PathBuf,
    /// The agent's metrics (the ring's lost count).
    pub metrics: Metrics,
}

/// Runs `answer` in the agent's loop and returns its result.
async fn ask<T: Send + 'static>(
    api: &Api,
    answer: impl FnOnce(&LoopView<'_>) -> T + Send + 'static,
) -> Result<T, Response> {
    let (tx, rx) = oneshot::channel();
    let query: Query = Box::new(move |view| {
        let _ = tx.send(answer(view));
    });
    let unavailable = || (StatusCode::SERVICE_UNAVAILABLE, "the agent's loop is not running").into_response();
    api.queries.send(query).await.map_err(|_| unavailable())?;
    rx.await.map_err(|_| unavailable())
}

fn json(value: &impl Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

fn query_text(uri: &Uri, name: &str) -> Option<String> {
    uri.query()?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.replace("%2F", "/").replace("%2f", "/"))
}

fn query_param(uri: &Uri, name: &str) -> Option<u64> {
    query_text(uri, name)?.parse().ok()
}

async fn flows(State(api): State<Api>, uri: Uri) -> Response {
    let since = query_param(&uri, "since").unwrap_or(0);
    let limit = query_param(&uri, "limit").map_or(MAX_PAGE, |l| (l as usize).min(MAX_PAGE));
    let page = api
        .log
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .since(since, limit);
    let node = api.node.clone();
    let lost = api.metrics.flow_events_lost.get().max(0) as u64;
    let described = ask(&api, move |view| {
        let dir = IndexDirectory {
            index: view.index,
            state: view.state,
        };
        page.events
            .iter()
            .map(|e| describe(&dir, &node, e.seq, e.time_unix_nanos, &e.event))
            .collect::<Vec<_>>()
    })
    .await;
    match described {
        Ok(flows) => json(&FlowPage {
            node: api.node.clone(),
            flows,
            next: page.next,
            lost,
            missed: page.missed,
        }),
        Err(r) => r,
    }
}

/// Reads `which` from the pins, then builds the table in the loop.
async fn table<T: Serialize + Send + 'static>(
    api: &Api,
    which: Tables,
    build: impl FnOnce(&LoopView<'_>, &crate::datapath::state::MapContents) -> T + Send + 'static,
) -> Response {
    let pin_dir = api.pin_dir.clone();
    let kernel = match tokio::task::spawn_blocking(move || pinned::read(&pin_dir, which)).await {
        Ok(Ok(k)) => k,
        Ok(Err(e)) => {
            return (StatusCode::INTERNAL_SERVER_ERROR, knit_telemetry::error_chain(&e)).into_response();
        }
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    match ask(api, move |view| build(view, &kernel)).await {
        Ok(t) => json(&t),
        Err(r) => r,
    }
}

fn directory<'a>(view: &LoopView<'a>) -> IndexDirectory<'a> {
    IndexDirectory {
        index: view.index,
        state: view.state,
    }
}

async fn services(State(api): State<Api>) -> Response {
    let which = Tables {
        services: true,
        ..Default::default()
    };
    table(&api, which, |view, kernel| {
        tables::services(view.node, kernel, view.rendered, &directory(view))
    })
    .await
}

async fn ipcache(State(api): State<Api>) -> Response {
    let which = Tables {
        ipcache: true,
        ..Default::default()
    };
    table(&api, which, |view, kernel| {
        tables::ipcache(view.node, kernel, view.rendered, &directory(view))
    })
    .await
}

async fn identities(State(api): State<Api>) -> Response {
    let which = Tables {
        ipcache: true,
        endpoints: true,
        ..Default::default()
    };
    table(&api, which, |view, kernel| {
        tables::identities(view.node, kernel, &directory(view))
    })
    .await
}

async fn endpoints(State(api): State<Api>) -> Response {
    let which = Tables {
        endpoints: true,
        ..Default::default()
    };
    table(&api, which, |view, kernel| {
        tables::endpoints(view.node, kernel, view.rendered, &directory(view))
    })
    .await
}

async fn policy(State(api): State<Api>, uri: Uri) -> Response {
    let Some(pod) = query_text(&uri, "pod") else {
        return (
            StatusCode::BAD_REQUEST,
            "name the pod: /v1/policy?pod=<namespace>/<name>",
        )
            .into_response();
    };
    let which = Tables {
        policy: true,
        endpoints: true,
        ..Default::default()
    };
    table(&api, which, move |view, kernel| {
        provenance_table(view, kernel, &pod)
    })
    .await
}

/// The policy table of `pod` with the loop's view: the policies as the
/// agent compiles them (NetworkPolicies, Cilium's as translated).
fn provenance_table(
    view: &LoopView<'_>,
    kernel: &crate::datapath::state::MapContents,
    pod: &str,
) -> knit_agent_api::PolicyTable {
    use super::provenance::{NamedPolicy, Universe, pod_policy, target_of};
    let (cilium, _) = crate::run::translate_cilium_policies(view.state, view.index);
    let name = |p: &k8s_openapi::api::networking::v1::NetworkPolicy| {
        let m = &p.metadata;
        format!(
            "{}/{}",
            m.namespace.as_deref().unwrap_or("default"),
            m.name.as_deref().unwrap_or("")
        )
    };
    let policies: Vec<NamedPolicy<'_>> = view
        .state
        .network_policies
        .values()
        .map(|p| NamedPolicy {
            name: name(p),
            rules: crate::policy::PolicyRules::network_policy(p),
        })
        .chain(cilium.iter().map(|t| NamedPolicy {
            name: format!("{} (Cilium)", name(&t.policy)),
            rules: t.rules(),
        }))
        .collect();
    let (identities, peer_ports) = crate::render::policy_universe(view.index);
    let universe = Universe {
        identities: &identities,
        peer_ports: &peer_ports,
        local_only: view
            .policy_default_local_cluster
            .then_some(view.index.local_cluster()),
    };
    pod_policy(
        view.node,
        pod,
        target_of(view.index, view.node, pod),
        &policies,
        &universe,
        kernel,
        &directory(view),
    )
}

/// The routes.
pub fn router(api: Api) -> Router {
    Router::new()
        .route("/v1/flows", get(flows))
        .route("/v1/services", get(services))
        .route("/v1/ipcache", get(ipcache))
        .route("/v1/identities", get(identities))
        .route("/v1/endpoints", get(endpoints))
        .route("/v1/policy", get(policy))
        .with_state(api)
}

/// Serves the API on the unix socket `socket` (a stale socket file from a
/// previous agent is replaced; a missing directory is made, mode 0700;
/// the socket is mode 0660).
pub async fn serve(socket: &Path, api: Api) -> std::io::Result<()> {
    if let Some(dir) = socket.parent().filter(|d| !d.exists()) {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    match std::fs::remove_file(socket) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = tokio::net::UnixListener::bind(socket)?;
    // Flows name pods and labels: for root (and the agent's group) only.
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o660))?;
    axum::serve(listener, router(api)).await
}
