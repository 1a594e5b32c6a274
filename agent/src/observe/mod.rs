//! Observation: what the datapath did with flows, and what it holds.
//!
//! Data flow: the programs emit [`knit_datapath_common::FlowEvent`]s into
//! the `knit_events` ring buffer (the kinds [`ObserveSettings::kinds`]
//! asks for) → [`reader`] drains it into the bounded [`log::FlowLog`] and
//! the `knit_agent_flow_events` metric → [`api`] serves pages of it on the
//! agent's unix socket, each event [`describe`]d with names from the
//! agent's [`directory`]. The same socket serves the datapath's tables,
//! read from the pinned maps ([`pinned`]) and compared with the agent's
//! render ([`tables`]). The agent's loop answers the API's questions
//! ([`Query`]) between its events, since the index lives there.

pub mod api;
pub mod describe;
pub mod directory;
pub mod log;
pub mod pinned;
pub mod provenance;
pub mod reader;
pub mod tables;

use std::path::PathBuf;

use knit_datapath_common::{EVENT_DROP, EVENT_POLICY, EVENT_TRANSLATION};
use knit_sources::ClusterState;

use crate::datapath::state::MapContents;
use crate::index::MeshIndex;

/// What is observed, and where it is served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObserveSettings {
    /// The event kinds the datapath emits (`EVENT_*`); empty: none.
    pub kinds: Vec<u8>,
    /// Events the agent keeps.
    pub history: usize,
    /// The API's unix socket; none: not served.
    pub socket: Option<PathBuf>,
}

impl Default for ObserveSettings {
    fn default() -> Self {
        Self {
            kinds: vec![EVENT_DROP, EVENT_POLICY, EVENT_TRANSLATION],
            history: log::DEFAULT_CAPACITY,
            socket: None,
        }
    }
}

/// Parses `--observe`: `all`, `none`, or a comma-separated list of
/// `drops`, `policy`, `translations`.
pub fn parse_kinds(text: &str) -> Result<Vec<u8>, String> {
    let mut kinds = Vec::new();
    for word in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        match word {
            "all" => kinds.extend([EVENT_DROP, EVENT_POLICY, EVENT_TRANSLATION]),
            "none" => {}
            "drops" => kinds.push(EVENT_DROP),
            "policy" => kinds.push(EVENT_POLICY),
            "translations" => kinds.push(EVENT_TRANSLATION),
            other => {
                return Err(format!(
                    "unknown event kind {other:?} in --observe: use all, none, or drops,policy,translations"
                ));
            }
        }
    }
    kinds.sort_unstable();
    kinds.dedup();
    Ok(kinds)
}

/// What the loop lends a [`Query`].
pub struct LoopView<'a> {
    /// This node.
    pub node: &'a str,
    /// The mesh as the agent knows it.
    pub index: &'a MeshIndex,
    /// This cluster's Kubernetes objects.
    pub state: &'a ClusterState,
    /// What the agent last wrote to the maps.
    pub rendered: &'a MapContents,
    /// `--policy-default-local-cluster`.
    pub policy_default_local_cluster: bool,
}

/// A question the API asks the agent's loop.
pub type Query = Box<dyn FnOnce(&LoopView<'_>) + Send>;

/// Observation running beside the agent's loop: the reader and the API
/// (stopped when dropped), the API's questions, the cluster names the
/// reader labels metrics with.
pub struct Observation {
    queries: tokio::sync::mpsc::Receiver<Query>,
    clusters: tokio::sync::watch::Sender<std::collections::BTreeMap<u32, String>>,
    _tasks: Vec<knit_telemetry::AbortOnDrop>,
}

impl Observation {
    /// The API's next question (pending forever without an API).
    pub async fn next_query(&mut self) -> Option<Query> {
        self.queries.recv().await
    }

    /// Tells the reader the mesh's cluster names (after a kvstore change).
    pub fn publish_clusters(&self, index: &MeshIndex) {
        let names: std::collections::BTreeMap<u32, String> = std::iter::once(&index.local)
            .chain(index.peers.values())
            .filter_map(|c| c.config.as_ref())
            .map(|c| (u32::from(c.id), c.name.clone()))
            .collect();
        self.clusters.send_if_modified(|old| {
            let changed = *old != names;
            if changed {
                *old = names;
            }
            changed
        });
    }
}

/// Tells the datapath which events to emit, and starts the reader and,
/// with a socket, the API.
pub fn start(
    settings: &crate::run::AgentSettings,
    datapath: &mut crate::datapath::Datapath,
    metrics: &crate::metrics::Metrics,
) -> crate::Result<Observation> {
    use std::sync::{Arc, Mutex};

    use knit_telemetry::AbortOnDrop;

    let observe = &settings.observe;
    datapath.observe(&observe.kinds)?;
    let (ring, lost) = datapath.take_events()?;
    let log = Arc::new(Mutex::new(log::FlowLog::new(observe.history)));
    let (clusters, clusters_rx) = tokio::sync::watch::channel(Default::default());
    let (queries_tx, queries) = tokio::sync::mpsc::channel(16);
    let reader_log = log.clone();
    let reader_metrics = metrics.clone();
    let mut tasks = vec![AbortOnDrop(tokio::spawn(reader::run(
        ring,
        lost,
        reader_log,
        clusters_rx,
        reader_metrics,
    )))];
    if let Some(socket) = observe.socket.clone() {
        let api = api::Api {
            node: settings.node.clone(),
            log,
            queries: queries_tx,
            pin_dir: settings.pin_dir.clone(),
            metrics: metrics.clone(),
        };
        tasks.push(AbortOnDrop(tokio::spawn(async move {
            if let Err(e) = api::serve(&socket, api).await {
                tracing::error!(error = %e, socket = %socket.display(), "serving the agent's local API failed: knitctl cannot ask this agent");
            }
        })));
    }
    Ok(Observation {
        queries,
        clusters,
        _tasks: tasks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observe_flags_name_the_kinds() {
        assert_eq!(
            parse_kinds("all").unwrap(),
            vec![EVENT_DROP, EVENT_POLICY, EVENT_TRANSLATION]
        );
        assert_eq!(parse_kinds("none").unwrap(), Vec::<u8>::new());
        assert_eq!(
            parse_kinds("policy, drops").unwrap(),
            vec![EVENT_DROP, EVENT_POLICY]
        );
        let e = parse_kinds("drops,flows").unwrap_err();
        assert!(e.contains("\"flows\"") && e.contains("--observe"), "{e}");
    }
}
