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

/// The control server the Kubernetes sites probe through the API server's
/// pod proxy (`knit-probe control`), really run in a namespace of the
/// test's own: `GET /hits` sends the requests and answers with their JSON;
/// a bad parameter is a 400 naming it.
#[test]
fn the_probes_control_server_answers_hits_over_http() {
    use knit_e2e::netns::Netns;
    use knit_testkit::process::{ChildProcess, Placement};
    let ns = Netns::new("control");
    let dir = knit_e2e::TempDir::new("control");
    let probe = knit_e2e::mesh::Binaries::locate().probe;
    let place = Placement {
        netns: Some(ns.name()),
        ..Placement::default()
    };
    let args = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let probe = probe.to_str().unwrap();
    let _echo = ChildProcess::spawn_in(
        "echo",
        probe,
        &args(&["serve", "--name", "cluster-a/echo", "--port", "8080"]),
        &dir.path().join("echo.log"),
        &place,
    );
    let _control = ChildProcess::spawn_in(
        "control",
        probe,
        &args(&["control", "--port", "4250"]),
        &dir.path().join("control.log"),
        &place,
    );
    let get = |path: &str| {
        let script = format!(
            "exec 3<>/dev/tcp/127.0.0.1/4250 && printf 'GET {path} HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n' >&3 && cat <&3"
        );
        String::from_utf8_lossy(&ns.exec_status("bash", &["-c", &script]).stdout).into_owned()
    };
    let serving = |port: u16| ns.tcp_open("127.0.0.1", port);
    let start = std::time::Instant::now();
    while !(serving(8080) && serving(4250)) {
        assert!(start.elapsed().as_secs() < 10, "the probe servers did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let answer = get("/hits?to=127.0.0.1:8080&count=3");
    assert!(
        answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"),
        "{answer}"
    );
    let body: serde_json::Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(
        body["names"],
        serde_json::json!({ "cluster-a/echo": 3 }),
        "{answer}"
    );
    let refused = get("/hits?to=127.0.0.1:9&count=2");
    let body: serde_json::Value = serde_json::from_str(refused.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["names"], serde_json::json!({}), "{refused}");
    assert_eq!(body["errors"]["ConnectionRefused"], 2, "{refused}");
    let bad = get("/hits?to=127.0.0.1:8080&count=0");
    assert!(
        bad.contains(" 400 ") && bad.ends_with("count=0: a number from 1 to 1000"),
        "{bad}"
    );
}
