//! A raw flow event made into what `knitctl observe` shows: the verdict in
//! words, both ends named through a [`Directory`] (what the agent knows of
//! the mesh), the service of a translation, the policies behind a policy
//! verdict. Pure; the agent's directory is [`super::directory`].

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use knit_agent_api::{Flow, Peer, Verdict};
use knit_datapath_common::{
    DropReason, EVENT_DROP, EVENT_POLICY, EVENT_TRANSLATION, FlowEvent, POLICY_EGRESS, POLICY_INGRESS,
    addr_from_be, port_from_be,
};

use crate::datapath::state::Direction;

/// A pod of the mesh at an address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodName {
    /// Its cluster.
    pub cluster: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// What the agent knows to name a flow's ends.
pub trait Directory {
    /// The name of the cluster with this ID.
    fn cluster_name(&self, cluster_id: u32) -> Option<String>;
    /// An identity's labels.
    fn identity_labels(&self, identity: u32) -> BTreeMap<String, String>;
    /// The pod at an address.
    fn pod_at(&self, ip: Ipv4Addr) -> Option<PodName>;
    /// The NetworkPolicies that select the local pod at `ip` in `direction`.
    fn policies_selecting(&self, ip: Ipv4Addr, direction: Direction) -> Vec<String>;
    /// The service (`namespace/name`) with this VIP and port.
    fn service_at(&self, vip: Ipv4Addr, port: u16) -> Option<String>;
    /// The affinity of the service with this VIP and port.
    fn affinity_at(&self, _vip: Ipv4Addr, _port: u16) -> Option<String> {
        None
    }
    /// The node (`cluster/node`) with this tunnel endpoint.
    fn node_at(&self, _tunnel_endpoint: Ipv4Addr) -> Option<String> {
        None
    }
}

/// A drop reason's name (`knit_agent_drops`'s label), or its number.
pub fn drop_reason_name(reason: u8) -> String {
    DropReason::ALL
        .into_iter()
        .find(|r| *r as u8 == reason)
        .map_or_else(|| format!("reason_{reason}"), |r| r.name().to_owned())
}

/// The verdict of an event.
pub fn verdict_of(event: &FlowEvent) -> Verdict {
    match event.kind {
        EVENT_POLICY => Verdict::Allowed,
        EVENT_TRANSLATION => Verdict::Translated,
        _ if event.reason == DropReason::Policy as u8 || event.reason == DropReason::EgressPolicy as u8 => {
            Verdict::Denied
        }
        _ => Verdict::Dropped,
    }
}

/// `TCP`, `UDP`, `ICMP` or the number.
pub fn protocol_name(proto: u8) -> String {
    match proto {
        1 => "ICMP".into(),
        6 => "TCP".into(),
        17 => "UDP".into(),
        n => n.to_string(),
    }
}

fn peer(directory: &impl Directory, ip: Ipv4Addr, port: u16, identity: u32) -> Peer {
    let pod = (!ip.is_unspecified()).then(|| directory.pod_at(ip)).flatten();
    let cluster = match identity {
        0 => pod.as_ref().map(|p| p.cluster.clone()),
        id => directory
            .cluster_name(knit_kvstore::records::identity_cluster(id))
            .or_else(|| pod.as_ref().map(|p| p.cluster.clone())),
    };
    Peer {
        ip,
        port,
        identity,
        cluster,
        namespace: pod.as_ref().map(|p| p.namespace.clone()),
        pod: pod.map(|p| p.name),
        labels: if identity == 0 {
            BTreeMap::new()
        } else {
            directory.identity_labels(identity)
        },
    }
}

/// The event as `knitctl observe` shows it.
pub fn describe(
    directory: &impl Directory,
    node: &str,
    seq: u64,
    time_unix_nanos: u128,
    event: &FlowEvent,
) -> Flow {
    let verdict = verdict_of(event);
    let source = peer(
        directory,
        addr_from_be(event.saddr),
        port_from_be(event.sport),
        event.src_identity,
    );
    let destination = peer(
        directory,
        addr_from_be(event.daddr),
        port_from_be(event.dport),
        event.dst_identity,
    );
    let direction = match event.direction {
        POLICY_INGRESS => Some(Direction::Ingress),
        POLICY_EGRESS => Some(Direction::Egress),
        _ => None,
    };
    let policies = match direction {
        Some(Direction::Ingress) => directory.policies_selecting(destination.ip, Direction::Ingress),
        Some(Direction::Egress) => directory.policies_selecting(source.ip, Direction::Egress),
        None => Vec::new(),
    };
    let (service, service_name) = match event.kind {
        EVENT_TRANSLATION => {
            let (vip, port) = (addr_from_be(event.orig_daddr), port_from_be(event.orig_dport));
            (Some(format!("{vip}:{port}")), directory.service_at(vip, port))
        }
        EVENT_DROP if event.reason == DropReason::NoBackend as u8 => (
            Some(format!("{}:{}", destination.ip, destination.port)),
            directory.service_at(destination.ip, destination.port),
        ),
        _ => (None, None),
    };
    Flow {
        seq,
        time_unix_nanos,
        node: node.to_owned(),
        verdict,
        drop_reason: (event.kind == EVENT_DROP).then(|| drop_reason_name(event.reason)),
        direction: direction.map(|d| match d {
            Direction::Ingress => "ingress".to_owned(),
            Direction::Egress => "egress".to_owned(),
        }),
        protocol: protocol_name(event.proto),
        source,
        destination,
        service,
        service_name,
        policies,
    }
}

#[cfg(test)]
mod tests {
    use knit_datapath_common::{EVENT_DIRECTION_NONE, VERDICT_ALLOWED, addr_be, port_be};

    use super::*;

    struct Fake;

    impl Directory for Fake {
        fn cluster_name(&self, id: u32) -> Option<String> {
            (id == 2).then(|| "cluster-b".to_owned())
        }
        fn identity_labels(&self, identity: u32) -> BTreeMap<String, String> {
            BTreeMap::from([("app".to_owned(), format!("id{identity}"))])
        }
        fn pod_at(&self, ip: Ipv4Addr) -> Option<PodName> {
            (ip == Ipv4Addr::new(10, 2, 0, 7)).then(|| PodName {
                cluster: "cluster-b".into(),
                namespace: "demo".into(),
                name: "server".into(),
            })
        }
        fn policies_selecting(&self, ip: Ipv4Addr, direction: Direction) -> Vec<String> {
            vec![format!("{ip}-{direction:?}")]
        }
        fn service_at(&self, vip: Ipv4Addr, port: u16) -> Option<String> {
            (vip == Ipv4Addr::new(10, 96, 0, 10) && port == 80).then(|| "demo/web".to_owned())
        }
    }

    fn raw(kind: u8, reason: u8, direction: u8) -> FlowEvent {
        FlowEvent {
            timestamp: 1,
            saddr: addr_be(Ipv4Addr::new(10, 1, 0, 5)),
            daddr: addr_be(Ipv4Addr::new(10, 2, 0, 7)),
            src_identity: (2 << 15) | 3,
            dst_identity: 0,
            orig_daddr: 0,
            sport: port_be(40000),
            dport: port_be(8080),
            orig_dport: 0,
            kind,
            reason,
            direction,
            proto: 6,
            pad: 0,
        }
    }

    #[test]
    fn a_denied_packet_names_both_ends_and_the_policies_of_the_pod() {
        let f = describe(
            &Fake,
            "b-n0",
            9,
            77,
            &raw(EVENT_DROP, DropReason::Policy as u8, POLICY_INGRESS),
        );
        assert_eq!((f.seq, f.time_unix_nanos, f.node.as_str()), (9, 77, "b-n0"));
        assert_eq!(f.verdict, Verdict::Denied);
        assert_eq!(f.drop_reason.as_deref(), Some("policy_denied"));
        assert_eq!(f.direction.as_deref(), Some("ingress"));
        assert_eq!(f.protocol, "TCP");
        assert_eq!(
            f.source.cluster.as_deref(),
            Some("cluster-b"),
            "by the identity's cluster ID"
        );
        assert_eq!(f.source.labels["app"], format!("id{}", (2 << 15) | 3));
        assert_eq!(f.source.pod, None);
        assert_eq!(
            (
                f.destination.namespace.as_deref(),
                f.destination.pod.as_deref(),
                f.destination.port
            ),
            (Some("demo"), Some("server"), 8080)
        );
        assert_eq!(f.destination.cluster.as_deref(), Some("cluster-b"), "by the pod");
        assert!(f.destination.labels.is_empty(), "identity unknown");
        assert_eq!(f.policies, vec!["10.2.0.7-Ingress"]);
    }

    #[test]
    fn verdicts_and_reasons_by_kind() {
        let egress = describe(
            &Fake,
            "n",
            1,
            0,
            &raw(EVENT_DROP, DropReason::EgressPolicy as u8, POLICY_EGRESS),
        );
        assert_eq!(
            (egress.verdict, egress.policies),
            (Verdict::Denied, vec!["10.1.0.5-Egress".to_owned()])
        );
        let dropped = describe(
            &Fake,
            "n",
            1,
            0,
            &raw(EVENT_DROP, DropReason::NoRoute as u8, EVENT_DIRECTION_NONE),
        );
        assert_eq!(
            (dropped.verdict, dropped.drop_reason.as_deref()),
            (Verdict::Dropped, Some("no_route"))
        );
        assert!(dropped.direction.is_none() && dropped.policies.is_empty());
        let allowed = describe(
            &Fake,
            "n",
            1,
            0,
            &raw(EVENT_POLICY, VERDICT_ALLOWED, POLICY_INGRESS),
        );
        assert_eq!((allowed.verdict, allowed.drop_reason), (Verdict::Allowed, None));
        assert_eq!(drop_reason_name(99), "reason_99");
    }

    #[test]
    fn a_translation_names_its_service() {
        let mut e = raw(EVENT_TRANSLATION, 0, EVENT_DIRECTION_NONE);
        e.saddr = 0;
        e.sport = 0;
        e.orig_daddr = addr_be(Ipv4Addr::new(10, 96, 0, 10));
        e.orig_dport = port_be(80);
        let f = describe(&Fake, "n", 1, 0, &e);
        assert_eq!(f.verdict, Verdict::Translated);
        assert_eq!(f.service.as_deref(), Some("10.96.0.10:80"));
        assert_eq!(f.service_name.as_deref(), Some("demo/web"));
        assert_eq!(f.destination.pod.as_deref(), Some("server"));
        assert!(f.source.ip.is_unspecified() && f.source.pod.is_none());
    }
}
