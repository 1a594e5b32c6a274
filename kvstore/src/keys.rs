//! The key schema: **the stable wire contract** between clusters (and
//! between versions of Knit). This module is the only place that builds or
//! parses a key; everything else goes through [`Key`], [`RelativeKey`] and
//! the prefix functions.
//!
//! ```text
//! knit/v1/heartbeat
//! knit/v1/clusters/<cluster>/config
//! knit/v1/clusters/<cluster>/synced/<kind>      canary: every <kind> record is written
//! knit/v1/clusters/<cluster>/<kind>/<name>
//! knit/v1/cache/<peer>/...                      same layout below the peer's prefix
//! knit/v1/local/services/<namespace>/<name>     local-only (peers cannot read it)
//! knit/v1/mesh-status/<peer>                    the apiserver's report on each peer
//! ```
//!
//! `<name>` is the node name, the endpoint IP, the identity number or
//! `<namespace>/<service>`. Within `v1` keys only get added; a change that
//! moves or renames a key is a new version prefix.

use std::fmt;

/// Prefix of every key Knit writes; a breaking change bumps the version.
pub const KEY_PREFIX: &str = "knit/v1";
/// Key a cluster's apiserver refreshes so readers can tell it is alive.
pub const HEARTBEAT_KEY: &str = "knit/v1/heartbeat";

/// Kinds of records a cluster publishes. In JSON (report counts) a kind
/// is its path segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Nodes and their tunnel endpoints.
    Nodes,
    /// Pod IPs with identity (the ipcache).
    Endpoints,
    /// Identity number → labels.
    Identities,
    /// Global services and their backends.
    Services,
}

impl Kind {
    /// Every kind, in the order they are synced.
    pub const ALL: [Kind; 4] = [Kind::Nodes, Kind::Identities, Kind::Endpoints, Kind::Services];

    /// The path segment.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Nodes => "nodes",
            Kind::Endpoints => "endpoints",
            Kind::Identities => "identities",
            Kind::Services => "services",
        }
    }

    /// Parses a path segment.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `knit/v1/clusters/`: every cluster's own prefix starts here.
pub fn clusters_prefix() -> String {
    format!("{KEY_PREFIX}/clusters/")
}

/// `knit/v1/clusters/<cluster>/`: what a cluster publishes about itself.
pub fn cluster_prefix(cluster: &str) -> String {
    format!("{KEY_PREFIX}/clusters/{cluster}/")
}

/// `knit/v1/cache/<peer>/`: the KVStoreMesh mirror of a peer.
pub fn cache_prefix(peer: &str) -> String {
    format!("{KEY_PREFIX}/cache/{peer}/")
}

/// `knit/v1/local/`: local-only data (not readable by peers).
pub fn local_prefix() -> String {
    format!("{KEY_PREFIX}/local/")
}

/// `knit/v1/local/services/<namespace>/<name>`.
pub fn local_service_key(namespace: &str, name: &str) -> String {
    format!("{KEY_PREFIX}/local/services/{namespace}/{name}")
}

/// `knit/v1/mesh-status/`: the reports on every peer.
pub fn mesh_status_prefix() -> String {
    format!("{KEY_PREFIX}/mesh-status/")
}

/// `knit/v1/mesh-status/<peer>`.
pub fn mesh_status_key(peer: &str) -> String {
    format!("{KEY_PREFIX}/mesh-status/{peer}")
}

/// `knit/v1/agent-status/`: every agent's view of each peer.
pub fn agent_status_prefix() -> String {
    format!("{KEY_PREFIX}/agent-status/")
}

/// `knit/v1/agent-status/<node>`, written by that node's agent under a lease.
pub fn agent_status_key(node: &str) -> String {
    format!("{KEY_PREFIX}/agent-status/{node}")
}

/// etcd user a peer cluster reads this cluster as (its certificate's CN).
pub fn remote_user(peer_cluster: &str) -> String {
    format!("remote-{peer_cluster}")
}

/// Whose records a key below a cluster-like prefix holds.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// `clusters/<name>/`: a cluster's own export.
    Cluster(String),
    /// `cache/<peer>/`: the KVStoreMesh mirror of a peer.
    Cache(String),
}

impl Scope {
    /// The prefix, ending with `/`.
    pub fn prefix(&self) -> String {
        match self {
            Scope::Cluster(c) => cluster_prefix(c),
            Scope::Cache(p) => cache_prefix(p),
        }
    }

    /// The cluster whose records these are.
    pub fn cluster(&self) -> &str {
        match self {
            Scope::Cluster(c) | Scope::Cache(c) => c,
        }
    }
}

/// A full key, parsed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    /// `heartbeat`.
    Heartbeat,
    /// `mesh-status/<peer>`.
    MeshStatus(String),
    /// `agent-status/<node>`.
    AgentStatus(String),
    /// `local/services/<namespace>/<name>`, as `<namespace>/<name>`.
    LocalService(String),
    /// A key below a cluster's or a mirror's prefix.
    Scoped(Scope, RelativeKey),
}

impl Key {
    /// Parses a full key; `None` for anything outside the schema.
    pub fn parse(full: &str) -> Option<Self> {
        let rest = full.strip_prefix(KEY_PREFIX)?.strip_prefix('/')?;
        if rest == "heartbeat" {
            return Some(Key::Heartbeat);
        }
        if let Some(peer) = rest.strip_prefix("mesh-status/") {
            return valid_segment(peer).then(|| Key::MeshStatus(peer.to_owned()));
        }
        if let Some(node) = rest.strip_prefix("agent-status/") {
            return valid_segment(node).then(|| Key::AgentStatus(node.to_owned()));
        }
        if let Some(name) = rest.strip_prefix("local/services/") {
            return valid_name(name, 2).then(|| Key::LocalService(name.to_owned()));
        }
        let (scope, rest) = if let Some(rest) = rest.strip_prefix("clusters/") {
            let (c, rel) = rest.split_once('/')?;
            (Scope::Cluster(c.to_owned()), rel)
        } else {
            let (p, rel) = rest.strip_prefix("cache/")?.split_once('/')?;
            (Scope::Cache(p.to_owned()), rel)
        };
        if !valid_segment(scope.cluster()) {
            return None;
        }
        Some(Key::Scoped(scope, RelativeKey::parse(rest)?))
    }

    /// The canary this key is, if it is one: its scope and kind.
    pub fn canary(&self) -> Option<(&Scope, Kind)> {
        match self {
            Key::Scoped(scope, RelativeKey::Synced(kind)) => Some((scope, *kind)),
            _ => None,
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Heartbeat => f.write_str(HEARTBEAT_KEY),
            Key::MeshStatus(peer) => f.write_str(&mesh_status_key(peer)),
            Key::AgentStatus(node) => f.write_str(&agent_status_key(node)),
            Key::LocalService(name) => write!(f, "{KEY_PREFIX}/local/services/{name}"),
            Key::Scoped(scope, rel) => f.write_str(&rel.under(&scope.prefix())),
        }
    }
}

/// Whether `full` is a canary key (`.../synced/<kind>` of a cluster or a
/// mirror), by the schema rather than by its text.
pub fn is_canary(full: &str) -> bool {
    Key::parse(full).is_some_and(|k| k.canary().is_some())
}

fn valid_segment(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains('/')
}

fn valid_name(name: &str, max_segments: usize) -> bool {
    !name.is_empty()
        && name.len() <= 512
        && name.split('/').all(valid_segment)
        && name.split('/').count() <= max_segments
}

/// A key below a cluster (or cache) prefix, relative to that prefix.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RelativeKey {
    /// `config`
    Config,
    /// `synced/<kind>`
    Synced(Kind),
    /// `<kind>/<name>`
    Record(Kind, String),
}

impl RelativeKey {
    /// Parses the part of a key after its cluster or cache prefix.
    pub fn parse(rel: &str) -> Option<Self> {
        if rel == "config" {
            return Some(Self::Config);
        }
        let (head, rest) = rel.split_once('/')?;
        if head == "synced" {
            return Kind::parse(rest).map(Self::Synced);
        }
        let kind = Kind::parse(head)?;
        let segments = if kind == Kind::Services { 2 } else { 1 };
        valid_name(rest, segments).then(|| Self::Record(kind, rest.to_owned()))
    }

    /// The full key below `prefix` (which ends with `/`).
    pub fn under(&self, prefix: &str) -> String {
        match self {
            Self::Config => format!("{prefix}config"),
            Self::Synced(kind) => format!("{prefix}synced/{kind}"),
            Self::Record(kind, name) => format!("{prefix}{kind}/{name}"),
        }
    }

    /// The kind of records this key belongs to (none for `config`).
    pub fn kind(&self) -> Option<Kind> {
        match self {
            Self::Config => None,
            Self::Synced(k) | Self::Record(k, _) => Some(*k),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_reject_malformed_paths() {
        let p = cluster_prefix("a");
        for rel in [
            RelativeKey::Config,
            RelativeKey::Synced(Kind::Endpoints),
            RelativeKey::Record(Kind::Endpoints, "10.1.0.5".into()),
            RelativeKey::Record(Kind::Services, "shop/web".into()),
        ] {
            let key = rel.under(&p);
            assert_eq!(RelativeKey::parse(key.strip_prefix(&p).unwrap()), Some(rel));
        }
        for bad in [
            "",
            "nodes",
            "nodes/",
            "nodes/a/b",
            "pods/x",
            "synced/pods",
            "services/../x",
            "services/a/b/c",
        ] {
            assert_eq!(RelativeKey::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn full_keys_round_trip_through_the_one_parser() {
        for key in [
            Key::Heartbeat,
            Key::MeshStatus("b".into()),
            Key::AgentStatus("node-1".into()),
            Key::LocalService("shop/web".into()),
            Key::Scoped(Scope::Cluster("a".into()), RelativeKey::Config),
            Key::Scoped(Scope::Cache("b".into()), RelativeKey::Synced(Kind::Services)),
            Key::Scoped(
                Scope::Cache("b".into()),
                RelativeKey::Record(Kind::Services, "synced/web".into()),
            ),
        ] {
            assert_eq!(Key::parse(&key.to_string()), Some(key.clone()), "{key}");
        }
        for bad in [
            "knit/v2/heartbeat",
            "knit/v1/clusters//config",
            "knit/v1/cache/../nodes/x",
            "knit/v1/mesh-status/",
            "knit/v1/agent-status/",
            "knit/v1/agent-status/a/b",
            "knit/v1/local/services/a/b/c",
            "other/v1/heartbeat",
        ] {
            assert_eq!(Key::parse(bad), None, "{bad:?}");
        }
        assert_eq!(
            local_service_key("shop", "web"),
            Key::LocalService("shop/web".into()).to_string()
        );
    }

    #[test]
    fn a_service_in_a_namespace_named_synced_is_not_a_canary() {
        assert!(is_canary("knit/v1/clusters/a/synced/services"));
        assert!(is_canary("knit/v1/cache/b/synced/nodes"));
        assert!(!is_canary("knit/v1/clusters/a/services/synced/web"));
        assert!(!is_canary("knit/v1/cache/b/services/synced/nodes"));
        assert!(!is_canary("knit/v1/clusters/a/synced/pods"));
    }
}
