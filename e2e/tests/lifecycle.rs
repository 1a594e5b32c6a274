//! How Knit's binaries start and stop in a pod.
//!
//! - Bootstrap: on a node of a cluster without a CNI, the agent starts
//!   before knit-operator has created its kvstore client Secret (the
//!   DaemonSet mounts it `optional`). It must stay up, say on `/readyz` what
//!   it waits for, and route to the other nodes' pod CIDRs from the Node
//!   objects, because the mesh apiserver it will reach is a pod on one of
//!   them. When the file appears it goes on by itself.
//! - SIGTERM, which the kubelet sends to PID 1: every binary stops cleanly
//!   (exit status 0) at once, not after the 30 s grace period.
//!
//! Each process runs in a network namespace of its own. Runs as root.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use knit_e2e::mesh::Binaries;
use knit_e2e::netns::{Netns, run_bpffs};

/// Spawns `bin args…` inside `ns`, its output into `log`.
fn spawn_in(ns: &Netns, bin: &Path, args: &[String], log: &Path) -> Child {
    let out = std::fs::File::create(log).expect("log file");
    Command::new("ip")
        .args(["netns", "exec", ns.name()])
        .arg(bin)
        .args(args)
        .stdout(out.try_clone().expect("log"))
        .stderr(out)
        .spawn()
        .expect("spawn")
}

/// Waits up to `limit` for `what` to hold.
fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `/readyz` of the process in `ns` listening on `port`: (status, body).
fn readyz(ns: &Netns, port: u16) -> (u16, String) {
    let script = format!(
        "import urllib.request,urllib.error\ntry:\n r=urllib.request.urlopen('http://127.0.0.1:{port}/readyz',timeout=2); print(r.status); print(r.read().decode())\nexcept urllib.error.HTTPError as e:\n print(e.code); print(e.read().decode())\nexcept Exception:\n print(0)"
    );
    let out = ns.exec("python3", &["-c", &script]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (code, body) = text.split_once('\n').unwrap_or((text.trim(), ""));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// Sends SIGTERM to `child` and returns how long it took to exit, asserting
/// that it exited by itself with status 0.
fn terminate(name: &str, mut child: Child, log: &Path) -> Duration {
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(sent.success(), "SIGTERM to {name}");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{name} ignored SIGTERM for 10 s (the kubelet would SIGKILL it after 30 s):\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let took = start.elapsed();
    let log = std::fs::read_to_string(log).unwrap_or_default();
    assert!(
        status.success(),
        "{name} must exit cleanly on SIGTERM, not die of it: {status}\n{log}"
    );
    assert!(log.contains("SIGTERM"), "{name} logs why it stops:\n{log}");
    eprintln!("{name}: exited {took:?} after SIGTERM");
    took
}

#[test]
fn an_agent_without_its_client_secret_routes_from_the_node_objects_then_goes_on() {
    let bins = Binaries::locate();
    let pins = run_bpffs();
    let ns = Netns::new("boot");
    // The node's underlay: n1 is 192.168.77.1, its neighbours n2 and n3.
    ns.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"]);
    ns.ip(&["link", "set", "eth0p", "up"]);
    ns.ip(&["addr", "add", "192.168.77.1/24", "dev", "eth0"]);
    ns.ip(&["link", "set", "eth0", "up"]);
    let dir = knit_e2e::TempDir::new("bootstrap");
    let source = dir.path().join("source");
    std::fs::create_dir_all(&source).unwrap();
    let nodes = [
        ("n1", "192.168.77.1", "10.1.1.0/24"),
        ("n2", "192.168.77.2", "10.1.2.0/24"),
        ("n3", "192.168.77.3", "10.1.3.0/24"),
    ]
    .iter()
    .map(|(n, ip, cidr)| knit_e2e::manifests::node(n, ip, cidr))
    .collect::<String>();
    std::fs::write(source.join("nodes.yaml"), nodes).unwrap();
    let secret = dir.path().join("secret");
    let config = secret.join("config.yaml");
    let log = dir.path().join("agent.log");
    let args = vec![
        "--cluster-name=cluster-a".to_owned(),
        "--node-name=n1".into(),
        format!("--etcd-config={}", config.display()),
        format!("--bpf-pin-dir={}", pins.path().join("boot-pins").display()),
        format!("--source-dir={}", source.display()),
        "--poll-interval=1s".into(),
        "--direct-node-routes=always".into(),
        "--metrics-addr=127.0.0.1:9964".into(),
        format!("--api-socket={}", dir.path().join("agent.sock").display()),
    ];
    let agent = spawn_in(&ns, &bins.agent, &args, &log);
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();

    let routes = || String::from_utf8_lossy(&ns.ip(&["route", "show"]).stdout).into_owned();
    wait_until(
        "routes to n2 and n3 from the Node objects",
        Duration::from_secs(30),
        || {
            let r = routes();
            r.contains("10.1.2.0/24 via 192.168.77.2") && r.contains("10.1.3.0/24 via 192.168.77.3")
        },
    );
    assert!(
        !routes().contains("10.1.1.0/24 via"),
        "no route to its own pods:\n{}",
        routes()
    );
    let (code, body) = readyz(&ns, 9964);
    assert_eq!(code, 503, "not ready without its kvstore: {body}");
    assert!(
        body.contains("knit-local-client-cert"),
        "says what it waits for: {body}"
    );
    assert!(
        log_text().contains("datapath loaded"),
        "the datapath loads before the Secret exists:\n{}",
        log_text()
    );

    // The kubelet fills the optional volume in once the operator creates
    // the Secret: the agent goes on to the kvstore (which this test does
    // not run).
    std::fs::create_dir_all(&secret).unwrap();
    std::fs::write(
        &config,
        "endpoints: [\"https://127.0.0.1:2379\"]\ntrusted-ca-file: ca.crt\ncert-file: tls.crt\nkey-file: tls.key\n",
    )
    .unwrap();
    wait_until(
        "the agent to see its client config",
        Duration::from_secs(10),
        || log_text().contains("kvstore client config mounted"),
    );
    wait_until("/readyz to name the next wait", Duration::from_secs(10), || {
        !readyz(&ns, 9964).1.contains("knit-local-client-cert")
    });
    assert!(
        routes().contains("10.1.2.0/24 via 192.168.77.2"),
        "the routes stay"
    );

    terminate("knit-agent", agent, &log);
}

#[test]
fn every_binary_stops_cleanly_on_sigterm() {
    let bins = Binaries::locate();
    let dir = knit_e2e::TempDir::new("sigterm");
    // Each waits for something that never comes: the apiserver for its
    // etcd, the operator for the Kubernetes API, the agent for its client
    // config.
    let etcd_config = dir.path().join("etcd.yaml");
    std::fs::write(
        &etcd_config,
        "endpoints: [\"https://127.0.0.1:1\"]\ntrusted-ca-file: ca.crt\ncert-file: tls.crt\nkey-file: tls.key\n",
    )
    .unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: none\n  cluster:\n    server: https://127.0.0.1:1\n    insecure-skip-tls-verify: true\nusers:\n- name: none\n  user:\n    token: none\ncontexts:\n- name: none\n  context:\n    cluster: none\n    user: none\ncurrent-context: none\n",
    )
    .unwrap();
    let operator_config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/operator/config.yaml");
    let pins = run_bpffs();
    let cases: Vec<(&str, &Path, Vec<String>, &str)> = vec![
        (
            "knit-apiserver",
            &bins.apiserver,
            vec![
                "--cluster-name=cluster-a".into(),
                "--cluster-id=1".into(),
                format!("--etcd-config={}", etcd_config.display()),
            ],
            "waiting for the local etcd",
        ),
        (
            "knit-operator",
            &bins.operator,
            vec![format!("--config={}", operator_config.display())],
            "starting knit-operator",
        ),
        (
            "knit-agent",
            &bins.agent,
            vec![
                "--cluster-name=cluster-a".into(),
                "--node-name=n1".into(),
                "--etcd-config=/nonexistent/knit-test/config.yaml".into(),
                format!("--bpf-pin-dir={}", pins.path().join("term-pins").display()),
                format!("--source-dir={}", dir.path().display()),
                format!("--api-socket={}", dir.path().join("agent.sock").display()),
            ],
            "waiting for the kvstore client config",
        ),
    ];
    for (name, bin, args, started) in cases {
        let ns = Netns::new(&format!("term-{}", &name[5..]));
        let log = dir.path().join(format!("{name}.log"));
        let mut child = {
            let out = std::fs::File::create(&log).unwrap();
            Command::new("ip")
                .args(["netns", "exec", ns.name()])
                .arg(bin)
                .args(&args)
                .env("KUBECONFIG", &kubeconfig)
                .env("RUST_LOG", "info")
                .stdout(out.try_clone().unwrap())
                .stderr(out)
                .stdin(Stdio::null())
                .spawn()
                .expect("spawn")
        };
        wait_until(&format!("{name} to start"), Duration::from_secs(30), || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "{name} exited before SIGTERM ({status}):\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::fs::read_to_string(&log).is_ok_and(|l| l.contains(started))
        });
        // `ip netns exec` execs the binary, so the child's PID is the binary's.
        terminate(name, child, &log);
    }
}
