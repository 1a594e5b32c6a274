//! Validation of everything a peer publishes, before it is mirrored.
//!
//! A peer may only publish records about itself: its own cluster name, IPs
//! inside the pod CIDRs it may announce (declared in its ClusterMeshPeer,
//! or else its own cluster config), identities inside its cluster ID's
//! range, well-formed keys and values. Anything else is rejected with a
//! [`Rejection`] the caller counts; good records are unaffected.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::PeerIdentity;
use crate::keys::{Kind, RelativeKey};
use crate::records::{
    ClusterConfigRecord, EndpointRecord, IdentityRecord, NodeRecord, ServiceRecord, identity_cluster,
};

/// Why a record was not mirrored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rejection {
    /// The key is not part of the schema.
    MalformedKey,
    /// The value is not the JSON the key's kind requires.
    MalformedValue,
    /// The record names another cluster.
    ForeignCluster,
    /// The record's name disagrees with its key.
    KeyMismatch,
    /// An identity outside the peer's cluster-ID range.
    IdentityOutOfRange,
    /// An IP or CIDR outside the pod CIDRs the peer may announce.
    OutsidePodCidrs,
    /// A new record beyond the peer's limit for its kind.
    OverLimit,
    /// A record that would take the peer past its byte budget.
    OverByteBudget,
}

impl Rejection {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::MalformedKey => "malformed_key",
            Rejection::MalformedValue => "malformed_value",
            Rejection::ForeignCluster => "foreign_cluster",
            Rejection::KeyMismatch => "key_mismatch",
            Rejection::IdentityOutOfRange => "identity_out_of_range",
            Rejection::OutsidePodCidrs => "outside_pod_cidrs",
            Rejection::OverLimit => "over_limit",
            Rejection::OverByteBudget => "over_byte_budget",
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Checks one peer's records.
#[derive(Clone, Debug)]
pub struct PeerValidator {
    name: String,
    id: u16,
    declared: Vec<IpNet>,
}

impl PeerValidator {
    /// A validator for `peer`. Declared CIDRs that do not parse are ignored
    /// (the operator already refused such a peer).
    pub fn new(peer: &PeerIdentity) -> Self {
        Self {
            name: peer.cluster_name.clone(),
            id: peer.cluster_id,
            declared: peer.pod_cidrs.iter().filter_map(|c| c.parse().ok()).collect(),
        }
    }

    /// Validates the record at `rel` (the key below the peer's prefix).
    pub fn check(&mut self, rel: &str, value: &[u8]) -> Result<RelativeKey, Rejection> {
        let key = RelativeKey::parse(rel).ok_or(Rejection::MalformedKey)?;
        match &key {
            RelativeKey::Synced(_) => {}
            RelativeKey::Config => {
                let c: ClusterConfigRecord = parse(value)?;
                self.own_cluster(&c.name)?;
                if c.id != self.id {
                    return Err(Rejection::ForeignCluster);
                }
                // Fail closed: a peer without declared CIDRs (the operator
                // refuses such a ClusterMeshPeer) may announce nothing.
                if !c
                    .pod_cidrs
                    .iter()
                    .all(|n| self.declared.iter().any(|d| d.contains(n)))
                {
                    return Err(Rejection::OutsidePodCidrs);
                }
            }
            RelativeKey::Record(Kind::Nodes, name) => {
                let n: NodeRecord = parse(value)?;
                self.own_cluster(&n.cluster)?;
                same(&n.name, name)?;
                if !n
                    .pod_cidrs
                    .iter()
                    .all(|c| self.allowed().iter().any(|a| a.contains(c)))
                {
                    return Err(Rejection::OutsidePodCidrs);
                }
            }
            RelativeKey::Record(Kind::Endpoints, name) => {
                let e: EndpointRecord = parse(value)?;
                self.own_cluster(&e.cluster)?;
                same(&e.ip.to_string(), name)?;
                self.ip_allowed(e.ip)?;
                self.identity_allowed(e.identity)?;
            }
            RelativeKey::Record(Kind::Identities, name) => {
                let i: IdentityRecord = parse(value)?;
                self.own_cluster(&i.cluster)?;
                same(&i.id.to_string(), name)?;
                self.identity_allowed(i.id)?;
                if i.labels.get(knit_crds::CLUSTER_LABEL) != Some(&self.name) {
                    return Err(Rejection::ForeignCluster);
                }
            }
            RelativeKey::Record(Kind::Services, name) => {
                let s: ServiceRecord = parse(value)?;
                self.own_cluster(&s.cluster)?;
                same(&format!("{}/{}", s.namespace, s.name), name)?;
                for b in &s.backends {
                    self.ip_allowed(b.ip)?;
                }
            }
        }
        Ok(key)
    }

    /// Where the peer's IPs may lie: its declared CIDRs, never merely what
    /// it announces about itself (a peer announcing `0.0.0.0/0` would pull
    /// every address into its tunnel).
    fn allowed(&self) -> &[IpNet] {
        &self.declared
    }

    fn own_cluster(&self, cluster: &str) -> Result<(), Rejection> {
        if cluster == self.name {
            Ok(())
        } else {
            Err(Rejection::ForeignCluster)
        }
    }

    fn ip_allowed(&self, ip: IpAddr) -> Result<(), Rejection> {
        if self.allowed().iter().any(|n| n.contains(&ip)) {
            Ok(())
        } else {
            Err(Rejection::OutsidePodCidrs)
        }
    }

    fn identity_allowed(&self, identity: u32) -> Result<(), Rejection> {
        let local = identity & crate::records::MAX_LOCAL_IDENTITY;
        if identity_cluster(identity) == u32::from(self.id) && local != 0 && identity < (1 << 24) {
            Ok(())
        } else {
            Err(Rejection::IdentityOutOfRange)
        }
    }
}

fn parse<T: serde::de::DeserializeOwned>(value: &[u8]) -> Result<T, Rejection> {
    serde_json::from_slice(value).map_err(|_| Rejection::MalformedValue)
}

fn same(a: &str, b: &str) -> Result<(), Rejection> {
    if a == b {
        Ok(())
    } else {
        Err(Rejection::KeyMismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::identity;
    use serde_json::json;

    fn validator() -> PeerValidator {
        PeerValidator::new(&PeerIdentity {
            cluster_name: "b".into(),
            cluster_id: 2,
            pod_cidrs: vec!["10.2.0.0/16".into()],
            limits: Default::default(),
        })
    }

    fn endpoint(ip: &str, cluster: &str, id: u32) -> Vec<u8> {
        serde_json::to_vec(&json!({"ip": ip, "cluster": cluster, "identity": id, "node": "n1", "namespace": "x", "pod": "p"}))
            .unwrap()
    }

    #[test]
    fn good_records_pass_and_each_kind_of_bad_one_is_named() {
        let mut v = validator();
        let good = endpoint("10.2.0.5", "b", identity(2, 7));
        assert!(v.check("endpoints/10.2.0.5", &good).is_ok());
        let cases: Vec<(&str, Vec<u8>, Rejection)> = vec![
            (
                "endpoints/10.9.0.5",
                endpoint("10.9.0.5", "b", identity(2, 7)),
                Rejection::OutsidePodCidrs,
            ),
            (
                "endpoints/10.2.0.5",
                endpoint("10.2.0.5", "c", identity(2, 7)),
                Rejection::ForeignCluster,
            ),
            (
                "endpoints/10.2.0.5",
                endpoint("10.2.0.5", "b", identity(3, 7)),
                Rejection::IdentityOutOfRange,
            ),
            (
                "endpoints/10.2.0.6",
                endpoint("10.2.0.5", "b", identity(2, 7)),
                Rejection::KeyMismatch,
            ),
            (
                "endpoints/10.2.0.5",
                b"{not json".to_vec(),
                Rejection::MalformedValue,
            ),
            ("pods/x", good.clone(), Rejection::MalformedKey),
        ];
        for (key, value, want) in cases {
            assert_eq!(v.check(key, &value), Err(want), "{key}");
        }
    }

    #[test]
    fn without_declared_cidrs_a_peer_may_announce_nothing() {
        let mut v = PeerValidator::new(&PeerIdentity {
            cluster_name: "b".into(),
            cluster_id: 2,
            pod_cidrs: vec![],
            limits: Default::default(),
        });
        let ep = endpoint("10.2.0.5", "b", identity(2, 7));
        assert_eq!(
            v.check("endpoints/10.2.0.5", &ep),
            Err(Rejection::OutsidePodCidrs)
        );
        // Before, the peer's own config bounded its IPs: announcing
        // 0.0.0.0/0 let it claim every address.
        for cidrs in [json!(["10.2.0.0/16"]), json!(["0.0.0.0/0"])] {
            let config = serde_json::to_vec(&json!({"name": "b", "id": 2, "podCIDRs": cidrs})).unwrap();
            assert_eq!(v.check("config", &config), Err(Rejection::OutsidePodCidrs));
            assert_eq!(
                v.check("endpoints/10.2.0.5", &ep),
                Err(Rejection::OutsidePodCidrs)
            );
        }
        let wrong_id = serde_json::to_vec(&json!({"name": "b", "id": 3, "podCIDRs": []})).unwrap();
        assert_eq!(v.check("config", &wrong_id), Err(Rejection::ForeignCluster));
    }

    #[test]
    fn records_of_a_newer_writer_are_accepted_and_read() {
        // What a writer one version newer may send: extra fields at every
        // level, a protocol and an affinity this version does not know.
        let mut v = validator();
        let config = json!({"name": "b", "id": 2, "podCIDRs": ["10.2.0.0/16"], "capabilities": ["mcs"], "region": "eu"});
        assert!(v.check("config", &serde_json::to_vec(&config).unwrap()).is_ok());
        let node = json!({"name": "n1", "cluster": "b", "underlayIps": ["192.168.50.20"], "podCIDRs": ["10.2.1.0/24"],
            "tunnelEndpoint": "192.168.50.20", "bootId": "x", "zone": "eu-1", "health": {"probe": "icmp"}});
        assert!(v.check("nodes/n1", &serde_json::to_vec(&node).unwrap()).is_ok());
        let mut ep: serde_json::Value =
            serde_json::from_slice(&endpoint("10.2.0.5", "b", identity(2, 7))).unwrap();
        ep["namedPorts"] = json!({"http": {"port": 80, "protocol": "TCP", "appProtocol": "h2"}});
        ep["weight"] = json!(3);
        assert!(
            v.check("endpoints/10.2.0.5", &serde_json::to_vec(&ep).unwrap())
                .is_ok()
        );
        let svc = json!({"cluster": "b", "namespace": "shop", "name": "web",
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}, {"name": "q", "port": 90, "protocol": "QUIC"}],
            "backends": [{"ip": "10.2.0.5", "ports": {"http": 8080}, "ready": true, "zone": "eu-1"}],
            "export": true, "import": true, "affinity": "preferred-local", "trafficPolicy": "x"});
        let bytes = serde_json::to_vec(&svc).unwrap();
        assert!(v.check("services/shop/web", &bytes).is_ok());
        let read: crate::records::ServiceRecord = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(read.ports[1].protocol, crate::records::Protocol::Other);
        assert_eq!(read.affinity, crate::records::Affinity::None);
        assert_eq!(read.backends.len(), 1);
    }
}
