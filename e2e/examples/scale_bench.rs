//! `make bench` part: a mesh of 511 clusters, simulated as Cilium's
//! cmapisrv-mock does. Cluster-a (ID 1) of the local mesh is real: its
//! etcd, apiserver (KVStoreMesh) and one node's agent with its BPF maps.
//! Cluster-b (ID 2) is real too, and its etcd also serves 509 simulated
//! clusters (IDs 3 to 511), each with 100 nodes, 1,000 endpoints, 10
//! identities and 10 services, written straight into `clusters/<name>/` as
//! their exporters would. Cluster-a gets one peer config per simulated
//! cluster, all reaching cluster-b's etcd (the fronts are not part of the
//! simulation), and its KVStoreMesh and agent consume them all.
//!
//! Printed: the initial sync of 510 peers into cluster-a's etcd and into
//! its agent's maps, the apiserver's and the agent's resident memory, the
//! propagation p50/p99 of endpoint changes at random simulated clusters
//! into cluster-a's cache, and the checks that cluster ID 511 is mirrored
//! and programmed and that no two clusters' identities collide.
//!
//! The simulated nodes' tunnel endpoint is cluster-b's node, so the agent's
//! health probes stay on the mesh's own underlay. Etcd work runs in a
//! helper (this binary again) inside cluster-b's control-plane namespace,
//! which reaches both etcds on the underlay. `KNIT_BENCH_SIM_CLUSTERS` sets
//! the number of simulated clusters (default 509).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use etcd_client::{Client, EventType, GetOptions, Txn, TxnOp, WatchOptions};
use knit_e2e::mesh::{ClusterId, LocalMesh, MeshOptions};
use knit_kvstore::keys::{Kind, RelativeKey, cache_prefix, cluster_prefix};
use knit_kvstore::records::identity;
use knit_kvstore::{EtcdClientConfig, PeerIdentity};
use knit_testkit::bench::{churn_rates, percentile, rss_kib};

const A: ClusterId = ClusterId(0);
const B: ClusterId = ClusterId(1);
const NODES: u32 = 100;
const ENDPOINTS: u32 = 1_000;
const IDENTITIES: u32 = 10;
const SERVICES: u32 = 10;
const FIRST_SIM_ID: u16 = 3;

fn sim_name(id: u16) -> String {
    format!("sim-{id:03}")
}

/// Simulated cluster `id`'s pod CIDR: a /20 in 10.128.0.0/9.
fn sim_base(id: u16) -> u32 {
    u32::from(Ipv4Addr::new(10, 128, 0, 0)) + u32::from(id) * 4096
}

fn sim_cidr(id: u16) -> String {
    format!("{}/20", Ipv4Addr::from(sim_base(id)))
}

/// Endpoint `k` of cluster `id`: on node `k % 100`, whose pod CIDR is the
/// `/28` at `base + node * 16`.
fn sim_ip(id: u16, k: u32) -> Ipv4Addr {
    Ipv4Addr::from(sim_base(id) + (k % NODES) * 16 + k / NODES)
}

fn unix_ms() -> u128 {
    (knit_testkit::unix_seconds() * 1e3) as u128
}

/// Every record of simulated cluster `id`, keys under its prefix.
fn sim_records(id: u16, tunnel: &str) -> Vec<(String, String)> {
    let name = sim_name(id);
    let prefix = cluster_prefix(&name);
    let mut out = Vec::new();
    let mut put =
        |key: RelativeKey, value: serde_json::Value| out.push((key.under(&prefix), value.to_string()));
    put(
        RelativeKey::Config,
        serde_json::json!({"name": name, "id": id, "podCIDRs": [sim_cidr(id)]}),
    );
    for n in 0..NODES {
        let node = format!("{name}-node{n}");
        put(
            RelativeKey::Record(Kind::Nodes, node.clone()),
            serde_json::json!({"name": node, "cluster": name, "underlayIps": [tunnel],
                "podCIDRs": [format!("{}/28", Ipv4Addr::from(sim_base(id) + n * 16))], "tunnelEndpoint": tunnel}),
        );
    }
    for i in 1..=IDENTITIES {
        let id_num = identity(id, i);
        put(
            RelativeKey::Record(Kind::Identities, id_num.to_string()),
            serde_json::json!({"id": id_num, "cluster": name,
                "labels": {"knit.dev/cluster": name, "app": format!("app-{i}"), "io.kubernetes.pod.namespace": "bench"}}),
        );
    }
    for k in 0..ENDPOINTS {
        let ip = sim_ip(id, k).to_string();
        put(
            RelativeKey::Record(Kind::Endpoints, ip.clone()),
            serde_json::json!({"ip": ip, "cluster": name, "identity": identity(id, 1 + k % IDENTITIES),
                "node": format!("{name}-node{}", k % NODES), "namespace": "bench", "pod": format!("p{k}")}),
        );
    }
    for s in 0..SERVICES {
        let backends: Vec<serde_json::Value> = (0..10)
            .map(|b| serde_json::json!({"ip": sim_ip(id, s * 10 + b).to_string(), "ports": {"http": 8080}, "ready": true}))
            .collect();
        put(
            RelativeKey::Record(Kind::Services, format!("bench/s{s}")),
            serde_json::json!({"cluster": name, "namespace": "bench", "name": format!("s{s}"),
                "ports": [{"name": "http", "port": 80, "protocol": "TCP"}], "backends": backends,
                "export": true, "import": false, "affinity": "none"}),
        );
    }
    for kind in Kind::ALL {
        put(RelativeKey::Synced(kind), serde_json::json!(1));
    }
    out
}

async fn put_all(client: &Client, records: Vec<(String, String)>) {
    let chunks: Vec<Vec<(String, String)>> = records.chunks(100).map(<[_]>::to_vec).collect();
    let mut in_flight = tokio::task::JoinSet::new();
    for chunk in chunks {
        if in_flight.len() >= 8 {
            in_flight.join_next().await;
        }
        let mut c = client.clone();
        in_flight.spawn(async move {
            let ops: Vec<TxnOp> = chunk.into_iter().map(|(k, v)| TxnOp::put(k, v, None)).collect();
            c.txn(Txn::new().and_then(ops))
                .await
                .expect("writing simulated records");
        });
    }
    while in_flight.join_next().await.is_some() {}
}

/// The helper's phases, run inside cluster-b's control-plane namespace.
async fn helper(args: &[String]) {
    let config = |p: &str| knit_kvstore::etcd::load_client_config(Path::new(p)).expect("client config");
    match args[0].as_str() {
        // generate <b-admin-config> <sims> <tunnel>
        "generate" => {
            let b = knit_kvstore::etcd::connect(&config(&args[1]))
                .await
                .expect("b's etcd");
            let sims: u16 = args[2].parse().expect("sims");
            for id in FIRST_SIM_ID..FIRST_SIM_ID + sims {
                put_all(&b, sim_records(id, &args[3])).await;
            }
        }
        // sync <a-admin-config> <a-peer-configs-dir> <b-local-config> <sims>
        "sync" => {
            let a = knit_kvstore::etcd::connect(&config(&args[1]))
                .await
                .expect("a's etcd");
            let sims: u16 = args[4].parse().expect("sims");
            let mut watch = a
                .clone()
                .watch("knit/v1/cache/", Some(WatchOptions::new().with_prefix()))
                .await
                .expect("watch a's cache");
            let t0 = unix_ms();
            write_peer_configs(Path::new(&args[2]), Path::new(&args[3]), sims);
            let start = Instant::now();
            let mut canaries = BTreeSet::new();
            let want = usize::from(sims) * Kind::ALL.len();
            while canaries.len() < want {
                let resp = tokio::time::timeout(Duration::from_secs(300), watch.message())
                    .await
                    .expect("cluster-a mirrored every simulated cluster within 5 minutes")
                    .expect("watch")
                    .expect("watch open");
                for ev in resp.events() {
                    if let Some(kv) = ev.kv()
                        && ev.event_type() == EventType::Put
                        && let Ok(key) = kv.key_str()
                        && key.contains("/synced/")
                        && key.contains("/sim-")
                    {
                        canaries.insert(key.to_owned());
                    }
                }
            }
            println!(
                "{}",
                serde_json::json!({"t0_unix_ms": t0, "sync_s": start.elapsed().as_secs_f64()})
            );
        }
        // churn <a-admin-config> <b-admin-config> <sims> <rate> <updates>
        "churn" => {
            let a = knit_kvstore::etcd::connect(&config(&args[1]))
                .await
                .expect("a's etcd");
            let b = knit_kvstore::etcd::connect(&config(&args[2]))
                .await
                .expect("b's etcd");
            let sims: u16 = args[3].parse().expect("sims");
            let rate: f64 = args[4].parse().expect("rate");
            let updates: u32 = args[5].parse().expect("updates");
            println!("{}", serde_json::json!(churn(&a, &b, sims, rate, updates).await));
        }
        // check <a-admin-config> <sims>
        "check" => {
            let a = knit_kvstore::etcd::connect(&config(&args[1]))
                .await
                .expect("a's etcd");
            let sims: u16 = args[2].parse().expect("sims");
            println!("{}", serde_json::json!(check(&a, sims).await));
        }
        other => panic!("unknown helper phase {other}"),
    }
}

/// One peer config per simulated cluster, reaching cluster-b's etcd with
/// its read-only `local` certificate (copied beside the configs).
fn write_peer_configs(dir: &Path, b_local: &Path, sims: u16) {
    let local = EtcdClientConfig::from_yaml(&std::fs::read_to_string(b_local).expect("b's local config"))
        .expect("b's local config")
        .resolved_in(b_local.parent().expect("config dir"));
    for (file, from) in [
        ("sim-ca.crt", &local.trusted_ca_file),
        ("sim.crt", &local.cert_file),
        ("sim.key", &local.key_file),
    ] {
        std::fs::copy(from, dir.join(file)).expect("copying b's local certificate");
    }
    for id in FIRST_SIM_ID..FIRST_SIM_ID + sims {
        let config = EtcdClientConfig {
            endpoints: local.endpoints.clone(),
            trusted_ca_file: PathBuf::from("sim-ca.crt"),
            cert_file: PathBuf::from("sim.crt"),
            key_file: PathBuf::from("sim.key"),
            peer: Some(PeerIdentity {
                cluster_name: sim_name(id),
                cluster_id: id,
                pod_cidrs: vec![sim_cidr(id)],
                limits: knit_kvstore::PeerLimits::default(),
            }),
        };
        let yaml = config.to_yaml().expect("peer config");
        std::fs::write(dir.join(format!("{}.yaml", sim_name(id))), yaml).expect("peer config");
    }
}

/// Endpoint updates at random simulated clusters (new identity each time)
/// at `rate` per second; the time until each reaches cluster-a's cache.
async fn churn(a: &Client, b: &Client, sims: u16, rate: f64, updates: u32) -> serde_json::Value {
    let mut watch = a
        .clone()
        .watch("knit/v1/cache/", Some(WatchOptions::new().with_prefix()))
        .await
        .expect("watch a's cache");
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<(String, Vec<u8>, Instant)>();
    tokio::spawn(async move {
        while let Ok(Some(resp)) = watch.message().await {
            for ev in resp.events() {
                if ev.event_type() == EventType::Put
                    && let Some(kv) = ev.kv()
                {
                    let _ = seen_tx.send((
                        kv.key_str().unwrap_or_default().to_owned(),
                        kv.value().to_vec(),
                        Instant::now(),
                    ));
                }
            }
        }
    });
    let mut sent: BTreeMap<(String, Vec<u8>), Instant> = BTreeMap::new();
    let start = Instant::now();
    // Values unique to this run: an earlier run's writes are not changes.
    let mut state = 0x2545_f491_u64 ^ rate.to_bits();
    for i in 0..updates {
        tokio::time::sleep_until((start + Duration::from_secs_f64(f64::from(i) / rate)).into()).await;
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let id = FIRST_SIM_ID + (state % u64::from(sims)) as u16;
        let k = ((state >> 16) % u64::from(ENDPOINTS)) as u32;
        let name = sim_name(id);
        let ip = sim_ip(id, k).to_string();
        let value = serde_json::json!({"ip": ip, "cluster": name, "identity": identity(id, 1 + (k + i + 1) % IDENTITIES),
            "node": format!("{name}-node{}", k % NODES), "namespace": "bench", "pod": format!("p{k}-{rate}-{i}")})
        .to_string();
        let key = RelativeKey::Record(Kind::Endpoints, ip.clone()).under(&cluster_prefix(&name));
        let mirrored = RelativeKey::Record(Kind::Endpoints, ip).under(&cache_prefix(&name));
        sent.insert((mirrored, value.clone().into_bytes()), Instant::now());
        b.clone().put(key, value, None).await.expect("churn write");
    }
    let mut latencies = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while latencies.len() < updates as usize && Instant::now() < deadline {
        if let Ok(Some((key, value, at))) = tokio::time::timeout(Duration::from_secs(1), seen_rx.recv()).await
            && let Some(t0) = sent.remove(&(key, value))
        {
            latencies.push(at - t0);
        }
    }
    latencies.sort();
    serde_json::json!({
        "seen": latencies.len(),
        "p50_ms": percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        "p99_ms": percentile(&latencies, 0.99).as_secs_f64() * 1e3,
    })
}

/// Cluster ID 511's records are mirrored, and identities are unique across
/// clusters and inside each one's range.
async fn check(a: &Client, sims: u16) -> serde_json::Value {
    let last = sim_name(FIRST_SIM_ID + sims - 1);
    let mut c = a.clone();
    let endpoints_511 = c
        .get(
            format!("{}endpoints/", cache_prefix(&last)),
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .expect("count")
        .count();
    let clusters: Vec<(String, u32)> = std::iter::once(("cluster-b".to_owned(), 2))
        .chain((FIRST_SIM_ID..FIRST_SIM_ID + sims).map(|id| (sim_name(id), u32::from(id))))
        .collect();
    let mut seen: BTreeMap<u32, String> = BTreeMap::new();
    let (mut total, mut collisions, mut out_of_range) = (0, 0, 0);
    for (cluster, expected) in &clusters {
        let keys = c
            .get(
                format!("{}identities/", cache_prefix(cluster)),
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await
            .expect("identity keys");
        for kv in keys.kvs() {
            let Some(id) = kv
                .key_str()
                .unwrap_or_default()
                .rsplit('/')
                .next()
                .and_then(|id| id.parse::<u32>().ok())
            else {
                continue;
            };
            total += 1;
            out_of_range += usize::from(knit_kvstore::records::identity_cluster(id) != *expected);
            if seen.insert(id, cluster.clone()).is_some() {
                collisions += 1;
            }
        }
    }
    serde_json::json!({"last": last, "endpoints_of_last": endpoints_511, "identities": total,
        "collisions": collisions, "out_of_range": out_of_range})
}

fn run_helper(mesh: &LocalMesh, args: &[String]) -> serde_json::Value {
    let exe = std::env::current_exe().expect("current exe");
    let out = Command::new("ip")
        .args(["netns", "exec", mesh.cluster(B).cp.name()])
        .arg(exe)
        .arg("--helper")
        .args(args)
        .output()
        .expect("helper");
    assert!(
        out.status.success(),
        "helper {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// The client config at `path` (one of cluster `c`'s) with `c`'s etcd at
/// its underlay address, written beside it as `underlay-<file>`.
fn on_underlay(mesh: &LocalMesh, c: ClusterId, path: &Path) -> String {
    let mut config = EtcdClientConfig::from_yaml(&std::fs::read_to_string(path).expect("client config"))
        .expect("client config")
        .resolved_in(path.parent().expect("dir"));
    config.endpoints = vec![mesh.etcd_url(c)];
    let name = path.file_name().expect("file name").to_string_lossy();
    let out = path.with_file_name(format!("underlay-{name}"));
    std::fs::write(&out, config.to_yaml().expect("yaml")).expect("write config");
    out.display().to_string()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--helper") {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(helper(&args[1..]));
        return;
    }
    let sims: u16 = std::env::var("KNIT_BENCH_SIM_CLUSTERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(509)
        .clamp(1, 509);
    eprintln!("scale bench: a 2-cluster local mesh, then {sims} simulated clusters in cluster-b's etcd");
    let mesh = LocalMesh::start(MeshOptions {
        clusters: 2,
        nodes: 1,
        // Production's lease TTL: the harness's 10 s lapses while one etcd
        // on two cores takes 570,000 mirrored writes.
        lease_ttl_secs: 30,
        ..MeshOptions::default()
    });
    let a_admin = on_underlay(&mesh, A, &mesh.cluster(A).control.admin_config_path());
    let b_admin = on_underlay(&mesh, B, &mesh.cluster(B).control.admin_config_path());
    let b_local_underlay = on_underlay(&mesh, B, &mesh.cluster(B).control.local_config_path());
    let tunnel = mesh.node(B.node(0)).ip.clone();
    let generate = Instant::now();
    run_helper(
        &mesh,
        &["generate".into(), b_admin.clone(), sims.to_string(), tunnel],
    );
    eprintln!(
        "scale bench: {} records written in {:.1} s; cluster-a now peers with all of them",
        u32::from(sims) * (1 + NODES + IDENTITIES + ENDPOINTS + SERVICES + 4),
        generate.elapsed().as_secs_f64()
    );

    let agent = A.node(0);
    let apiserver_before = mesh
        .cluster(A)
        .control
        .apiserver_pid()
        .map(rss_kib)
        .unwrap_or_default();
    let agent_pid = mesh.agent_pid(agent).expect("cluster-a's agent runs");
    let agent_before = rss_kib(agent_pid);
    let sync = run_helper(
        &mesh,
        &[
            "sync".into(),
            a_admin.clone(),
            mesh.cluster(A).control.peer_configs().display().to_string(),
            b_local_underlay.clone(),
            sims.to_string(),
        ],
    );
    let t0 = sync["t0_unix_ms"].as_u64().unwrap_or_default() as u128;
    let want_routes = i64::from(sims) * i64::from(ENDPOINTS + NODES);
    let ipcache = || mesh.agent_metric(agent, "knit_agent_map_entries{name=\"ipcache\"}");
    mesh.wait_until(
        "cluster-a's agent to program every simulated cluster",
        Duration::from_secs(600),
        || ipcache() >= want_routes,
    );
    let agent_s = (unix_ms() - t0) as f64 / 1e3;
    std::thread::sleep(Duration::from_secs(2));
    let apiserver_after = mesh
        .cluster(A)
        .control
        .apiserver_pid()
        .map(rss_kib)
        .unwrap_or_default();
    let agent_after = rss_kib(agent_pid);

    let rates = churn_rates();
    let mut churn = Vec::new();
    for rate in rates {
        eprintln!("scale bench: endpoint churn at {rate} updates/s across the simulated clusters");
        let r = run_helper(
            &mesh,
            &[
                "churn".into(),
                a_admin.clone(),
                b_admin.clone(),
                sims.to_string(),
                rate.to_string(),
                "2000".into(),
            ],
        );
        churn.push((rate, r));
    }
    let check = run_helper(&mesh, &["check".into(), a_admin.clone(), sims.to_string()]);
    let endpoints = f64::from(u32::from(sims) * ENDPOINTS);
    let per = |before: u64, after: u64| after.saturating_sub(before) as f64 * 1024.0 / endpoints;

    println!(
        "\n## {} clusters: cluster-a (ID 1) and cluster-b (ID 2) real, IDs {FIRST_SIM_ID}–{} simulated in cluster-b's etcd ({} endpoints, {} nodes)\n",
        u32::from(sims) + 2,
        FIRST_SIM_ID + sims - 1,
        u32::from(sims) * ENDPOINTS,
        u32::from(sims) * NODES
    );
    println!("| measure | figure |");
    println!("|---|---:|");
    println!(
        "| initial sync of {sims} simulated peers into cluster-a's etcd (KVStoreMesh) | {:.1} s |",
        sync["sync_s"].as_f64().unwrap_or_default()
    );
    println!("| … and into cluster-a's agent's maps ({want_routes}+ ipcache entries) | {agent_s:.1} s |");
    println!(
        "| cluster-a apiserver resident memory, before → after | {:.0} → {:.0} MiB ({:.0} B per endpoint) |",
        apiserver_before as f64 / 1024.0,
        apiserver_after as f64 / 1024.0,
        per(apiserver_before, apiserver_after)
    );
    println!(
        "| cluster-a agent resident memory, before → after | {:.0} → {:.0} MiB ({:.0} B per endpoint) |",
        agent_before as f64 / 1024.0,
        agent_after as f64 / 1024.0,
        per(agent_before, agent_after)
    );
    for (rate, r) in &churn {
        println!(
            "| propagation into cluster-a's cache at {rate} updates/s, p50 / p99 ({} of 2000 seen) | {:.1} / {:.1} ms |",
            r["seen"],
            r["p50_ms"].as_f64().unwrap_or_default(),
            r["p99_ms"].as_f64().unwrap_or_default()
        );
    }
    println!(
        "| cluster ID {} ({}): endpoints mirrored into cluster-a | {} of {ENDPOINTS} |",
        FIRST_SIM_ID + sims - 1,
        check["last"].as_str().unwrap_or_default(),
        check["endpoints_of_last"]
    );
    println!(
        "| identities mirrored / colliding / outside their cluster's range | {} / {} / {} |",
        check["identities"], check["collisions"], check["out_of_range"]
    );
    assert_eq!(check["collisions"], 0, "identities collide: {check}");
    assert_eq!(
        check["out_of_range"], 0,
        "identities outside their range: {check}"
    );
}
