//! `make bench` (operator part): how long the mesh render takes as the mesh
//! grows, and what certificate work costs. Prints a table; asserts nothing.

use std::time::{Duration, Instant};

use jiff::Timestamp;
use knit_crds::ClusterMeshPeerSpec;
use knit_operator::config::ClusterConfig;
use knit_operator::pki::{self, LeafSpec, Usage};
use knit_operator::render::{MeshInputs, PeerInput, render_mesh, stored_from_secrets};

fn peers(n: u16, now: Timestamp) -> Vec<PeerInput> {
    let ca = pki::new_ca("peer", now, 3650).unwrap().cert_pem;
    (2..n + 2)
        .map(|id| PeerInput {
            name: format!("c{id}"),
            uid: None,
            generation: Some(1),
            created: Some(now),
            spec: ClusterMeshPeerSpec {
                cluster_name: format!("c{id}"),
                cluster_id: id,
                endpoints: vec![format!("https://mesh.c{id}.example.com:2379")],
                ca_bundle: Some(ca.clone()),
                ca_secret_ref: None,
                // Disjoint from each other and from the local 10.1.0.0/16.
                pod_cidrs: vec![format!("100.{}.{}.0/24", 64 + id / 256, id % 256)],
                limits: None,
            },
            ca: Ok(ca.clone()),
            status: None,
            sync: None,
        })
        .collect()
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    let now = Timestamp::now();
    let config = ClusterConfig::from_yaml("clusterName: a\nclusterID: 1\n").unwrap();

    let ca = pki::new_ca("a", now, 3650).unwrap();
    let spec = LeafSpec {
        common_name: "remote-a".into(),
        sans: vec![],
        usage: Usage::Client,
    };
    let issue = median(
        (0..50)
            .map(|_| {
                let t = Instant::now();
                pki::issue(&ca, &spec, now, 365).unwrap();
                t.elapsed()
            })
            .collect(),
    );

    println!(
        "| peers | first render (issues all certs) | steady render (nothing to issue) | per peer (steady) |"
    );
    println!(
        "|------:|-------------------------------:|---------------------------------:|------------------:|"
    );
    for n in [1u16, 10, 100, 500] {
        let inputs = peers(n, now);
        let t = Instant::now();
        let first = render_mesh(&MeshInputs {
            node_sources: &[],
            config: &config,
            peers: &inputs,
            stored: &Default::default(),
            load_balancer_ingress: &[],
            now,
        })
        .unwrap();
        let first_time = t.elapsed();
        let stored = stored_from_secrets(&first.secrets);
        let steady = median(
            (0..5)
                .map(|_| {
                    let t = Instant::now();
                    render_mesh(&MeshInputs {
                        node_sources: &[],
                        config: &config,
                        peers: &inputs,
                        stored: &stored,
                        load_balancer_ingress: &[],
                        now,
                    })
                    .unwrap();
                    t.elapsed()
                })
                .collect(),
        );
        println!(
            "| {n:>5} | {:>30.1?} | {:>32.1?} | {:>17.1?} |",
            first_time,
            steady,
            steady / u32::from(n)
        );
    }
    println!("\nissuing one client certificate (ECDSA P-256, median of 50): {issue:.1?}");
}
