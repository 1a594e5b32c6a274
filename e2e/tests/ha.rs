//! Faults of a cluster's control plane under steady cross-cluster traffic,
//! while pods and global-service backends change in both clusters: every
//! fault fails 0 requests, and what changed reaches the other cluster's
//! agents, with the time that took printed.
//!
//! - One replica (`apiserver.replicas: 1`): its etcd container crashes and
//!   restarts on its data (the pod's memory volume outlives the
//!   container), its apiserver container crashes and restarts beside a
//!   live etcd, and the pod is replaced (a new, empty etcd). Changes made
//!   during a fault arrive after it ends.
//! - Two replicas per cluster (the default), behind the local mesh's
//!   Service proxy: one replica's pod is killed, or its etcd, and changes
//!   made meanwhile arrive **while the fault lasts**, through the other
//!   replica; killed pods come back empty, and the next fault kills the
//!   other replica, so readers must move to the one that came back.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use knit_e2e::mesh::{ClusterId, GlobalService, LocalMesh, MeshOptions, NodeId, PodId, SERVER_PORT};

const A: ClusterId = ClusterId(0);
const B: ClusterId = ClusterId(1);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 11, 1);

/// Whether node `n`'s datapath maps `ip` (its ipcache, read by knitctl).
fn in_ipcache(mesh: &LocalMesh, n: NodeId, ip: Ipv4Addr) -> bool {
    let out = mesh.knitctl_agent(n, &["ipcache", "-o", "json"]);
    let tables: Vec<knit_agent_api::IpcacheTable> = serde_json::from_str(&out).unwrap();
    let prefix = format!("{ip}/32");
    tables[0].entries.iter().any(|e| e.prefix == prefix)
}

/// The global service's backends: `web` pods of each cluster.
fn deploy_web(mesh: &LocalMesh, webs: &[(ClusterId, PodId)]) {
    for c in [A, B] {
        let backends = webs.iter().filter(|(of, _)| *of == c).map(|(_, p)| *p).collect();
        mesh.deploy_service(c, &GlobalService::web(VIP, backends));
    }
}

/// How a fault starts and ends.
struct Fault {
    name: &'static str,
    start: fn(&mut LocalMesh),
    end: fn(&mut LocalMesh),
}

/// Runs `fault`: while it lasts, a new `web` pod in each cluster joins the
/// global service. Returns how long after the fault ended the other
/// cluster's client node mapped each new pod and its client was answered
/// by it through the VIP.
fn run_fault(
    mesh: &mut LocalMesh,
    fault: &Fault,
    webs: &mut Vec<(ClusterId, PodId)>,
    clients: [PodId; 2],
) -> Vec<(String, Duration)> {
    (fault.start)(mesh);
    std::thread::sleep(Duration::from_secs(1));
    let new_a = mesh.add_pod(A.node(0), "shop", &format!("{}-a", fault.name), &[("app", "web")]);
    let new_b = mesh.add_pod(B.node(0), "shop", &format!("{}-b", fault.name), &[("app", "web")]);
    webs.extend([(A, new_a), (B, new_b)]);
    deploy_web(mesh, webs);
    std::thread::sleep(Duration::from_secs(2));
    (fault.end)(mesh);
    let ended = Instant::now();
    let mut seen = Vec::new();
    for (pod, watcher, client) in [(new_b, A.node(1), clients[0]), (new_a, B.node(1), clients[1])] {
        let (ip, name) = (mesh.pod(pod).ip, mesh.pod(pod).name.clone());
        let of = mesh.pod(pod).node.cluster.name();
        let node = mesh.node(watcher).name.clone();
        mesh.wait_until(
            &format!("{name} in {node}'s ipcache"),
            Duration::from_secs(60),
            || in_ipcache(mesh, watcher, ip),
        );
        seen.push((format!("{of}/{name} mapped on {node}"), ended.elapsed()));
        let server = format!("{of}/{name}");
        mesh.wait_for_hits(&format!("{server} behind the VIP"), client, VIP, false, |h| {
            h.names.contains_key(&server)
        });
        seen.push((format!("{server} answering the VIP"), ended.elapsed()));
    }
    seen
}

#[test]
fn control_plane_faults_fail_no_request_and_changes_propagate() {
    let mut mesh = LocalMesh::start(MeshOptions {
        clusters: 2,
        nodes: 2,
        ..MeshOptions::default()
    });
    let client_a = mesh.add_pod(A.node(1), "shop", "client-a", &[("app", "client")]);
    let client_b = mesh.add_pod(B.node(1), "shop", "client-b", &[("app", "client")]);
    let web_a = mesh.add_pod(A.node(0), "shop", "web-a", &[("app", "web")]);
    let web_b = mesh.add_pod(B.node(0), "shop", "web-b", &[("app", "web")]);
    let mut webs = vec![(A, web_a), (B, web_b)];
    deploy_web(&mesh, &webs);
    for client in [client_a, client_b] {
        mesh.wait_for_hits("the VIP to reach both clusters", client, VIP, false, |h| {
            h.names.len() == 2
        });
    }

    let stop = knit_e2e::TempDir::new("ha");
    let stop = stop.path().join("stop");
    let addr = |p: PodId| SocketAddrV4::new(mesh.pod(p).ip, SERVER_PORT);
    let vip = SocketAddrV4::new(VIP, SERVER_PORT);
    let mut steady = vec![
        mesh.start_steady_client(client_a, addr(web_b), &stop, "a to b pod"),
        mesh.start_steady_client(client_b, addr(web_a), &stop, "b to a pod"),
        mesh.start_steady_client(client_a, vip, &stop, "a to VIP"),
        mesh.start_steady_client(client_b, vip, &stop, "b to VIP"),
    ];
    std::thread::sleep(Duration::from_secs(2));

    let faults = [
        Fault {
            name: "etcd-crash",
            start: |m| m.stop_etcd(A),
            end: |m| m.start_etcd(A),
        },
        Fault {
            name: "apiserver-crash",
            start: |m| m.stop_apiserver(B),
            end: |m| m.restart_apiserver_with(B, &[]),
        },
        Fault {
            name: "pod-replaced",
            start: |m| {
                m.stop_control_plane(A);
                m.wipe_etcd(A);
            },
            end: |m| m.start_control_plane(A),
        },
    ];
    let mut report = Vec::new();
    for fault in &faults {
        let seen = run_fault(&mut mesh, fault, &mut webs, [client_a, client_b]);
        for (what, took) in &seen {
            eprintln!(
                "{}: {what} {:.1} s after the fault ended",
                fault.name,
                took.as_secs_f64()
            );
        }
        report.push((fault.name, seen));
        std::thread::sleep(Duration::from_secs(2));
    }
    std::fs::write(&stop, "").unwrap();
    knit_e2e::mesh::assert_no_failures(&mesh, &mut steady, 300, &format!("during the faults: {report:?}"));
}

/// Runs a fault of one replica: while it lasts, a new `web` pod in each
/// cluster joins the global service, and the other cluster must map it and
/// be answered by it before the fault ends. Returns how long after the
/// change each took.
fn run_replica_fault(
    mesh: &mut LocalMesh,
    fault: &Fault,
    webs: &mut Vec<(ClusterId, PodId)>,
    clients: [PodId; 2],
) -> Vec<(String, Duration)> {
    (fault.start)(mesh);
    std::thread::sleep(Duration::from_secs(1));
    let changed = Instant::now();
    let new_a = mesh.add_pod(A.node(0), "shop", &format!("{}-a", fault.name), &[("app", "web")]);
    let new_b = mesh.add_pod(B.node(0), "shop", &format!("{}-b", fault.name), &[("app", "web")]);
    webs.extend([(A, new_a), (B, new_b)]);
    deploy_web(mesh, webs);
    let mut seen = Vec::new();
    for (pod, watcher, client) in [(new_b, A.node(1), clients[0]), (new_a, B.node(1), clients[1])] {
        let (ip, name) = (mesh.pod(pod).ip, mesh.pod(pod).name.clone());
        let of = mesh.pod(pod).node.cluster.name();
        let node = mesh.node(watcher).name.clone();
        mesh.wait_until(
            &format!("{name} in {node}'s ipcache during the fault"),
            Duration::from_secs(60),
            || in_ipcache(mesh, watcher, ip),
        );
        seen.push((format!("{of}/{name} mapped on {node}"), changed.elapsed()));
        let server = format!("{of}/{name}");
        mesh.wait_for_hits(&format!("{server} behind the VIP"), client, VIP, false, |h| {
            h.names.contains_key(&server)
        });
        seen.push((format!("{server} answering the VIP"), changed.elapsed()));
    }
    (fault.end)(mesh);
    seen
}

#[test]
fn replica_faults_fail_no_request_and_changes_propagate_while_they_last() {
    let mut mesh = LocalMesh::start(MeshOptions {
        clusters: 2,
        nodes: 2,
        apiserver_replicas: 2,
        ..MeshOptions::default()
    });
    let client_a = mesh.add_pod(A.node(1), "shop", "client-a", &[("app", "client")]);
    let client_b = mesh.add_pod(B.node(1), "shop", "client-b", &[("app", "client")]);
    let web_a = mesh.add_pod(A.node(0), "shop", "web-a", &[("app", "web")]);
    let web_b = mesh.add_pod(B.node(0), "shop", "web-b", &[("app", "web")]);
    let mut webs = vec![(A, web_a), (B, web_b)];
    deploy_web(&mesh, &webs);
    for client in [client_a, client_b] {
        mesh.wait_for_hits("the VIP to reach both clusters", client, VIP, false, |h| {
            h.names.len() == 2
        });
    }

    let stop = knit_e2e::TempDir::new("ha-replicas");
    let stop = stop.path().join("stop");
    let addr = |p: PodId| SocketAddrV4::new(mesh.pod(p).ip, SERVER_PORT);
    let vip = SocketAddrV4::new(VIP, SERVER_PORT);
    let mut steady = vec![
        mesh.start_steady_client(client_a, addr(web_b), &stop, "a to b pod"),
        mesh.start_steady_client(client_b, addr(web_a), &stop, "b to a pod"),
        mesh.start_steady_client(client_a, vip, &stop, "a to VIP"),
        mesh.start_steady_client(client_b, vip, &stop, "b to VIP"),
    ];
    std::thread::sleep(Duration::from_secs(2));

    // A killed replica comes back as a new, empty pod; each is synced
    // again before the next fault, which takes the other one.
    let faults = [
        Fault {
            name: "a-replica0-killed",
            start: |m| m.stop_replica(A, 0),
            end: |m| {
                m.wipe_replica(A, 0);
                m.start_replica(A, 0);
            },
        },
        Fault {
            name: "a-replica1-killed",
            start: |m| m.stop_replica(A, 1),
            end: |m| {
                m.wipe_replica(A, 1);
                m.start_replica(A, 1);
            },
        },
        Fault {
            name: "b-replica0-etcd-crash",
            start: |m| m.stop_replica_etcd(B, 0),
            end: |m| m.start_replica_etcd(B, 0),
        },
        Fault {
            name: "b-replica1-killed",
            start: |m| m.stop_replica(B, 1),
            end: |m| {
                m.wipe_replica(B, 1);
                m.start_replica(B, 1);
            },
        },
    ];
    let mut report = Vec::new();
    for fault in &faults {
        let seen = run_replica_fault(&mut mesh, fault, &mut webs, [client_a, client_b]);
        for (what, took) in &seen {
            eprintln!(
                "{}: {what} {:.1} s after the change",
                fault.name,
                took.as_secs_f64()
            );
        }
        report.push((fault.name, seen));
        let endpoints = webs.len() / 2 + 1;
        let ended = Instant::now();
        for c in [A, B] {
            for r in 0..2 {
                mesh.wait_replica_synced(c, r, endpoints);
            }
        }
        eprintln!(
            "{}: every replica synced {:.1} s after the fault ended",
            fault.name,
            ended.elapsed().as_secs_f64()
        );
    }
    for c in [A, B] {
        eprintln!("{} service proxy:\n{}", c.name(), mesh.service_proxy_log(c));
    }
    std::fs::write(&stop, "").unwrap();
    knit_e2e::mesh::assert_no_failures(&mesh, &mut steady, 300, &format!("during the faults: {report:?}"));
}

/// The node records replica `r` of cluster `c` holds now, each with
/// whether it carries a WireGuard key (read from the replica's own etcd).
fn exported_node_keys(mesh: &LocalMesh, c: ClusterId, r: usize) -> Vec<(String, bool)> {
    let prefix = format!("{}nodes/", knit_kvstore::cluster_prefix(&c.name()));
    let (_, out) = knit_e2e::mesh::etcdctl_in(
        mesh.cluster(c).replica_netns[r].name(),
        &mesh.cluster(c).control.admin_config(),
        "https://127.0.0.1:2379",
        &["get", "--prefix", &prefix, "--print-value-only"],
    );
    out.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| {
            let name = v["name"].as_str().unwrap_or_default().to_owned();
            (name, v.get("wireguard").is_some_and(|w| !w.is_null()))
        })
        .collect()
}

#[test]
fn a_replica_that_starts_empty_exports_every_node_with_its_key() {
    let mut mesh = LocalMesh::start(MeshOptions {
        clusters: 2,
        nodes: 2,
        encrypted: true,
        apiserver_replicas: 2,
        ..MeshOptions::default()
    });
    for r in 0..2 {
        mesh.wait_replica_synced(A, r, 0);
        assert!(exported_node_keys(&mesh, A, r).iter().all(|(_, keyed)| *keyed));
    }
    // A new pod of replica 0 (empty etcd), while the agents still write
    // into replica 1: from the first node record it exports on, each
    // carries its node's key; a record without one would strip the key
    // from every reader that moves to this replica.
    mesh.replace_replica(A, 0);
    let started = Instant::now();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "replica 0 exported {seen:?} within 60 s\n{}",
            mesh.logs()
        );
        seen = exported_node_keys(&mesh, A, 0);
        let unkeyed: Vec<_> = seen.iter().filter(|(_, keyed)| !keyed).collect();
        assert!(
            unkeyed.is_empty(),
            "replica 0 exported {unkeyed:?} without a key {:.1} s after it started",
            started.elapsed().as_secs_f64()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "replica 0 exported both nodes with their keys {:.1} s after it started",
        started.elapsed().as_secs_f64()
    );
}
