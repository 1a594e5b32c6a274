//! `make bench` part: what one change costs the agent, at 1,000 and
//! 100,000 services. The agent's own code, without the kernel: the change
//! applied to the index, the node's desired state rendered, turned into map
//! entries and diffed against the previous ones (what the writer then
//! writes). Prints p50 / p99 of that time and the map entries one change
//! writes, per change kind, against the target: O(1) in both.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use knit_agent::datapath::state::{MapContents, diff, to_map_contents};
use knit_agent::index::MeshIndex;
use knit_agent::render::{RenderOptions, render};
use knit_kvstore::watch_store::WatchEvent;

fn put(index: &mut MeshIndex, key: &str, value: &serde_json::Value) {
    index.apply(&WatchEvent::Upsert {
        key: format!("knit/v1/{key}"),
        value: serde_json::to_vec(value).expect("json"),
    });
}

fn ip(base: [u8; 2], i: usize) -> String {
    format!(
        "{}.{}.{}.{}",
        base[0],
        base[1] as usize + i / 65536,
        (i / 256) % 256,
        i % 256
    )
}

/// Service `i` with one ready backend at `backend`.
fn service(i: usize, backend: &str) -> serde_json::Value {
    serde_json::json!({
        "cluster": "a", "namespace": "shop", "name": format!("svc-{i}"),
        "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
        "clusterIPs": [ip([10, 96], i)],
        "backends": [{"ip": backend, "ports": {"http": 8080}, "ready": true}],
        "export": true, "import": true, "affinity": "none", "withdrawn": false,
    })
}

fn endpoint(i: usize) -> serde_json::Value {
    serde_json::json!({
        "ip": ip([10, 64], i), "cluster": "a", "identity": 70000,
        "node": "a-node2", "namespace": "shop", "pod": format!("p-{i}"),
    })
}

/// The node's map entries for the index as it is.
fn contents(index: &MeshIndex, previous: &MapContents) -> MapContents {
    let state = render(index, &[], "a-node1", &[], &RenderOptions::default());
    to_map_contents(&state, &HashMap::new(), &previous.services).0
}

fn changed<K: Eq + std::hash::Hash + Clone, V: PartialEq + Clone>(
    old: &HashMap<K, V>,
    new: &HashMap<K, V>,
) -> usize {
    let d = diff(old, new);
    d.upserts.len() + d.removes.len()
}

/// Map entries the writer would write or delete going from `old` to `new`.
fn writes(old: &MapContents, new: &MapContents) -> usize {
    changed(&old.ipcache, &new.ipcache)
        + changed(&old.endpoints, &new.endpoints)
        + changed(&old.policy, &new.policy)
        + changed(&old.policy_cidr, &new.policy_cidr)
        + changed(&old.services, &new.services)
        + changed(&old.backends, &new.backends)
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

fn main() {
    println!("\n## knit-agent: one change, index to map entries (no kernel)\n");
    println!("| services | change | p50 | p99 | map entries written | target |");
    println!("|---:|---|---:|---:|---:|---|");
    let mut p50s: HashMap<(usize, &str), Duration> = HashMap::new();
    for (n, changes) in [(1_000usize, 200usize), (100_000, 20)] {
        eprintln!("agent change bench: {n} services, {changes} changes of each kind");
        let mut index = MeshIndex::new("a");
        put(
            &mut index,
            "clusters/a/config",
            &serde_json::json!({"name": "a", "id": 1, "podCIDRs": ["10.64.0.0/10"]}),
        );
        put(
            &mut index,
            "clusters/a/nodes/a-node2",
            &serde_json::json!({"name": "a-node2", "cluster": "a", "underlayIps": ["192.168.50.12"],
                "podCIDRs": ["10.64.0.0/10"], "tunnelEndpoint": "192.168.50.12"}),
        );
        for i in 0..n {
            put(
                &mut index,
                &format!("local/services/shop/svc-{i}"),
                &service(i, &ip([10, 64], i)),
            );
        }
        let mut maps = contents(&index, &MapContents::default());
        for kind in ["a service's backend moves", "a pod appears"] {
            let mut times = Vec::new();
            let mut written = Vec::new();
            for c in 0..changes {
                let t = Instant::now();
                match kind {
                    "a pod appears" => put(
                        &mut index,
                        &format!("clusters/a/endpoints/{}", ip([10, 64], c)),
                        &endpoint(c),
                    ),
                    _ => put(
                        &mut index,
                        &format!("local/services/shop/svc-{c}"),
                        &service(c, &ip([10, 65], c)),
                    ),
                }
                let next = contents(&index, &maps);
                written.push(writes(&maps, &next));
                times.push(t.elapsed());
                maps = next;
            }
            times.sort();
            written.sort_unstable();
            p50s.insert((n, kind), percentile(&times, 0.5));
            println!(
                "| {n} | {kind} | {:.2} ms | {:.2} ms | {} | O(1): flat from 1,000 to 100,000 |",
                percentile(&times, 0.5).as_secs_f64() * 1e3,
                percentile(&times, 0.99).as_secs_f64() * 1e3,
                written[written.len() / 2]
            );
        }
    }
    for kind in ["a service's backend moves", "a pod appears"] {
        let ratio = p50s[&(100_000, kind)].as_secs_f64() / p50s[&(1_000, kind)].as_secs_f64();
        println!(
            "{kind}: p50 at 100,000 / at 1,000 services = {ratio:.0}x (O(1) render: about 1x; map writes are O(1))"
        );
    }
}
