//! Flow events as the agent serves them, and the filter `knitctl observe`
//! applies to them.
//!
//! The datapath emits a raw event (addresses, ports, identities, a kind and
//! a reason); the agent numbers it, stamps it with wall-clock time and this
//! node, and names both ends: the cluster an identity belongs to, its
//! labels, and the pod an address is. [`FlowFilter`] is pure: the same
//! filter runs against one node's flows or every node's.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// What happened to a flow (Hubble's verdicts, in Knit's words).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Policy admitted a new flow.
    Allowed,
    /// Policy dropped a packet.
    Denied,
    /// Dropped for another reason (the flow's `dropReason`).
    Dropped,
    /// A socket's connection to a service VIP got a backend.
    Translated,
}

impl Verdict {
    /// Every verdict, as written on the command line.
    pub const ALL: [Self; 4] = [Self::Allowed, Self::Denied, Self::Dropped, Self::Translated];

    /// The lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Denied => "denied",
            Self::Dropped => "dropped",
            Self::Translated => "translated",
        }
    }
}

/// One end of a flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Peer {
    /// Address (unspecified for the source of a translation: the socket has
    /// none yet).
    pub ip: Ipv4Addr,
    /// Port (TCP, UDP), 0 otherwise.
    pub port: u16,
    /// Security identity, 0 if the datapath did not know it.
    pub identity: u32,
    /// Cluster the identity (or, without one, the address) belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Namespace of the pod at this address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name of the pod at this address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The identity's labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl Peer {
    /// `namespace/pod`, else the address.
    pub fn name(&self) -> String {
        match (&self.namespace, &self.pod) {
            (Some(ns), Some(pod)) => format!("{ns}/{pod}"),
            _ => self.ip.to_string(),
        }
    }
}

/// One flow event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Flow {
    /// Sequence number on its node (gap-free while the agent runs; a gap
    /// is events the ring buffer lost).
    pub seq: u64,
    /// Wall-clock time, in nanoseconds since the Unix epoch.
    pub time_unix_nanos: u128,
    /// Node whose datapath saw it.
    pub node: String,
    /// What happened.
    pub verdict: Verdict,
    /// Why a packet was dropped (`knit_agent_drops`'s names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_reason: Option<String>,
    /// `ingress` or `egress` for policy verdicts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
    /// `TCP`, `UDP`, `ICMP` or the protocol number.
    pub protocol: String,
    /// Where it came from.
    pub source: Peer,
    /// Where it went (a translation's backend).
    pub destination: Peer,
    /// A translation's service frontend (VIP:port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// A translation's or `no_backend` drop's service (`namespace/name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    /// For a policy verdict: the NetworkPolicies selecting the pod in that
    /// direction (none: no policy, or a verdict of a policy since removed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<String>,
}

/// `GET /v1/flows?since=<seq>`: the flows after `since` the agent still
/// holds, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowPage {
    /// Node that answered.
    pub node: String,
    /// The flows.
    pub flows: Vec<Flow>,
    /// The sequence number to ask for next (`since`).
    pub next: u64,
    /// Events the datapath's ring buffer had no room for since the agent
    /// started.
    pub lost: u64,
    /// Flows older than `since` that the agent's bounded history no longer
    /// holds (asked for too late).
    pub missed: u64,
}

/// What `knitctl observe` shows: every condition given must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowFilter {
    /// A pod at either end: `namespace/name`, or `name` in any namespace.
    pub pod: Option<String>,
    /// A namespace at either end.
    pub namespace: Option<String>,
    /// An identity at either end.
    pub identity: Option<u32>,
    /// A cluster at either end.
    pub cluster: Option<String>,
    /// The verdict.
    pub verdict: Option<Verdict>,
    /// The drop reason (`policy_denied`, `no_route`, ...).
    pub drop_reason: Option<String>,
    /// A port at either end (a translation's service port too).
    pub port: Option<u16>,
}

impl FlowFilter {
    /// Whether `flow` passes.
    pub fn matches(&self, flow: &Flow) -> bool {
        let ends = [&flow.source, &flow.destination];
        let either = |f: &dyn Fn(&Peer) -> bool| ends.iter().any(|p| f(p));
        self.pod.as_ref().is_none_or(|want| {
            either(&|p| match (want.split_once('/'), &p.namespace, &p.pod) {
                (Some((ns, name)), Some(pns), Some(pod)) => ns == pns && name == pod,
                (None, _, Some(pod)) => want == pod,
                _ => false,
            })
        }) && self
            .namespace
            .as_ref()
            .is_none_or(|ns| either(&|p| p.namespace.as_deref() == Some(ns.as_str())))
            && self.identity.is_none_or(|id| either(&|p| p.identity == id))
            && self
                .cluster
                .as_ref()
                .is_none_or(|c| either(&|p| p.cluster.as_deref() == Some(c.as_str())))
            && self.verdict.is_none_or(|v| flow.verdict == v)
            && self
                .drop_reason
                .as_ref()
                .is_none_or(|r| flow.drop_reason.as_deref() == Some(r.as_str()))
            && self.port.is_none_or(|port| {
                either(&|p| p.port == port)
                    || flow
                        .service
                        .as_deref()
                        .and_then(|s| s.rsplit_once(':'))
                        .is_some_and(|(_, p)| p == port.to_string())
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(ip: [u8; 4], port: u16, identity: u32, cluster: &str, ns: &str, pod: &str) -> Peer {
        Peer {
            ip: Ipv4Addr::from(ip),
            port,
            identity,
            cluster: Some(cluster.into()),
            namespace: Some(ns.into()),
            pod: Some(pod.into()),
            labels: BTreeMap::new(),
        }
    }

    fn denied() -> Flow {
        Flow {
            seq: 1,
            time_unix_nanos: 0,
            node: "b-n0".into(),
            verdict: Verdict::Denied,
            drop_reason: Some("policy_denied".into()),
            direction: Some("ingress".into()),
            protocol: "TCP".into(),
            source: peer([10, 1, 0, 5], 40000, 65546, "cluster-a", "demo", "client"),
            destination: peer([10, 2, 0, 7], 8080, 131083, "cluster-b", "demo", "server"),
            service: None,
            service_name: None,
            policies: vec!["demo/deny-all".into()],
        }
    }

    #[test]
    fn every_condition_must_hold_at_either_end() {
        let f = denied();
        assert!(FlowFilter::default().matches(&f));
        let yes = [
            FlowFilter {
                pod: Some("demo/client".into()),
                ..Default::default()
            },
            FlowFilter {
                pod: Some("server".into()),
                ..Default::default()
            },
            FlowFilter {
                namespace: Some("demo".into()),
                ..Default::default()
            },
            FlowFilter {
                identity: Some(65546),
                ..Default::default()
            },
            FlowFilter {
                cluster: Some("cluster-a".into()),
                ..Default::default()
            },
            FlowFilter {
                verdict: Some(Verdict::Denied),
                ..Default::default()
            },
            FlowFilter {
                drop_reason: Some("policy_denied".into()),
                ..Default::default()
            },
            FlowFilter {
                port: Some(8080),
                ..Default::default()
            },
            FlowFilter {
                cluster: Some("cluster-b".into()),
                verdict: Some(Verdict::Denied),
                port: Some(8080),
                ..Default::default()
            },
        ];
        for filter in yes {
            assert!(filter.matches(&f), "{filter:?}");
        }
        let no = [
            FlowFilter {
                pod: Some("other/client".into()),
                ..Default::default()
            },
            FlowFilter {
                namespace: Some("kube-system".into()),
                ..Default::default()
            },
            FlowFilter {
                identity: Some(7),
                ..Default::default()
            },
            FlowFilter {
                cluster: Some("cluster-c".into()),
                ..Default::default()
            },
            FlowFilter {
                verdict: Some(Verdict::Allowed),
                ..Default::default()
            },
            FlowFilter {
                drop_reason: Some("no_route".into()),
                ..Default::default()
            },
            FlowFilter {
                port: Some(80),
                ..Default::default()
            },
            FlowFilter {
                cluster: Some("cluster-b".into()),
                verdict: Some(Verdict::Allowed),
                ..Default::default()
            },
        ];
        for filter in no {
            assert!(!filter.matches(&f), "{filter:?}");
        }
    }

    #[test]
    fn a_translation_matches_its_service_port() {
        let mut f = denied();
        f.verdict = Verdict::Translated;
        f.service = Some("10.96.0.10:80".into());
        assert!(
            FlowFilter {
                port: Some(80),
                ..Default::default()
            }
            .matches(&f)
        );
    }

    #[test]
    fn flows_keep_their_shape_through_json() {
        let f = denied();
        let json = serde_json::to_value(&f).unwrap();
        assert_eq!(json["verdict"], "denied");
        assert_eq!(json["dropReason"], "policy_denied");
        assert_eq!(json["source"]["cluster"], "cluster-a");
        assert_eq!(json["destination"]["pod"], "server");
        assert_eq!(serde_json::from_value::<Flow>(json).unwrap(), f);
    }
}
