//! `make demo`: two clusters in network namespaces, a global service with
//! backends in both, affinity, failover and `knitctl status`, then teardown.
//! Ctrl-C tears down too.

use std::net::Ipv4Addr;
use std::time::Instant;

use knit_e2e::mesh::{ClusterId, GlobalService, Hits, LocalMesh, MeshOptions, PodId};

fn step(text: &str) {
    println!("\n\x1b[1m==> {text}\x1b[0m");
}

fn show(hits: &Hits) {
    for (name, n) in &hits.names {
        println!("    {name:<22} {:<50} {n}", "#".repeat(n / 2));
    }
    for (kind, n) in &hits.errors {
        println!("    failed ({kind}): {n}");
    }
}

const A: ClusterId = ClusterId(0);
const B: ClusterId = ClusterId(1);

fn main() {
    std::thread::spawn(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let _ = tokio::signal::ctrl_c().await;
        });
        eprintln!("\ninterrupted: tearing down");
        knit_e2e::netns::clean_own();
        std::process::exit(130);
    });
    let started = Instant::now();
    step(
        "Bringing up cluster-a and cluster-b: etcd + knit-apiserver per cluster, 2 nodes each running knit-agent",
    );
    println!("    (all inside network namespaces; certificates and peer configs from knitctl's render code)");
    let mut mesh = LocalMesh::start(MeshOptions::default());
    println!("    mesh up in {:.1?}", started.elapsed());

    step("Deploying global service shop/web (GlobalServicePolicy export+import): 2 backends in each cluster");
    let client = mesh.add_pod(A.node(0), "shop", "client", &[("app", "client")]);
    let a = [
        mesh.add_pod(A.node(0), "shop", "web-a1", &[("app", "web")]),
        mesh.add_pod(A.node(1), "shop", "web-a2", &[("app", "web")]),
    ];
    let b = [
        mesh.add_pod(B.node(0), "shop", "web-b1", &[("app", "web")]),
        mesh.add_pod(B.node(1), "shop", "web-b2", &[("app", "web")]),
    ];
    let vip_a = Ipv4Addr::new(10, 96, 1, 10);
    let svc = |vip, backends: Vec<PodId>, affinity| GlobalService {
        namespace: "shop",
        name: "web",
        vip,
        backends,
        export: true,
        import: true,
        affinity,
        not_ready: Vec::new(),
        spec_extra: "",
    };
    mesh.deploy_service(A, &svc(vip_a, a.to_vec(), "none"));
    mesh.deploy_service(B, &svc(Ipv4Addr::new(10, 96, 2, 10), b.to_vec(), "none"));
    mesh.wait_for_hits("all four backends", client, vip_a, false, |h| h.names.len() == 4);
    println!("    100 TCP connections from cluster-a/client to the ClusterIP {vip_a}:8080:");
    show(&mesh.hits(client, vip_a, 100, false));

    step("knitctl status (in cluster-a)");
    print!("{}", mesh.knitctl_status(A));

    step("Switching the GlobalServicePolicy to affinity: local");
    mesh.deploy_service(A, &svc(vip_a, a.to_vec(), "local"));
    mesh.wait_for_hits("local affinity", client, vip_a, false, |h| {
        h.from_cluster("cluster-b") == 0
    });
    show(&mesh.hits(client, vip_a, 100, false));
    println!("    cluster-a's backends go unready: local falls back to cluster-b");
    mesh.deploy_service(A, &svc(vip_a, vec![], "local"));
    mesh.wait_for_hits("fallback", client, vip_a, false, |h| {
        h.from_cluster("cluster-b") == 40
    });
    show(&mesh.hits(client, vip_a, 100, false));
    mesh.deploy_service(A, &svc(vip_a, a.to_vec(), "none"));
    mesh.wait_for_hits("all four backends again", client, vip_a, false, |h| {
        h.names.len() == 4
    });

    step("Killing cluster-b's control plane (etcd + knit-apiserver); grace period 4s");
    let killed = Instant::now();
    mesh.stop_control_plane(B);
    mesh.wait_for_hits("failover", client, vip_a, false, |h| {
        h.from_cluster("cluster-b") == 0 && h.total() == 40
    });
    println!(
        "    new connections only go to cluster-a after {:.1?}:",
        killed.elapsed()
    );
    show(&mesh.hits(client, vip_a, 100, false));

    step("knitctl status (in cluster-a)");
    print!("{}", mesh.knitctl_status(A));

    step("cluster-b comes back");
    mesh.start_control_plane(B);
    mesh.wait_for_hits("recovery", client, vip_a, false, |h| h.names.len() == 4);
    show(&mesh.hits(client, vip_a, 100, false));

    step("Tearing down");
    drop(mesh);
    println!("    done in {:.1?}", started.elapsed());
}
