//! `make bench` part: end to end, on the local mesh (real etcd with mTLS,
//! real apiservers and KVStoreMesh, a real agent loading its maps into the
//! kernel). Cluster-b holds 10,000 Services importing from the mesh (no
//! backends of its own) and its agent has programmed them. Then 100,000
//! endpoints and the same 10,000 Services (ten backends each) are written
//! into cluster-a's source; the clock runs until cluster-b's agent has
//! every endpoint in its ipcache and every backend slot in its maps.
//!
//! That covers the source's poll (1 s in the harness), cluster-a's export,
//! cluster-b's KVStoreMesh sync, and the agent's render and map writes.
//! Also printed: the agent's resident memory per endpoint (its growth over
//! the run, divided by the endpoints). Sizes: KNIT_BENCH_ENDPOINTS (default
//! 100,000; ten per service).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use knit_e2e::mesh::{ClusterId, LocalMesh, MeshOptions};
use knit_testkit::bench::{env_usize, rss_kib};

const A: ClusterId = ClusterId(0);
const B: ClusterId = ClusterId(1);
/// Cluster-a's room for the endpoints (`10.64.0.0/12`: a million addresses).
const BENCH_CIDR: &str = "10.64.0.0/12";

fn pod_ip(i: usize) -> String {
    format!("10.{}.{}.{}", 64 + i / 65_536, (i / 256) % 256, i % 256)
}

fn vip(i: usize) -> String {
    format!("10.112.{}.{}", i / 256, i % 256)
}

/// `services` Services in namespace `bench`, selected by one
/// GlobalServicePolicy; with `backends`, each has an EndpointSlice of its
/// ten pods.
fn services_yaml(services: usize, backends: bool, export: bool) -> String {
    let mut y = String::new();
    for s in 0..services {
        let _ = write!(
            y,
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: s{s}\n  namespace: bench\n  labels: {{bench: \"true\"}}\nspec:\n  clusterIP: {v}\n  clusterIPs: [{v}]\n  ports:\n  - {{name: http, port: 80, protocol: TCP}}\n---\n",
            v = vip(s)
        );
        if backends {
            let _ = write!(
                y,
                "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: s{s}-1\n  namespace: bench\n  labels: {{kubernetes.io/service-name: s{s}}}\naddressType: IPv4\nports:\n- {{name: http, port: 8080, protocol: TCP}}\nendpoints:\n"
            );
            for e in 0..10 {
                let _ = writeln!(
                    y,
                    "- addresses: [\"{}\"]\n  conditions: {{ready: true}}",
                    pod_ip(s * 10 + e)
                );
            }
            y.push_str("---\n");
        }
    }
    let _ = write!(
        y,
        "apiVersion: knit.dev/v1alpha1\nkind: GlobalServicePolicy\nmetadata:\n  name: bench\n  namespace: bench\nspec:\n  selector:\n    matchLabels: {{bench: \"true\"}}\n  export: {export}\n  import: {}\n  affinity: none\n",
        !export
    );
    y
}

fn pods_yaml(endpoints: usize, node: &str) -> String {
    let mut y = String::new();
    for i in 0..endpoints {
        let _ = write!(
            y,
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p{i}\n  namespace: bench\n  labels: {{app: bench, shard: \"s{}\"}}\nspec:\n  nodeName: {node}\n  containers:\n  - name: c\n    image: x\nstatus:\n  phase: Running\n  podIP: {ip}\n  podIPs:\n  - ip: {ip}\n---\n",
            i % 100,
            ip = pod_ip(i)
        );
    }
    y
}

fn main() {
    let endpoints = env_usize("KNIT_BENCH_ENDPOINTS", 100_000) / 10 * 10;
    let services = endpoints / 10;
    eprintln!("end-to-end bench: starting a 2-cluster local mesh");
    let mesh = LocalMesh::start(MeshOptions {
        clusters: 2,
        nodes: 1,
        extra_pod_cidr: Some((A, BENCH_CIDR.into())),
        ..MeshOptions::default()
    });
    let agent = B.node(0);
    let map = |name: &str| mesh.agent_metric(agent, &format!("knit_agent_map_entries{{name=\"{name}\"}}"));

    eprintln!("end-to-end bench: {services} importing services in cluster-b");
    mesh.write_manifest(B, "bench-services.yaml", &services_yaml(services, false, false));
    mesh.wait_until(
        "cluster-b's agent to program its services",
        Duration::from_secs(120),
        || map("services") >= services as i64,
    );
    let pid = mesh.agent_pid(agent).expect("cluster-b's agent runs");
    let rss_before = rss_kib(pid);

    eprintln!("end-to-end bench: writing {endpoints} endpoints and {services} services into cluster-a");
    let pods = pods_yaml(endpoints, &mesh.node(A.node(0)).name);
    let exported = services_yaml(services, true, true);
    let start = Instant::now();
    mesh.write_manifest(A, "bench-services.yaml", &exported);
    mesh.write_manifest(A, "bench-pods.yaml", &pods);
    let mut last_report = Instant::now();
    loop {
        let (routes, backends) = (map("ipcache"), map("backends"));
        if routes >= endpoints as i64 && backends >= endpoints as i64 {
            break;
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            eprintln!(
                "  {:>3.0} s: {routes} routes, {backends} backend slots in cluster-b's maps",
                start.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "cluster-b never programmed cluster-a's endpoints\n{}",
            mesh.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let total = start.elapsed();
    let rss_after = rss_kib(pid);
    let per_endpoint = (rss_after.saturating_sub(rss_before)) as f64 * 1024.0 / endpoints as f64;

    println!("\n## End to end (local mesh: real etcd, apiservers, KVStoreMesh, agent and BPF maps)\n");
    println!("| measure | figure | target | ratio to target |");
    println!("|---|---:|---:|---:|");
    println!(
        "| {endpoints} endpoints + {services} services written into cluster-a's source → programmed in cluster-b's agent maps | {:.2} s | 10 s | {:.2} |",
        total.as_secs_f64(),
        total.as_secs_f64() / 10.0
    );
    println!(
        "| cluster-b agent resident memory, before → after | {:.1} → {:.1} MiB | — | — |",
        rss_before as f64 / 1024.0,
        rss_after as f64 / 1024.0
    );
    println!("| cluster-b agent memory per endpoint (growth / endpoints) | {per_endpoint:.0} B | — | — |");
    let _ = mesh;
}
