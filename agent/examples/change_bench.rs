//! `make bench` part: what one change costs the agent, at 1,000 and
//! 100,000 services. The agent's own code, without the kernel: the change
//! applied to the index, then either patched ([`IncrementalRender`], what
//! the agent does for endpoint and service records) or the whole node
//! rendered again, turned into map entries and diffed (what the agent does
//! for anything else). Prints p50 / p99 of each and the map entries one
//! change writes, per change kind, against the target: O(1) in both.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use knit_agent::datapath::patch::{ServiceIds, patch_entries};
use knit_agent::datapath::state::{MapContents, MapDiffs, to_map_contents};
use knit_agent::incremental::IncrementalRender;
use knit_agent::index::MeshIndex;
use knit_agent::render::{RenderOptions, render};
use knit_kvstore::watch_store::WatchEvent;
use knit_testkit::bench::percentile;

fn put(
    index: &mut MeshIndex,
    key: &str,
    value: &serde_json::Value,
) -> Option<knit_agent::index::IndexChange> {
    index.apply_change(&WatchEvent::Upsert {
        key: format!("knit/v1/{key}"),
        value: serde_json::to_vec(value).expect("json"),
    })
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

/// The index at `n` services, each with one backend, and the node's maps.
fn mesh(n: usize) -> MeshIndex {
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
    put(
        &mut index,
        "clusters/a/endpoints/10.127.0.1",
        &serde_json::json!({"ip": "10.127.0.1", "cluster": "a", "identity": 70000,
            "node": "a-node2", "namespace": "shop", "pod": "first"}),
    );
    for i in 0..n {
        put(
            &mut index,
            &format!("local/services/shop/svc-{i}"),
            &service(i, &ip([10, 64], i)),
        );
    }
    index
}

/// Change `c` of `kind` in a mesh of `n` services.
fn change(index: &mut MeshIndex, n: usize, kind: &str, c: usize) -> Option<knit_agent::index::IndexChange> {
    match kind {
        "a pod appears" => put(
            index,
            &format!("clusters/a/endpoints/{}", ip([10, 64], c)),
            &endpoint(c),
        ),
        _ => put(
            index,
            &format!("local/services/shop/svc-{}", c % n),
            &service(c % n, &ip([10, 65], c)),
        ),
    }
}

struct Figures {
    p50: Duration,
    p99: Duration,
    written: usize,
}

fn figures(mut times: Vec<Duration>, mut written: Vec<usize>) -> Figures {
    times.sort();
    written.sort_unstable();
    Figures {
        p50: percentile(&times, 0.5),
        p99: percentile(&times, 0.99),
        written: written[written.len() / 2],
    }
}

/// The agent's path for endpoint and service records: patch, then its
/// entries.
fn patched(n: usize, kind: &str, changes: usize) -> Figures {
    let mut index = mesh(n);
    let options = RenderOptions::default();
    let mut renderer = IncrementalRender::new();
    let state = renderer.render_full(&index, &[], "a-node1", &[], &options);
    let mut maps = to_map_contents(state, &HashMap::new(), &HashMap::new()).0;
    let mut ids = ServiceIds::of(&maps.services);
    let (mut times, mut written) = (Vec::new(), Vec::new());
    for c in 0..changes {
        let t = Instant::now();
        if let Some(change) = change(&mut index, n, kind, c) {
            renderer.note(&change);
        }
        let patch = renderer
            .try_patch(&index, "a-node1", &options)
            .expect("endpoint and service records patch");
        let diffs = patch_entries(&patch, &maps, &mut ids);
        times.push(t.elapsed());
        written.push(diffs.len());
        maps.apply(&diffs);
    }
    figures(times, written)
}

/// The full render, which every other kind of change still takes.
fn rendered(n: usize, kind: &str, changes: usize) -> Figures {
    let mut index = mesh(n);
    let mut maps = contents(&index, &MapContents::default());
    let (mut times, mut written) = (Vec::new(), Vec::new());
    for c in 0..changes {
        let t = Instant::now();
        change(&mut index, n, kind, c);
        let next = contents(&index, &maps);
        written.push(MapDiffs::between(&maps, &next).len());
        times.push(t.elapsed());
        maps = next;
    }
    figures(times, written)
}

fn main() {
    println!("\n## knit-agent: one change, index to map entries (no kernel)\n");
    println!("| services | change | path | p50 | p99 | map entries written | target |");
    println!("|---:|---|---|---:|---:|---:|---|");
    let kinds = ["a service's backend moves", "a pod appears"];
    let mut p50s: HashMap<(usize, &str, &str), Duration> = HashMap::new();
    for (n, changes, full_changes) in [(1_000usize, 2_000usize, 200usize), (100_000, 2_000, 20)] {
        eprintln!("agent change bench: {n} services");
        for kind in kinds {
            for (path, f) in [
                ("patch (records)", patched(n, kind, changes)),
                ("full render (other changes)", rendered(n, kind, full_changes)),
            ] {
                p50s.insert((n, kind, path), f.p50);
                let target = if path.starts_with("patch") {
                    "O(1): flat from 1,000 to 100,000"
                } else {
                    "(for comparison)"
                };
                println!(
                    "| {n} | {kind} | {path} | {:.3} ms | {:.3} ms | {} | {target} |",
                    f.p50.as_secs_f64() * 1e3,
                    f.p99.as_secs_f64() * 1e3,
                    f.written
                );
            }
        }
    }
    for kind in kinds {
        for path in ["patch (records)", "full render (other changes)"] {
            let ratio = p50s[&(100_000, kind, path)].as_secs_f64() / p50s[&(1_000, kind, path)].as_secs_f64();
            let verdict = if !path.starts_with("patch") {
                ""
            } else if ratio <= 2.0 {
                " (target O(1), met)"
            } else {
                " (target O(1), not met)"
            };
            println!("{kind}, {path}: p50 at 100,000 / at 1,000 services = {ratio:.1}x{verdict}");
        }
    }
}
