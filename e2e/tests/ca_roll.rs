//! Rolling cluster-a's mesh CA in a 2-cluster mesh while requests flow
//! both ways: every request opens a new connection through the other
//! cluster's peer front with the files its KVStoreMesh uses at that moment,
//! and none may fail. On the wire, the switch and the drop are checked with
//! each CA alone.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use knit_e2e::TempDir;
use knit_e2e::mesh::{ClusterId, LocalMesh, MeshOptions, etcdctl_in};
use knit_kvstore::EtcdClientConfig;
use knit_kvstore::keys::Kind;
use knit_operator::config::CaRotationStep;
use knit_operator::names;
use knit_operator::pki::{self, CertKeyPair, LeafSpec, Usage};

const A: ClusterId = ClusterId(0);
const B: ClusterId = ClusterId(1);
/// Longer than the peer front's reload period (2 s), with margin.
const SETTLE: Duration = Duration::from_secs(5);

/// Requests from one cluster to a peer's front, on a thread, counted.
struct Requests {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<(usize, Vec<String>)>,
}

impl Requests {
    /// Reads `to`'s config record from `from`, each time on a new
    /// connection with the peer config `from` holds now.
    fn start(mesh: &LocalMesh, from: ClusterId, to: ClusterId) -> Self {
        let netns = mesh.cluster(from).cp.name().to_owned();
        let config = mesh.cluster(from).control.peer_config(&to.name());
        let endpoint = mesh.front_url(to);
        let key = format!("knit/v1/clusters/{}/config", to.name());
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut sent, mut failed) = (0, Vec::new());
            while !flag.load(Ordering::Relaxed) {
                let (ok, out) = etcdctl_in(&netns, &config, &endpoint, &["get", &key, "--print-value-only"]);
                sent += 1;
                if !ok || !out.contains(&to.name()) {
                    failed.push(out);
                }
            }
            (sent, failed)
        });
        Self { stop, thread }
    }

    fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("request thread")
    }
}

/// `config` with its trust replaced by `ca_pem` alone, written under `dir`.
fn trusting_only(config: &EtcdClientConfig, ca_pem: &str, dir: &TempDir, name: &str) -> EtcdClientConfig {
    let path = dir.path().join(name);
    std::fs::write(&path, ca_pem).unwrap();
    EtcdClientConfig {
        trusted_ca_file: path,
        ..config.clone()
    }
}

/// A client certificate `remote-cluster-a` issued by `ca`, as a config
/// reaching cluster-b's front (trusting b's CA as `a_to_b` does).
fn minted_by(ca: &CertKeyPair, a_to_b: &EtcdClientConfig, dir: &TempDir, name: &str) -> EtcdClientConfig {
    let spec = LeafSpec {
        common_name: "remote-cluster-a".into(),
        sans: Vec::new(),
        usage: Usage::Client,
    };
    let leaf = pki::issue(ca, &spec, jiff::Timestamp::now(), 10).unwrap();
    let (cert, key) = (
        dir.path().join(format!("{name}.crt")),
        dir.path().join(format!("{name}.key")),
    );
    std::fs::write(&cert, leaf.cert_pem).unwrap();
    std::fs::write(&key, leaf.key_pem).unwrap();
    EtcdClientConfig {
        cert_file: cert,
        key_file: key,
        ..a_to_b.clone()
    }
}

fn read(path: std::path::PathBuf) -> String {
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn endpoints_of(mesh: &LocalMesh, at: ClusterId, peer: ClusterId) -> u64 {
    mesh.status_report(at)
        .and_then(|r| r.peers.into_iter().find(|p| p.peer == peer.name()))
        .and_then(|p| p.counts.get(&Kind::Endpoints).copied())
        .unwrap_or_default()
}

#[test]
fn rolling_a_mesh_ca_fails_no_request() {
    let mut mesh = LocalMesh::start(MeshOptions {
        nodes: 1,
        ..MeshOptions::default()
    });
    let scratch = TempDir::new("ca-roll");
    let a_pki = mesh.cluster(A).control.pki();
    let old = CertKeyPair {
        cert_pem: read(a_pki.join(names::CA_SECRET).join("ca.crt")),
        key_pem: read(a_pki.join(names::CA_SECRET).join("ca.key")),
    };
    let b_to_a = mesh.cluster(B).control.peer_config(&A.name());
    let a_to_b = mesh.cluster(A).control.peer_config(&B.name());
    let get_a = ["get", "knit/v1/clusters/cluster-a/config", "--print-value-only"];
    let get_b = ["get", "knit/v1/clusters/cluster-b/config", "--print-value-only"];
    let old_client = minted_by(&old, &a_to_b, &scratch, "old-client");

    let traffic = [Requests::start(&mesh, B, A), Requests::start(&mesh, A, B)];

    // 1–3. a issues its next CA and publishes both; b applies the export.
    mesh.set_mesh_ca_rotation(A, Some(CaRotationStep::Prepare));
    let bundle = mesh.cluster(A).control.manifest().spec.ca_bundle.unwrap();
    assert_eq!(pki::fingerprints(&bundle).len(), 2, "Prepare publishes both CAs");
    let next_pem = read(a_pki.join(names::CA_SECRET).join("next.crt"));
    mesh.apply_export(A);
    assert_eq!(
        read(mesh.cluster(B).control.peer_configs().join("cluster-a.ca.crt")),
        bundle
    );
    std::thread::sleep(SETTLE);

    // 4. a switches: its front and its client certificate come from the next CA.
    mesh.set_mesh_ca_rotation(A, Some(CaRotationStep::Switch));
    std::thread::sleep(SETTLE);
    let only_old = trusting_only(&b_to_a, &old.cert_pem, &scratch, "old.crt");
    let only_next = trusting_only(&b_to_a, &next_pem, &scratch, "next.crt");
    let (ok, out) = mesh.etcdctl(B, &only_next, &mesh.front_url(A), &get_a);
    assert!(ok, "a's front must serve a certificate of the next CA: {out}");
    let (ok, _) = mesh.etcdctl(B, &only_old, &mesh.front_url(A), &get_a);
    assert!(!ok, "a's front still serves a certificate of the old CA");
    assert!(pki::is_signed_by(
        &read(mesh.cluster(A).control.peer_configs().join("cluster-b.crt")),
        &next_pem
    ));
    // b still trusts the old CA for a until a completes.
    let (ok, out) = mesh.etcdctl(A, &old_client, &mesh.front_url(B), &get_b);
    assert!(ok, "b dropped a's old CA before a completed: {out}");

    // 5. a completes; b applies the export again and stops trusting the old CA.
    mesh.set_mesh_ca_rotation(A, Some(CaRotationStep::Complete));
    assert_eq!(
        mesh.cluster(A).control.manifest().spec.ca_bundle.unwrap(),
        next_pem,
        "Complete publishes the next CA alone"
    );
    std::thread::sleep(SETTLE);
    mesh.apply_export(A);
    std::thread::sleep(SETTLE);

    let counts = traffic.map(Requests::finish);
    for ((sent, failed), direction) in counts.iter().zip(["b → a", "a → b"]) {
        println!("{direction}: {sent} requests, {} failed", failed.len());
        assert!(*sent >= 50, "{direction}: only {sent} requests were made");
        assert!(
            failed.is_empty(),
            "{direction}: {} of {sent} failed: {:?}",
            failed.len(),
            &failed[..failed.len().min(3)]
        );
    }
    let (ok, out) = mesh.etcdctl(A, &old_client, &mesh.front_url(B), &get_b);
    assert!(!ok, "b still accepts a certificate of a's dropped CA: {out}");

    // Both KVStoreMeshes still sync: a pod made now in each cluster reaches the other's cache.
    let before = (endpoints_of(&mesh, B, A), endpoints_of(&mesh, A, B));
    mesh.add_pod(A.node(0), "shop", "late-a", &[("app", "late")]);
    mesh.add_pod(B.node(0), "shop", "late-b", &[("app", "late")]);
    mesh.wait_until(
        "the new pods to reach the peers' caches",
        Duration::from_secs(30),
        || endpoints_of(&mesh, B, A) > before.0 && endpoints_of(&mesh, A, B) > before.1,
    );
}
