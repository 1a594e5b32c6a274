use k8s_openapi::api::networking::v1::NetworkPolicy;
use knit_datapath_common::{EndpointValue, POLICY_ALLOW, POLICY_INGRESS};

use super::*;
use crate::datapath::state::Direction;
use crate::observe::describe::PodName;

struct Names;

impl Directory for Names {
    fn cluster_name(&self, id: u32) -> Option<String> {
        Some(format!("cluster-{id}"))
    }
    fn identity_labels(&self, identity: u32) -> BTreeMap<String, String> {
        BTreeMap::from([("id".to_owned(), identity.to_string())])
    }
    fn pod_at(&self, _: Ipv4Addr) -> Option<PodName> {
        None
    }
    fn policies_selecting(&self, _: Ipv4Addr, _: Direction) -> Vec<String> {
        Vec::new()
    }
    fn service_at(&self, _: Ipv4Addr, _: u16) -> Option<String> {
        None
    }
}

fn policy(name: &str, from_app: &str, port: Option<u16>) -> NetworkPolicy {
    let ports = port.map_or(
        serde_json::json!(null),
        |p| serde_json::json!([{"port": p, "protocol": "TCP"}]),
    );
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "web"}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": from_app}}}], "ports": ports}]
        }
    }))
    .unwrap()
}

const CLIENT: u32 = (1 << 15) | 5;
const OTHER: u32 = (2 << 15) | 6;
const STRANGER: u32 = (2 << 15) | 7;

#[test]
fn every_entry_names_its_policies_and_the_kernel_is_compared() {
    let web = Ipv4Addr::new(10, 1, 1, 9);
    let (client, other) = (
        BTreeMap::from([
            ("app".to_owned(), "client".to_owned()),
            (crate::policy::NAMESPACE_LABEL.to_owned(), "shop".to_owned()),
        ]),
        BTreeMap::from([
            ("app".to_owned(), "other".to_owned()),
            (crate::policy::NAMESPACE_LABEL.to_owned(), "shop".to_owned()),
        ]),
    );
    let web_labels = BTreeMap::from([("app".to_owned(), "web".to_owned())]);
    let identities = BTreeMap::from([(CLIENT, &client), (OTHER, &other)]);
    let peer_ports = BTreeMap::new();
    let universe = Universe {
        identities: &identities,
        peer_ports: &peer_ports,
        local_only: None,
    };
    let (a, b, c) = (
        policy("a", "client", Some(80)),
        policy("b", "client", Some(80)),
        policy("c", "other", None),
    );
    let policies = [
        NamedPolicy {
            name: "shop/a".into(),
            rules: PolicyRules::network_policy(&a),
        },
        NamedPolicy {
            name: "shop/b".into(),
            rules: PolicyRules::network_policy(&b),
        },
        NamedPolicy {
            name: "shop/c".into(),
            rules: PolicyRules::network_policy(&c),
        },
    ];
    let ports = BTreeMap::new();
    let target = || {
        Some(PolicyTarget {
            ip: web,
            namespace: "shop",
            labels: &web_labels,
            named_ports: &ports,
        })
    };
    // The kernel: the client's entry, a stranger's no policy produces, and
    // not the other's.
    let mut kernel = MapContents::default();
    let key = |identity, dport, proto| PolicyKey {
        endpoint: addr_be(web),
        identity,
        dport,
        proto,
        direction: POLICY_INGRESS,
    };
    kernel.policy.insert(key(CLIENT, 80, 6), POLICY_ALLOW);
    kernel.policy.insert(key(STRANGER, 22, 6), POLICY_ALLOW);
    kernel.endpoints.insert(
        addr_be(web),
        EndpointValue {
            flags: ENDPOINT_F_POLICY,
            ..Default::default()
        },
    );
    let t = pod_policy("n0", "shop/web", target(), &policies, &universe, &kernel, &Names);
    assert_eq!(
        (t.ip, t.ingress_enforced, t.egress_enforced),
        (Some(web), true, false)
    );
    let shown: Vec<(&str, u16, Vec<String>, bool)> = t
        .entries
        .iter()
        .map(|l| (l.peer.as_str(), l.port, l.policies.clone(), l.in_datapath))
        .collect();
    assert_eq!(
        shown,
        vec![
            (
                "identity 32773",
                80,
                vec!["shop/a".to_owned(), "shop/b".to_owned()],
                true
            ),
            ("identity 65542", 0, vec!["shop/c".to_owned()], false),
            ("identity 65543", 22, vec![], true),
        ]
    );
    assert_eq!(t.entries[0].peer_cluster.as_deref(), Some("cluster-1"));
    assert_eq!(
        (t.entries[0].verdict.as_str(), t.entries[0].protocol.as_str()),
        ("allow", "TCP")
    );
    assert_eq!(
        t.differences,
        vec![
            "ingress allow identity 65542 port 0 any: produced by shop/c but not in the datapath",
            "ingress allow identity 65543 port 22 TCP: in the datapath, but no policy produces it",
        ]
    );
    let unknown = pod_policy("n0", "shop/gone", None, &policies, &universe, &kernel, &Names);
    assert!(unknown.entries.is_empty());
    assert!(
        unknown.differences[0].contains("no pod shop/gone"),
        "{:?}",
        unknown.differences
    );
}
