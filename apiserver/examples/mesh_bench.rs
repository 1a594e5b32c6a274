//! `make bench` (apiserver part), against real etcd and the real binary:
//!
//! 1. propagation latency from a change in cluster a's directory source to
//!    the event in a watch on cluster b's etcd (through b's KVStoreMesh),
//!    under churn at each rate of KNIT_BENCH_CHURN_RATES (updates/s,
//!    default `200,1000`): p50 / p99, against the target p99 < 50 ms at
//!    1,000 updates/s;
//! 2. initial sync of 100,000 endpoints + 10,000 services into a new peer;
//! 3. resident memory of the exporting apiserver per endpoint, 2 s after
//!    the export, and its peak.
//!
//! Prints a table. Sizes can be reduced with KNIT_BENCH_ENDPOINTS /
//! KNIT_BENCH_SERVICES for a quick run.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use etcd_client::{EventType, GetOptions, WatchOptions};
use knit_kvstore::keys::{cache_prefix, mesh_status_key};
use knit_kvstore::records::PeerStatusRecord;
use knit_testkit::TestCluster;
use knit_testkit::bench::{apiserver_bin, churn_rates, env_usize, peak_rss_kib, percentile, rss_kib};
use knit_testkit::cluster::full_mesh;
use knit_testkit::manifests::{node, pod};

async fn wait_synced(
    client: &etcd_client::Client,
    peer: &str,
    endpoints: u64,
    services: u64,
    limit: Duration,
) -> Option<Duration> {
    let start = Instant::now();
    let mut c = client.clone();
    while start.elapsed() < limit {
        if let Ok(r) = c.get(mesh_status_key(peer), None).await
            && let Some(kv) = r.kvs().first()
            && let Ok(st) = serde_json::from_slice::<PeerStatusRecord>(kv.value())
            && st.synced
            && st
                .counts
                .get(&knit_kvstore::keys::Kind::Endpoints)
                .copied()
                .unwrap_or_default()
                >= endpoints
            && st
                .counts
                .get(&knit_kvstore::keys::Kind::Services)
                .copied()
                .unwrap_or_default()
                >= services
        {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

async fn latency_under_churn(bin: &str, rate: f64) -> (Duration, Duration, usize) {
    let mut clusters = vec![TestCluster::new("a", 1), TestCluster::new("b", 2)];
    full_mesh(&mut clusters);
    let mut base = node("a-n1", "192.168.1.1", "10.1.0.0/24");
    for i in 0..1000 {
        base += &pod(
            "bench",
            &format!("base-{i}"),
            "a-n1",
            &format!("10.1.{}.{}", 100 + i / 250, 1 + i % 250),
            "base",
        );
    }
    clusters[0].write_source("base.yaml", &base);
    for c in clusters.iter_mut() {
        c.start_etcd();
        c.start_apiserver(bin, &[]);
    }
    let b = clusters[1].admin().await;
    wait_synced(&b, "a", 1000, 0, Duration::from_secs(60))
        .await
        .expect("initial sync for the latency run");

    let prefix = format!("{}endpoints/", cache_prefix("a"));
    let mut watch = b
        .clone()
        .watch(prefix.as_str(), Some(WatchOptions::new().with_prefix()))
        .await
        .expect("watch");
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    tokio::spawn(async move {
        while let Ok(Some(resp)) = watch.message().await {
            for ev in resp.events() {
                if ev.event_type() == EventType::Put
                    && let Some(kv) = ev.kv()
                {
                    let _ = seen_tx.send((kv.key_str().unwrap_or_default().to_owned(), Instant::now()));
                }
            }
        }
    });

    let updates = 2000;
    let mut sent: BTreeMap<String, Instant> = BTreeMap::new();
    let start = Instant::now();
    for i in 0..updates {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let ip = format!("10.1.{}.{}", 10 + i / 250, 1 + i % 250);
        clusters[0].write_source(
            &format!("churn-{i}.yaml"),
            &pod("bench", &format!("churn-{i}"), "a-n1", &ip, "churn"),
        );
        sent.insert(format!("{prefix}{ip}"), Instant::now());
    }
    let mut latencies = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while latencies.len() < updates && Instant::now() < deadline {
        if let Ok(Some((key, at))) = tokio::time::timeout(Duration::from_secs(1), seen_rx.recv()).await
            && let Some(t0) = sent.remove(&key)
        {
            latencies.push(at - t0);
        }
    }
    latencies.sort();
    let seen = latencies.len();
    (percentile(&latencies, 0.5), percentile(&latencies, 0.99), seen)
}

/// The `i`-th pod IP of the initial-sync run (10.64.0.1 onwards, in 10.64.0.0/12).
fn ip(i: usize) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(10, 64, 0, 1)) + i as u32)
}

async fn initial_sync(bin: &str, endpoints: usize, services: usize) -> (Duration, Duration, u64, u64) {
    let mut clusters = vec![
        TestCluster::with_pod_cidr("a", 1, "10.64.0.0/12"),
        TestCluster::new("b", 2),
    ];
    full_mesh(&mut clusters);
    // 100 pods per node, 1,000 pods per file.
    let per_file = 1000;
    for f in 0..endpoints.div_ceil(per_file) {
        let mut yaml = String::new();
        for i in f * per_file..((f + 1) * per_file).min(endpoints) {
            if i % 100 == 0 {
                let n = i / 100;
                let host = format!("192.168.{}.{}", n / 250, 1 + n % 250);
                yaml += &node(&format!("n{n}"), &host, &format!("{}/24", ip(n * 256)));
            }
            yaml += &pod(
                "bench",
                &format!("p{i}"),
                &format!("n{}", i / 100),
                &ip(i).to_string(),
                &format!("app{}", i % 50),
            );
        }
        clusters[0].write_source(&format!("pods-{f}.yaml"), &yaml);
    }
    // Services marked global the Cilium way, each with 10 backends.
    let mut yaml = String::new();
    for s in 0..services {
        yaml += &format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: s{s}\n  namespace: bench\n  annotations:\n    service.cilium.io/global: \"true\"\nspec:\n  ports:\n  - name: http\n    port: 80\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: s{s}-1\n  namespace: bench\n  labels:\n    kubernetes.io/service-name: s{s}\naddressType: IPv4\nports:\n- name: http\n  port: 8080\nendpoints:\n"
        );
        for b in 0..10 {
            yaml += &format!("- addresses: [\"{}\"]\n", ip((s * 10 + b) % endpoints.max(1)));
        }
        yaml += "---\n";
    }
    clusters[0].write_source("services.yaml", &yaml);

    clusters[0].start_etcd();
    clusters[1].start_etcd();
    let export_start = Instant::now();
    clusters[0].start_apiserver(bin, &["--lease-ttl=120"]);
    let a = clusters[0].admin().await;
    let mut c = a.clone();
    loop {
        let r = c
            .get(
                "knit/v1/clusters/a/synced/",
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await;
        match r {
            Ok(r) if r.kvs().len() == 4 => break,
            Ok(_) => {}
            Err(e) => eprintln!("checking a's canaries: {e}"),
        }
        assert!(
            export_start.elapsed() < Duration::from_secs(600),
            "export did not finish\n{}",
            clusters[0].logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let export_time = export_start.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = clusters[0].apiserver_pid().map(rss_kib).unwrap_or_default();
    let peak = clusters[0].apiserver_pid().map(peak_rss_kib).unwrap_or_default();

    clusters[1].start_apiserver(bin, &["--lease-ttl=120"]);
    let b = clusters[1].admin().await;
    let sync = wait_synced(
        &b,
        "a",
        endpoints as u64,
        services as u64,
        Duration::from_secs(600),
    )
    .await
    .unwrap_or_else(|| panic!("b never synced a\n{}", clusters[1].logs()));
    (export_time, sync, rss, peak)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let bin = apiserver_bin();
    assert!(
        std::path::Path::new(&bin).exists(),
        "{bin} not found; run `cargo build --release -p knit-apiserver`"
    );
    let endpoints = env_usize("KNIT_BENCH_ENDPOINTS", 100_000);
    let services = env_usize("KNIT_BENCH_SERVICES", 10_000);

    let rates = churn_rates();
    let mut churn = Vec::new();
    for &rate in &rates {
        eprintln!("mesh bench: propagation under {rate} updates/s");
        churn.push((rate, latency_under_churn(&bin, rate).await));
    }
    let (export, sync, rss, peak) = initial_sync(&bin, endpoints, services).await;
    let per_endpoint = rss as f64 * 1024.0 / endpoints as f64;

    println!("\n## knit-apiserver / KVStoreMesh (real etcd 3.4, mTLS, two clusters on loopback)\n");
    println!("| measure | figure | target | ratio to target |");
    println!("|---|---:|---:|---:|");
    for (rate, (p50, p99, seen)) in &churn {
        println!(
            "| propagation p50, {rate} updates/s ({seen} of 2000 seen) | {:.1} ms | — | — |",
            p50.as_secs_f64() * 1e3
        );
        println!(
            "| propagation p99, {rate} updates/s | {:.1} ms | 50 ms | {:.2} |",
            p99.as_secs_f64() * 1e3,
            p99.as_secs_f64() / 0.05
        );
    }
    println!(
        "| initial export of {endpoints} endpoints + {services} services (cluster a) | {:.2} s | — | — |",
        export.as_secs_f64()
    );
    println!(
        "| initial sync of the same into a new peer (cluster b) | {:.2} s | 10 s | {:.2} |",
        sync.as_secs_f64(),
        sync.as_secs_f64() / 10.0
    );
    println!(
        "| apiserver resident memory | {:.1} MiB | — | — |",
        rss as f64 / 1024.0
    );
    println!(
        "| resident memory per endpoint | {:.0} B | 1024 B | {:.2} |",
        per_endpoint,
        per_endpoint / 1024.0
    );
    println!(
        "| peak resident memory during the export | {:.1} MiB | — | — |",
        peak as f64 / 1024.0
    );
}
