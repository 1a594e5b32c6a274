//! The kvstore's own copies of the policy values a record carries:
//! [`Affinity`] and [`Failover`] in a service record, [`PeerLimits`] in a
//! peer config. They are spelled on the wire exactly as the CRD fields
//! they come from, but they are this crate's types: a change to the
//! `v1alpha1` CRDs (a renamed field, a new variant) changes what the
//! converter accepts, never what peers one version apart read and write.
//! The export and the operator convert with `From` at the boundary; the
//! numeric defaults stay the CRD's, taken through that conversion.

use serde::{Deserialize, Serialize};

/// Which backends clients prefer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Affinity {
    /// Local backends; remote ones only while no local backend is ready.
    Local,
    /// Remote backends; local ones only while no remote backend is ready.
    Remote,
    /// All backends of every cluster.
    #[default]
    None,
}

impl From<knit_crds::Affinity> for Affinity {
    fn from(a: knit_crds::Affinity) -> Self {
        match a {
            knit_crds::Affinity::Local => Self::Local,
            knit_crds::Affinity::Remote => Self::Remote,
            knit_crds::Affinity::None => Self::None,
        }
    }
}

/// When traffic moves on from the clusters a service prefers: while they
/// have fewer ready backends than `min_ready_backends`, or a smaller share
/// ready than `min_ready_percent`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Failover {
    /// Fewest ready backends the preferred clusters must have.
    pub min_ready_backends: u32,
    /// Smallest share, in percent, of their backends that must be ready.
    pub min_ready_percent: u8,
}

impl Default for Failover {
    fn default() -> Self {
        knit_crds::Failover::default().into()
    }
}

impl From<knit_crds::Failover> for Failover {
    fn from(f: knit_crds::Failover) -> Self {
        Self {
            min_ready_backends: f.min_ready_backends,
            min_ready_percent: f.min_ready_percent,
        }
    }
}

/// Caps on the records one peer may publish, per kind, and on their bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PeerLimits {
    /// Endpoints (pod IPs).
    pub endpoints: u32,
    /// Global services.
    pub services: u32,
    /// Identities.
    pub identities: u32,
    /// Nodes.
    pub nodes: u32,
    /// Bytes (keys and values) of the peer's records of each kind together.
    pub bytes: u64,
}

impl Default for PeerLimits {
    fn default() -> Self {
        knit_crds::PeerLimits::default().into()
    }
}

impl From<knit_crds::PeerLimits> for PeerLimits {
    fn from(l: knit_crds::PeerLimits) -> Self {
        Self {
            endpoints: l.endpoints,
            services: l.services,
            identities: l.identities,
            nodes: l.nodes,
            bytes: l.bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_is_spelled_on_the_wire_as_the_crd_field_it_comes_from() {
        for a in [
            knit_crds::Affinity::Local,
            knit_crds::Affinity::Remote,
            knit_crds::Affinity::None,
        ] {
            assert_eq!(
                serde_json::to_value(Affinity::from(a)).unwrap(),
                serde_json::to_value(a).unwrap()
            );
        }
        let failover = knit_crds::Failover {
            min_ready_backends: 3,
            min_ready_percent: 50,
        };
        assert_eq!(
            serde_json::to_value(Failover::from(failover)).unwrap(),
            serde_json::to_value(failover).unwrap()
        );
        let limits = knit_crds::PeerLimits {
            endpoints: 7,
            ..knit_crds::PeerLimits::default()
        };
        assert_eq!(
            serde_json::to_value(PeerLimits::from(limits)).unwrap(),
            serde_json::to_value(limits).unwrap()
        );
    }

    #[test]
    fn missing_fields_take_the_crds_defaults() {
        let limits: PeerLimits = serde_json::from_str(r#"{"endpoints": 9}"#).unwrap();
        assert_eq!(
            limits,
            PeerLimits {
                endpoints: 9,
                ..knit_crds::PeerLimits::default().into()
            }
        );
        let failover: Failover = serde_json::from_str("{}").unwrap();
        assert_eq!(failover, knit_crds::Failover::default().into());
    }
}
