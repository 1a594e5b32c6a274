//! `knitctl connectivity test`'s checks on the local mesh
//! ([`knit_e2e::connectivity::MeshSites`]): every check passes on a healthy
//! two-cluster mesh, and the report fails naming the broken checks when a
//! node's agent is stopped (its pods cannot be attached) and when a
//! NetworkPolicy denies the test's echo pods of one cluster. Each run
//! removes what it deployed.

use knit_e2e::connectivity::MeshSites;
use knit_e2e::mesh::{ClusterId, LocalMesh, MeshOptions};
use knit_operator::connectivity::{NAMESPACE, Report, run};

const B: ClusterId = ClusterId(1);

fn connectivity_test(mesh: &mut LocalMesh, with_outside: bool) -> Report {
    let outside = with_outside.then(|| "192.168.50.250:8080".parse().unwrap());
    let mut sites = MeshSites::new(mesh);
    let clusters = sites.clusters();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let report = runtime
        .block_on(run(&mut sites, &clusters, 5, outside))
        .expect("the connectivity test runs");
    println!("{}", report.table());
    report
}

fn failed(report: &Report) -> Vec<String> {
    report
        .outcomes
        .iter()
        .filter(|o| !o.passed)
        .map(|o| o.name.clone())
        .collect()
}

#[test]
fn a_healthy_mesh_passes_every_check_and_is_left_clean() {
    let mut mesh = LocalMesh::start(MeshOptions::default());
    let (_outside, _server) = mesh.add_outside_host("inet", "192.168.50.250");
    let report = connectivity_test(&mut mesh, true);
    assert!(report.passed(), "{}", report.table());
    assert_eq!(report.outcomes.len(), 16);
    // What it deployed is gone from the sources.
    for c in mesh.cluster_ids() {
        let dir = mesh.cluster(c).control.source_dir();
        let left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(NAMESPACE) || n.contains("knit-connectivity"))
            .collect();
        assert_eq!(left, Vec::<String>::new(), "left in {}", dir.display());
    }
}

#[test]
fn a_deny_policy_fails_the_checks_it_breaks_by_name() {
    let mut mesh = LocalMesh::start(MeshOptions::default());
    let deny = format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: deny-echo\n  namespace: {NAMESPACE}\nspec:\n  podSelector:\n    matchLabels: {{app: knit-echo}}\n  policyTypes: [Ingress]\n"
    );
    mesh.write_manifest(B, "deny-echo.yaml", &deny);
    let report = connectivity_test(&mut mesh, false);
    let failed = failed(&report);
    // Everything into cluster-b's echo is refused, from pods and from
    // other nodes alike (only a pod's own node passes policy).
    for broken in [
        "pod to pod cluster-a -> cluster-b",
        "pod to pod in cluster-b",
        "global service, affinity local, from cluster-b",
        "node to pod in cluster-b",
    ] {
        assert!(
            failed.iter().any(|f| f == broken),
            "{broken} must fail: {}",
            report.table()
        );
    }
    for intact in [
        "pod to pod in cluster-a",
        "pod to pod cluster-b -> cluster-a",
        "node to pod in cluster-a",
        "network policy denies cluster-a -> cluster-b",
    ] {
        assert!(
            !failed.iter().any(|f| f == intact),
            "{intact} must pass: {}",
            report.table()
        );
    }
    let detail = &report
        .outcomes
        .iter()
        .find(|o| o.name == "pod to pod in cluster-b")
        .unwrap()
        .detail;
    assert!(
        detail.contains("0/5 answered") && detail.contains("expected every answer from cluster-b/echo"),
        "{detail}"
    );
}

#[test]
fn a_stopped_agent_fails_the_checks_of_the_pods_it_cannot_attach() {
    let mut mesh = LocalMesh::start(MeshOptions::default());
    // cluster-b's client lands on b's second node; its agent is down, and
    // knit-cni there gives up after 3 s instead of 30.
    let node = B.node(1);
    let mut conflist = mesh.node(node).cni.conflist.clone();
    for plugin in conflist["plugins"].as_array_mut().unwrap() {
        if plugin["type"] == "knit-cni" {
            plugin["attachTimeoutSeconds"] = 3.into();
        }
    }
    mesh.set_conflist(node, conflist);
    mesh.kill_agent(node);
    let report = connectivity_test(&mut mesh, false);
    let failed = failed(&report);
    assert_eq!(failed.len(), 7, "{}", report.table());
    assert!(
        failed.iter().all(|f| f.contains("from cluster-b")
            || f.contains("cluster-b ->")
            || f.ends_with("in cluster-b"))
    );
    let detail = &report
        .outcomes
        .iter()
        .find(|o| o.name == "pod to pod cluster-b -> cluster-a")
        .unwrap()
        .detail;
    assert!(
        detail.starts_with("pod cluster-b/client was not deployed:"),
        "{detail}"
    );
    assert!(
        report.outcomes.iter().filter(|o| o.passed).count() == 7,
        "cluster-a's checks pass: {}",
        report.table()
    );
}
