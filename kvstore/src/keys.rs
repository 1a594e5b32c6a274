//! The key schema (`knit/v1/...`).
//!
//! ```text
//! knit/v1/heartbeat
//! knit/v1/clusters/<cluster>/config
//! knit/v1/clusters/<cluster>/synced/<kind>
//! knit/v1/clusters/<cluster>/<kind>/<name>
//! knit/v1/cache/<peer>/...          same layout below the peer's prefix
//! knit/v1/mesh-status/<peer>        the apiserver's report on each peer
//! ```
//!
//! `<name>` is the node name, the endpoint IP, the identity number or
//! `<namespace>/<service>`.

use std::fmt;

/// Prefix of every key Knit writes; a breaking change bumps the version.
pub const KEY_PREFIX: &str = "knit/v1";
/// Key a cluster's apiserver refreshes so readers can tell it is alive.
pub const HEARTBEAT_KEY: &str = "knit/v1/heartbeat";

/// Kinds of records a cluster publishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
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

/// `knit/v1/clusters/<cluster>/`: what a cluster publishes about itself.
pub fn cluster_prefix(cluster: &str) -> String {
    format!("{KEY_PREFIX}/clusters/{cluster}/")
}

/// `knit/v1/cache/<peer>/`: the KVStoreMesh mirror of a peer.
pub fn cache_prefix(peer: &str) -> String {
    format!("{KEY_PREFIX}/cache/{peer}/")
}

/// `knit/v1/mesh-status/<peer>`.
pub fn mesh_status_key(peer: &str) -> String {
    format!("{KEY_PREFIX}/mesh-status/{peer}")
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
        let valid_name = !rest.is_empty()
            && rest.len() <= 512
            && rest
                .split('/')
                .all(|part| !part.is_empty() && part != "." && part != "..")
            && rest.split('/').count() <= if kind == Kind::Services { 2 } else { 1 };
        valid_name.then(|| Self::Record(kind, rest.to_owned()))
    }

    /// The full key below `prefix` (which ends with `/`).
    pub fn under(&self, prefix: &str) -> String {
        match self {
            Self::Config => format!("{prefix}config"),
            Self::Synced(kind) => format!("{prefix}synced/{kind}"),
            Self::Record(kind, name) => format!("{prefix}{kind}/{name}"),
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
}
