//! A peer cannot take this cluster's routes (issue: adversarial peers,
//! point 1). Routes are rendered by origin: a peer's prefix equal to a local
//! one, inside this cluster's pod CIDRs, or swallowing them (`0.0.0.0/0`)
//! is not installed, whatever the render order, in the full render and in
//! the incremental patch of an endpoint alike.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use knit_agent::incremental::IncrementalRender;
use knit_agent::index::MeshIndex;
use knit_agent::render::{RenderOptions, render};
use knit_kvstore::watch_store::WatchEvent;
use serde_json::json;

fn put(index: &mut MeshIndex, key: &str, value: serde_json::Value) {
    index.apply(&WatchEvent::Upsert {
        key: format!("knit/v1/{key}"),
        value: serde_json::to_vec(&value).unwrap(),
    });
}

fn node(cluster: &str, name: &str, ip: &str, cidrs: &[&str]) -> serde_json::Value {
    json!({"name": name, "cluster": cluster, "underlayIps": [ip], "podCIDRs": cidrs, "tunnelEndpoint": ip, "bootId": ""})
}

fn endpoint(cluster: &str, ip: &str, node: &str, identity: u32) -> serde_json::Value {
    json!({"cluster": cluster, "ip": ip, "node": node, "identity": identity, "namespace": "shop", "pod": "p"})
}

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

/// Cluster a (this one, under `clusters/a/`: 10.1.0.0/16, node a1 with 10.1.1.0/24 holding pod
/// 10.1.1.5) and peer `zz` (sorted after every honest peer) that announces
/// what it should not, next to honest peer `b`.
fn mesh() -> MeshIndex {
    let mut index = MeshIndex::new("a");
    put(
        &mut index,
        "clusters/a/config",
        json!({"name": "a", "id": 1, "podCIDRs": ["10.1.0.0/16"]}),
    );
    put(
        &mut index,
        "clusters/a/nodes/a1",
        node("a", "a1", "192.168.1.1", &["10.1.1.0/24"]),
    );
    put(
        &mut index,
        "clusters/a/nodes/a2",
        node("a", "a2", "192.168.1.2", &["10.1.2.0/24"]),
    );
    put(
        &mut index,
        "clusters/a/endpoints/10.1.1.5",
        endpoint("a", "10.1.1.5", "a1", 1001),
    );
    for peer in ["b", "zz"] {
        let id = if peer == "b" { 2 } else { 9 };
        put(
            &mut index,
            &format!("cache/{peer}/config"),
            json!({"name": peer, "id": id, "podCIDRs": []}),
        );
        put(&mut index, &format!("cache/{peer}/synced/endpoints"), json!(1));
        put(&mut index, &format!("cache/{peer}/synced/nodes"), json!(1));
    }
    put(
        &mut index,
        "cache/b/nodes/b1",
        node("b", "b1", "192.168.2.1", &["10.2.1.0/24"]),
    );
    put(
        &mut index,
        "cache/b/endpoints/10.2.1.9",
        endpoint("b", "10.2.1.9", "b1", 2001),
    );
    put(
        &mut index,
        "cache/zz/nodes/z1",
        node(
            "zz",
            "z1",
            "192.168.9.1",
            &[
                "10.1.1.0/24",
                "0.0.0.0/0",
                "10.1.7.0/24",
                "10.2.1.0/24",
                "10.9.0.0/16",
            ],
        ),
    );
    put(
        &mut index,
        "cache/zz/endpoints/10.1.1.5",
        endpoint("zz", "10.1.1.5", "z1", 6666),
    );
    put(
        &mut index,
        "cache/zz/endpoints/10.1.2.8",
        endpoint("zz", "10.1.2.8", "z1", 6666),
    );
    put(
        &mut index,
        "cache/zz/endpoints/10.9.0.3",
        endpoint("zz", "10.9.0.3", "z1", 9001),
    );
    index
}

#[test]
fn a_peer_never_replaces_or_shadows_a_local_route() {
    let index = mesh();
    let state = render(&index, &[], "a2", &[], &RenderOptions::default());
    let route = |s: &str| state.routes.get(&net(s)).map(|r| (r.identity, r.tunnel));
    let a1 = Some("192.168.1.1".parse::<Ipv4Addr>().unwrap());
    assert_eq!(
        route("10.1.1.0/24"),
        Some((0, a1)),
        "the local node's CIDR stays local"
    );
    assert_eq!(
        route("10.1.1.5/32"),
        Some((1001, a1)),
        "the local pod keeps its identity and node"
    );
    assert_eq!(
        route("10.1.2.8/32"),
        None,
        "no peer /32 inside the local pod CIDRs"
    );
    assert_eq!(
        route("10.1.7.0/24"),
        None,
        "no peer CIDR inside the local pod CIDRs"
    );
    assert_eq!(
        route("0.0.0.0/0"),
        None,
        "no peer CIDR around the local pod CIDRs"
    );
    let b1 = Some("192.168.2.1".parse::<Ipv4Addr>().unwrap());
    assert_eq!(
        route("10.2.1.0/24"),
        Some((0, b1)),
        "the first peer by name keeps its prefix"
    );
    assert_eq!(route("10.2.1.9/32"), Some((2001, b1)));
    let z1 = Some("192.168.9.1".parse::<Ipv4Addr>().unwrap());
    assert_eq!(
        route("10.9.0.0/16"),
        Some((0, z1)),
        "what the peer may announce still routes"
    );
    assert_eq!(route("10.9.0.3/32"), Some((9001, z1)));
}

#[test]
fn the_incremental_patch_keeps_the_same_precedence() {
    let mut index = mesh();
    let mut renderer = IncrementalRender::new();
    let first = renderer
        .render_full(&index, &[], "a2", &[], &RenderOptions::default())
        .clone();
    // The hostile peer re-announces the local pod's IP: an endpoint change,
    // patched alone.
    let change = index
        .apply_change(&WatchEvent::Upsert {
            key: "knit/v1/cache/zz/endpoints/10.1.1.5".into(),
            value: serde_json::to_vec(&endpoint("zz", "10.1.1.5", "z1", 7777)).unwrap(),
        })
        .expect("a change");
    renderer.note(&change);
    let patched = renderer.try_patch(&index, "a2", &RenderOptions::default());
    let full = render(&index, &[], "a2", &[], &RenderOptions::default());
    assert_eq!(full.routes, first.routes, "nothing the peer may change");
    if let Some(patch) = patched {
        assert!(
            patch.routes.iter().all(|(n, _)| *n != net("10.1.1.5/32")),
            "the patch writes no route for the local pod: {:?}",
            patch.routes
        );
    }
}
