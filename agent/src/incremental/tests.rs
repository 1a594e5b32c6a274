//! The patch is held to what a full render gives, over random sequences of
//! endpoint, service, node and canary changes in this cluster and a peer.

use std::collections::HashMap;

use knit_kvstore::watch_store::WatchEvent;
use proptest::prelude::*;

use super::*;
use crate::datapath::patch::{ServiceIds, patch_entries};
use crate::datapath::state::to_map_contents;

const NODE: &str = "a-node1";

/// One event the test can send, in terms of small pools so that records
/// collide: the same IP in both clusters, two services on one ClusterIP.
#[derive(Clone, Debug)]
enum Event {
    Endpoint {
        peer: bool,
        ip: u8,
        node: u8,
        identity: u32,
        namespace: u8,
        named_port: bool,
    },
    DeleteEndpoint {
        peer: bool,
        ip: u8,
    },
    Service {
        peer: bool,
        name: u8,
        vip: u8,
        backends: Vec<(u8, bool)>,
        affinity: u8,
    },
    DeleteService {
        peer: bool,
        name: u8,
    },
    PeerNode {
        tunnel: u8,
    },
    PeerSynced {
        on: bool,
    },
}

fn scope(peer: bool) -> &'static str {
    if peer { "cache/b" } else { "clusters/a" }
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        6 => (any::<bool>(), 1..8u8, 0..3u8, 1..4u32, 0..2u8, prop::bool::weighted(0.1)).prop_map(
            |(peer, ip, node, identity, namespace, named_port)| Event::Endpoint { peer, ip, node, identity, namespace, named_port }
        ),
        3 => (any::<bool>(), 1..8u8).prop_map(|(peer, ip)| Event::DeleteEndpoint { peer, ip }),
        6 => (any::<bool>(), 0..4u8, 0..3u8, prop::collection::vec((1..8u8, any::<bool>()), 0..4), 0..3u8).prop_map(
            |(peer, name, vip, backends, affinity)| Event::Service { peer, name, vip, backends, affinity }
        ),
        2 => (any::<bool>(), 0..4u8).prop_map(|(peer, name)| Event::DeleteService { peer, name }),
        1 => (1..3u8).prop_map(|tunnel| Event::PeerNode { tunnel }),
        1 => any::<bool>().prop_map(|on| Event::PeerSynced { on }),
    ]
}

fn upsert(key: String, value: serde_json::Value) -> WatchEvent {
    WatchEvent::Upsert {
        key: format!("knit/v1/{key}"),
        value: serde_json::to_vec(&value).expect("json"),
    }
}

fn delete(key: String) -> WatchEvent {
    WatchEvent::Delete {
        key: format!("knit/v1/{key}"),
    }
}

fn watch_event(e: &Event) -> WatchEvent {
    match e {
        Event::Endpoint {
            peer,
            ip,
            node,
            identity,
            namespace,
            named_port,
        } => {
            let cluster = if *peer { "b" } else { "a" };
            let ip = format!("10.64.0.{ip}");
            let mut record = serde_json::json!({
                "ip": ip, "cluster": cluster, "identity": identity,
                "node": format!("{cluster}-node{node}"), "namespace": format!("ns{namespace}"), "pod": "p",
            });
            if *named_port {
                record["namedPorts"] = serde_json::json!({"http": {"port": 8080, "protocol": "TCP"}});
            }
            upsert(format!("{}/endpoints/{ip}", scope(*peer)), record)
        }
        Event::DeleteEndpoint { peer, ip } => delete(format!("{}/endpoints/10.64.0.{ip}", scope(*peer))),
        Event::Service {
            peer,
            name,
            vip,
            backends,
            affinity,
        } => {
            let backends: Vec<_> = backends
                .iter()
                .map(|(ip, ready)| serde_json::json!({"ip": format!("10.64.0.{ip}"), "ports": {"http": 8080}, "ready": ready}))
                .collect();
            let affinity = ["none", "local", "remote"][usize::from(*affinity)];
            let record = serde_json::json!({
                "cluster": if *peer { "b" } else { "a" }, "namespace": "shop", "name": format!("svc{name}"),
                "ports": [{"name": "http", "port": 80, "protocol": "TCP"}, {"name": "dns", "port": 53, "protocol": "UDP"}],
                "clusterIPs": [format!("10.96.0.{vip}")], "backends": backends,
                "export": true, "import": true,
                "affinity": affinity, "withdrawn": false,
            });
            let key = if *peer {
                format!("cache/b/services/shop/svc{name}")
            } else {
                format!("local/services/shop/svc{name}")
            };
            upsert(key, record)
        }
        Event::DeleteService { peer, name } => delete(if *peer {
            format!("cache/b/services/shop/svc{name}")
        } else {
            format!("local/services/shop/svc{name}")
        }),
        Event::PeerNode { tunnel } => upsert(
            "cache/b/nodes/b-node1".into(),
            serde_json::json!({"name": "b-node1", "cluster": "b", "underlayIps": [format!("192.168.60.{tunnel}")],
                "podCIDRs": ["10.65.0.0/24"], "tunnelEndpoint": format!("192.168.60.{tunnel}")}),
        ),
        Event::PeerSynced { on: true } => upsert("cache/b/synced/endpoints".into(), serde_json::json!(1)),
        Event::PeerSynced { on: false } => delete("cache/b/synced/endpoints".into()),
    }
}

fn start() -> MeshIndex {
    let mut index = MeshIndex::new("a");
    let setup = [
        upsert(
            "clusters/a/config".into(),
            serde_json::json!({"name": "a", "id": 1, "podCIDRs": ["10.64.0.0/16"]}),
        ),
        upsert(
            "clusters/a/nodes/a-node2".into(),
            serde_json::json!({"name": "a-node2", "cluster": "a", "underlayIps": ["192.168.50.12"],
                "podCIDRs": ["10.64.1.0/24"], "tunnelEndpoint": "192.168.50.12"}),
        ),
        upsert(
            "cache/b/config".into(),
            serde_json::json!({"name": "b", "id": 2, "podCIDRs": ["10.65.0.0/16"]}),
        ),
        upsert("cache/b/synced/endpoints".into(), serde_json::json!(1)),
        upsert("cache/b/synced/services".into(), serde_json::json!(1)),
        // Pods in both namespaces, so a new endpoint rarely opens one.
        upsert(
            "clusters/a/endpoints/10.64.1.100".into(),
            serde_json::json!({"ip": "10.64.1.100", "cluster": "a", "identity": 9, "node": "a-node2", "namespace": "ns0", "pod": "q0"}),
        ),
        upsert(
            "clusters/a/endpoints/10.64.1.101".into(),
            serde_json::json!({"ip": "10.64.1.101", "cluster": "a", "identity": 9, "node": "a-node2", "namespace": "ns1", "pod": "q1"}),
        ),
    ];
    for e in &setup {
        index.apply(e);
    }
    index
}

/// A pod of this node at 10.64.0.7, so endpoint changes there need the
/// full render.
fn attachments() -> Vec<Attachment> {
    serde_json::from_value(serde_json::json!([{
        "containerId": "c1", "ifname": "eth0", "netns": "/proc/1/ns/net",
        "hostInterface": "knit0001", "ips": ["10.64.0.7"],
        "podMac": "02:00:00:00:00:07", "hostMac": "02:00:00:00:01:07",
    }]))
    .expect("attachment")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn a_patch_ends_where_a_full_render_does(events in prop::collection::vec(event(), 1..60)) {
        let options = RenderOptions::default();
        let attachments = attachments();
        let mut index = start();
        let mut renderer = IncrementalRender::new();
        renderer.render_full(&index, &[], NODE, &attachments, &options);
        let (mut maps, _) = to_map_contents(renderer.last().unwrap(), &HashMap::new(), &HashMap::new());
        let mut ids = ServiceIds::of(&maps.services);
        let mut patched = 0;
        for e in &events {
            if let Some(change) = index.apply_change(&watch_event(e)) {
                renderer.note(&change);
            }
            match renderer.try_patch(&index, NODE, &options) {
                Some(patch) => {
                    patched += 1;
                    maps.apply(&patch_entries(&patch, &maps, &mut ids));
                }
                None => {
                    let state = renderer.render_full(&index, &[], NODE, &attachments, &options);
                    let (full, _) = to_map_contents(state, &HashMap::new(), &maps.services);
                    maps = full;
                    ids = ServiceIds::of(&maps.services);
                }
            }
            let full = render(&index, &[], NODE, &attachments, &options);
            prop_assert_eq!(renderer.last().unwrap(), &full, "after {:?}", e);
            let (want, _) = to_map_contents(&full, &HashMap::new(), &maps.services);
            prop_assert_eq!(&maps, &want, "map entries after {:?}", e);
        }
        // Endpoint and service records are most of the changes: most patch.
        prop_assert!(events.len() < 20 || patched * 3 >= events.len(), "{} of {} patched", patched, events.len());
    }
}

#[test]
fn the_patch_path_is_taken_for_a_remote_endpoint_and_a_service() {
    let options = RenderOptions::default();
    let mut index = start();
    let mut renderer = IncrementalRender::new();
    renderer.render_full(&index, &[], NODE, &attachments(), &options);
    for e in [
        Event::Endpoint {
            peer: false,
            ip: 3,
            node: 2,
            identity: 5,
            namespace: 0,
            named_port: false,
        },
        Event::Service {
            peer: false,
            name: 1,
            vip: 1,
            backends: vec![(3, true)],
            affinity: 0,
        },
    ] {
        let change = index.apply_change(&watch_event(&e)).expect("a change");
        renderer.note(&change);
        let patch = renderer.try_patch(&index, NODE, &options).expect("a patch");
        assert!(!patch.is_empty(), "{e:?}");
    }
    // This node's own pod: only the full render knows its entry and policy.
    let change = index
        .apply_change(&watch_event(&Event::Endpoint {
            peer: false,
            ip: 7,
            node: 1,
            identity: 5,
            namespace: 0,
            named_port: false,
        }))
        .expect("a change");
    renderer.note(&change);
    assert!(renderer.try_patch(&index, NODE, &options).is_none());
    // Nodes failing their probes narrow services by endpoint: full render.
    let failing = RenderOptions {
        failing: [IpAddr::from([192, 168, 50, 12])].into(),
        ..RenderOptions::default()
    };
    renderer.render_full(&index, &[], NODE, &attachments(), &failing);
    renderer.note(&IndexChange::Service("shop/svc1".into()));
    assert!(renderer.try_patch(&index, NODE, &failing).is_none());
}
