//! One pod's whole life through a real container runtime: Debian's
//! containerd and runc create it from an image built here, `ctr run --cni`
//! attaches it through the node's conflist (`ptp` + `host-local` +
//! `portmap` + `knit-cni`), Knit routes it across clusters both ways, and
//! when the task dies ctr runs CNI DEL and Knit forgets it. Runs as root;
//! see `knit_e2e::container` for how containerd is kept inside the test's
//! own mount and network namespaces.

use std::net::Ipv4Addr;
use std::time::Duration;

use knit_cni::attachment::AttachmentStore;
use knit_e2e::TempDir;
use knit_e2e::container::{Containerd, NodeCni, build_image};
use knit_e2e::mesh::{ClusterId, Hits, LocalMesh, MeshOptions, SERVER_PORT};

const A: ClusterId = ClusterId(0);
const B: ClusterId = ClusterId(1);

#[test]
fn a_pod_made_by_containerd_and_runc_joins_the_mesh_and_leaves_it() {
    let mut mesh = LocalMesh::start(MeshOptions {
        clusters: 2,
        nodes: 1,
        ..MeshOptions::default()
    });
    let client_b = mesh.add_pod(B.node(0), "shop", "client", &[("app", "client")]);
    let web_b = mesh.add_pod(B.node(0), "shop", "web", &[("app", "web")]);
    let dir = TempDir::new("containerd");
    let image = build_image(
        &dir.path().join("image"),
        "knit.local/probe:test",
        &mesh.bins.probe,
    );
    let node = mesh.node(A.node(0));
    let runtime = Containerd::start(
        &dir.path().join("runtime"),
        &NodeCni {
            netns: node.netns.name(),
            conflist: &node.cni.conflist,
            bin_dir: &node.cni.bin_dir,
        },
    );
    runtime.import(&image);

    // Create: ctr makes the container, its namespace, and runs CNI ADD.
    let server_name = format!("{}/ctr-web", A.name());
    let mut run = runtime.run(
        &image,
        "web",
        &[
            "/knit-probe",
            "serve",
            "--name",
            &server_name,
            "--port",
            &SERVER_PORT.to_string(),
        ],
    );
    let cni_id = Containerd::cni_container_id("web");
    let attachments = AttachmentStore::new(&node.cni_state_dir);
    let mut ip = None;
    mesh.wait_until("ctr's CNI ADD to reach knit-cni", Duration::from_secs(30), || {
        assert!(run.is_running(), "ctr run ended early: {}", run.log_tail());
        ip = attachments
            .list()
            .ok()
            .and_then(|(list, _)| list.into_iter().find(|a| a.container_id == cni_id))
            .and_then(|a| {
                a.ips.into_iter().find_map(|ip| match ip {
                    std::net::IpAddr::V4(v4) => Some(v4),
                    std::net::IpAddr::V6(_) => None,
                })
            });
        ip.is_some()
    });
    let ip: Ipv4Addr = ip.expect("an IPv4 address");
    let pod_cidr: ipnet::Ipv4Net = node.pod_cidr.parse().unwrap();
    assert!(
        pod_cidr.contains(&ip),
        "{ip} is not from the node's podCIDR {pod_cidr}"
    );
    mesh.register_pod(A.node(0), "shop", "ctr-web", ip, &[("app", "web")]);

    // Running: reached from the other cluster, and reaching it.
    mesh.wait_for_hits("cluster-b -> the containerd pod", client_b, ip, false, |h| {
        h.names.get(&server_name) == Some(&40)
    });
    let target = format!("{}:{SERVER_PORT}", mesh.pod(web_b).ip);
    let out = runtime.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "probe",
        "web",
        "/knit-probe",
        "hits",
        "--to",
        &target,
        "--count",
        "20",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    let hits: Hits = serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "ctr task exec printed {text:?} ({e}); stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(
        hits.names.get(&format!("{}/web", B.name())),
        Some(&20),
        "the containerd pod -> cluster-b: {hits:?}"
    );

    // Delete: the task dies, ctr runs CNI DEL and removes the container.
    let host_interface = attachments
        .list()
        .unwrap()
        .0
        .into_iter()
        .find(|a| a.container_id == cni_id)
        .unwrap()
        .host_interface;
    let killed = runtime.kill("web");
    assert!(
        killed.status.success(),
        "ctr task kill: {}",
        String::from_utf8_lossy(&killed.stderr)
    );
    mesh.remove_manifest(A, "pod-shop-ctr-web.yaml");
    let (_, log) = run.wait();
    assert!(
        !log.contains("failed to destroy network"),
        "ctr's CNI DEL failed: {log}"
    );
    assert!(runtime.containers().is_empty(), "ctr run --rm left a container");
    let left = attachments.list().unwrap().0;
    assert!(
        left.iter().all(|a| a.container_id != cni_id),
        "knit-cni kept the attachment after DEL: {left:?}"
    );
    let links = String::from_utf8_lossy(&node.netns.ip(&["-o", "link", "show"]).stdout).into_owned();
    assert!(
        !links.contains(&format!("{host_interface}@")),
        "ptp's host veth {host_interface} survived DEL: {links}"
    );
    mesh.wait_until(
        "the old pod IP to stop answering",
        Duration::from_secs(30),
        || mesh.hits(client_b, ip, 5, false).total() == 0,
    );
}
