//! A GlobalServicePolicy's `clusters` allow-list: only the named peers'
//! backends are imported (issue: adversarial peers, point 5). Before, the
//! list was parsed and never used, and every peer's backends were.

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

fn web(cluster: &str, backend: &str, allowed: Option<&[&str]>) -> serde_json::Value {
    let mut s = json!({
        "cluster": cluster, "namespace": "shop", "name": "web",
        "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
        "clusterIPs": ["10.96.0.10"],
        "backends": [{"ip": backend, "ports": {"http": 8080}, "ready": true}],
        "export": true, "import": true, "affinity": "none",
    });
    if let Some(allowed) = allowed {
        s["importClusters"] = json!(allowed);
    }
    s
}

fn backends(allowed: Option<&[&str]>) -> Vec<String> {
    let mut index = MeshIndex::new("a");
    put(
        &mut index,
        "local/services/shop/web",
        web("a", "10.1.1.5", allowed),
    );
    for (peer, id, ip) in [("b", 2, "10.2.1.5"), ("c", 3, "10.3.1.5")] {
        put(
            &mut index,
            &format!("cache/{peer}/config"),
            json!({"name": peer, "id": id, "podCIDRs": []}),
        );
        put(
            &mut index,
            &format!("cache/{peer}/services/shop/web"),
            web(peer, ip, None),
        );
        put(&mut index, &format!("cache/{peer}/synced/services"), json!(1));
    }
    let state = render(&index, &[], "a1", &[], &RenderOptions::default());
    let mut out: Vec<String> = state
        .services
        .values()
        .flatten()
        .map(|b| b.ip().to_string())
        .collect();
    out.sort();
    out
}

#[test]
fn only_the_allowed_peers_backends_are_imported() {
    assert_eq!(backends(None), ["10.1.1.5", "10.2.1.5", "10.3.1.5"]);
    assert_eq!(backends(Some(&["b"])), ["10.1.1.5", "10.2.1.5"]);
    assert_eq!(backends(Some(&["c"])), ["10.1.1.5", "10.3.1.5"]);
    assert_eq!(
        backends(Some(&[])),
        ["10.1.1.5"],
        "an empty list imports from no peer"
    );
}
