//! `make bench` (the peer front under attack), against real etcd and the
//! real binary: three clusters on loopback, a, b and c. Cluster a's
//! changes propagate to b (through a's peer front and b's KVStoreMesh) and
//! to a's own agents (a watch on a's etcd), under churn, measured twice:
//!
//! 1. with no attacker;
//! 2. while c, an authenticated peer turned hostile, opens watch streams on
//!    every connection the front lets it have and floods it with reads,
//!    and a host opens 1,000 TCP connections to a's front and never starts
//!    TLS (a slowloris).
//!
//! Prints the p99 of both propagations in both runs and their ratio,
//! against the target: under attack within 2× of the quiet figure.
//! KNIT_BENCH_SOAK_RATE sets the churn (updates/s, default 200);
//! KNIT_BENCH_FRONT_ARGS adds apiserver flags (other front limits).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use etcd_client::{EventType, GetOptions, WatchOptions};
use knit_kvstore::keys::{cache_prefix, cluster_prefix};
use knit_testkit::TestCluster;
use knit_testkit::bench::{apiserver_bin, percentile};
use knit_testkit::cluster::{connect_retrying, full_mesh};
use knit_testkit::manifests::{node, pod};

/// Watches `prefix` on `client`; sends each put key and when it was seen.
async fn watch_puts(
    client: &etcd_client::Client,
    prefix: String,
) -> tokio::sync::mpsc::UnboundedReceiver<(String, Instant)> {
    let mut watch = client
        .clone()
        .watch(prefix.as_str(), Some(WatchOptions::new().with_prefix()))
        .await
        .expect("watch");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(resp)) = watch.message().await {
            for ev in resp.events() {
                if ev.event_type() == EventType::Put
                    && let Some(kv) = ev.kv()
                {
                    let _ = tx.send((kv.key_str().unwrap_or_default().to_owned(), Instant::now()));
                }
            }
        }
    });
    rx
}

/// p99 of two propagations of `updates` new pods written into a's source
/// at `rate`: into b's mirror, and into a's own etcd (what a's agents
/// watch). `round` keeps the pod names of each run apart; the pods are
/// removed again before it returns, so every run starts from the same
/// records (the export's work grows with them: a run on top of the last
/// one's pods measured that growth, not the attacker).
async fn propagation(
    a: &TestCluster,
    b: &etcd_client::Client,
    rate: f64,
    round: usize,
) -> (Duration, Duration) {
    let updates = 3000;
    let local = a.admin().await;
    let to_b = format!("{}endpoints/", cache_prefix("a"));
    let to_a = format!("{}endpoints/", cluster_prefix("a"));
    let mut seen_b = watch_puts(b, to_b.clone()).await;
    let mut seen_a = watch_puts(&local, to_a.clone()).await;
    let mut sent: BTreeMap<String, Instant> = BTreeMap::new();
    let start = Instant::now();
    for i in 0..updates {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let ip = format!("10.1.{}.{}", 20 + round * 16 + i / 250, 1 + i % 250);
        a.write_source(
            &format!("soak-{round}-{i}.yaml"),
            &pod("bench", &format!("soak-{round}-{i}"), "a-n1", &ip, "soak"),
        );
        sent.insert(ip, Instant::now());
    }
    let collect = |rx: &mut tokio::sync::mpsc::UnboundedReceiver<(String, Instant)>, prefix: &str| {
        let mut out = Vec::new();
        while let Ok((key, at)) = rx.try_recv() {
            if let Some(t0) = key.strip_prefix(prefix).and_then(|ip| sent.get(ip)) {
                out.push(at - *t0);
            }
        }
        out
    };
    tokio::time::sleep(Duration::from_secs(10)).await;
    let mut via_front = collect(&mut seen_b, &to_b);
    let mut local_watch = collect(&mut seen_a, &to_a);
    // Both runs start from the same records: this one's pods go again.
    for i in 0..updates {
        a.remove_source(&format!("soak-{round}-{i}.yaml"));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    for (client, prefix) in [(&local, &to_a), (b, &to_b)] {
        let count_only = || GetOptions::new().with_prefix().with_count_only();
        while client
            .clone()
            .get(prefix.as_str(), Some(count_only()))
            .await
            .map(|r| r.count() > 0)
            .unwrap_or(true)
        {
            assert!(
                Instant::now() < deadline,
                "the soak pods were not removed from {prefix}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    via_front.sort();
    local_watch.sort();
    eprintln!(
        "  seen: {} of {updates} through the front, {} of {updates} locally",
        via_front.len(),
        local_watch.len()
    );
    (percentile(&via_front, 0.99), percentile(&local_watch, 0.99))
}

/// The attack on a's front until `stop`: the slowloris' sockets, and c's
/// streams and reads. Returns counters of what c got through.
fn attack(
    a: &TestCluster,
    c: &TestCluster,
    stop: Arc<AtomicBool>,
) -> (Arc<AtomicU64>, Arc<AtomicU64>, Arc<AtomicU64>) {
    let front: std::net::SocketAddr = format!("127.0.0.1:{}", a.front_port).parse().unwrap();
    let slowloris_stop = stop.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        for _ in 0..1000 {
            let Ok(socket) = tokio::net::TcpSocket::new_v4() else {
                break;
            };
            if socket.bind("127.0.0.2:0".parse().unwrap()).is_err() {
                break;
            }
            if let Ok(stream) = socket.connect(front).await {
                held.push(stream);
            }
        }
        while !slowloris_stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        drop(held);
    });
    let (reads, streams, refused) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let config = c.peer_config("a");
    for _ in 0..16 {
        let (config, stop, reads, streams, refused) = (
            config.clone(),
            stop.clone(),
            reads.clone(),
            streams.clone(),
            refused.clone(),
        );
        tokio::spawn(async move {
            let Ok(mut client) = knit_kvstore::etcd::connect(&config).await else {
                return;
            };
            let mut watches = Vec::new();
            for _ in 0..200 {
                match client
                    .watch("knit/v1/clusters/a/", Some(WatchOptions::new().with_prefix()))
                    .await
                {
                    Ok(w) => {
                        streams.fetch_add(1, Ordering::Relaxed);
                        watches.push(w);
                    }
                    Err(_) => break,
                }
            }
            while !stop.load(Ordering::Relaxed) {
                if client
                    .get(
                        "knit/v1/clusters/a/",
                        Some(GetOptions::new().with_prefix().with_keys_only()),
                    )
                    .await
                    .is_ok()
                {
                    reads.fetch_add(1, Ordering::Relaxed);
                } else {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    (reads, streams, refused)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let bin = apiserver_bin();
    assert!(
        std::path::Path::new(&bin).exists(),
        "{bin} not found; run `cargo build --release -p knit-apiserver`"
    );
    let rate: f64 = std::env::var("KNIT_BENCH_SOAK_RATE")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(200.0);
    let mut clusters = vec![
        TestCluster::new("a", 1),
        TestCluster::new("b", 2),
        TestCluster::new("c", 3),
    ];
    full_mesh(&mut clusters);
    clusters[0].write_source("base.yaml", &node("a-n1", "192.168.1.1", "10.1.0.0/24"));
    // KNIT_BENCH_FRONT_ARGS: extra apiserver flags (say, other front limits).
    let extra = std::env::var("KNIT_BENCH_FRONT_ARGS").unwrap_or_default();
    let extra: Vec<&str> = extra.split_whitespace().collect();
    for c in clusters.iter_mut() {
        c.start_etcd();
        c.start_apiserver(&bin, &extra);
    }
    let b = connect_retrying(&clusters[1].admin_config()).await;
    // Wait for b's mirror of a.
    let canary = format!("{}synced/endpoints", cache_prefix("a"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while b
        .clone()
        .get(canary.as_str(), None)
        .await
        .map(|r| r.kvs().is_empty())
        .unwrap_or(true)
    {
        assert!(Instant::now() < deadline, "b never mirrored a");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    eprintln!("front soak bench: {rate} updates/s, no attacker");
    let (quiet_front, quiet_local) = propagation(&clusters[0], &b, rate, 0).await;
    eprintln!("front soak bench: {rate} updates/s, c floods a's front and a slowloris holds 1,000 sockets");
    let stop = Arc::new(AtomicBool::new(false));
    let (reads, streams, refused) = attack(&clusters[0], &clusters[2], stop.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (attacked_front, attacked_local) = propagation(&clusters[0], &b, rate, 1).await;
    stop.store(true, Ordering::Relaxed);

    println!("\n## the peer front under attack (real etcd, three clusters on loopback, {rate} updates/s)\n");
    println!("| measure | no attacker | under attack | ratio | target |");
    println!("|---|---:|---:|---:|---:|");
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let ratio = |under: Duration, quiet: Duration| ms(under) / ms(quiet).max(0.1);
    println!(
        "| propagation p99 to another peer (b, through a's front) | {:.1} ms | {:.1} ms | {:.2} | ≤ 2 |",
        ms(quiet_front),
        ms(attacked_front),
        ratio(attacked_front, quiet_front)
    );
    println!(
        "| propagation p99 to a's own agents (a's etcd) | {:.1} ms | {:.1} ms | {:.2} | ≤ 2 |",
        ms(quiet_local),
        ms(attacked_local),
        ratio(attacked_local, quiet_local)
    );
    println!(
        "| the attacker's watch streams opened / reads answered / calls refused | — | {} / {} / {} | — | — |",
        streams.load(Ordering::Relaxed),
        reads.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed)
    );
}
