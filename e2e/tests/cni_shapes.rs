//! Pods made through the CNI configs real clusters ship, each at its own
//! cniVersion, with Knit chained in by the installer's own
//! [`knit_cni::conflist::chain`], on a node of the local mesh:
//!
//! | shape | file (cni/tests/fixtures) | cniVersion | plugins before knit |
//! |---|---|---|---|
//! | kindnet | `kindnet/10-kindnet.conflist` | 0.3.1 | ptp + host-local, portmap |
//! | Calico | `calico/10-calico.conflist` | 0.3.1 | a Calico stand-in (`e2e/cni-standins/calico`) + host-local, portmap, bandwidth |
//! | Multus | a thin Multus `.conf` delegating to kindnet's conflist | 0.3.1 | (the runtime plays Multus: it runs the delegate) |
//! | bridge `.conf` | `bridge-040/10-mynet.conf` | 0.4.0 | bridge + host-local |
//! | containerd | `containerd/10-containerd-net.conflist` | 1.0.0 | bridge + host-local, portmap |
//!
//! Each pod goes through ADD, CHECK where its version has it, real traffic
//! to and from a pod of the other cluster, and DEL twice. Every IPAM
//! section is pointed at the test node's pod CIDR and a state directory of
//! the test; nothing else of the shipped files changes. Runs as root.

use std::path::Path;

use knit_e2e::mesh::{ClusterId, LocalMesh, MeshOptions, NodeId, PodId};
use serde_json::{Value, json};

const A: ClusterId = ClusterId(0);
const B: ClusterId = ClusterId(1);

fn fixture(path: &str) -> Value {
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../cni/tests/fixtures")
        .join(path);
    serde_json::from_slice(&std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display())))
        .unwrap()
}

/// `conf` with every plugin's IPAM replaced by `ipam`, and Calico's
/// plugin fields kept (the stand-in ignores them).
fn with_ipam(mut conf: Value, ipam: &Value) -> Value {
    let plugins = match conf.get("plugins").is_some() {
        true => conf["plugins"]
            .as_array_mut()
            .expect("a list")
            .iter_mut()
            .collect::<Vec<_>>(),
        false => vec![&mut conf],
    };
    for p in plugins {
        if p.get("ipam").is_some() {
            p["ipam"] = ipam.clone();
        }
    }
    conf
}

struct Shape {
    name: &'static str,
    version: &'static str,
    /// The config with Knit chained in, as the runtime will run it.
    conflist: Value,
}

fn shapes(mesh: &LocalMesh, node: NodeId) -> Vec<Shape> {
    let default = &mesh.node(node).cni.conflist;
    let ipam = default["plugins"][0]["ipam"].clone();
    let state = default["plugins"][2]["stateDir"]
        .as_str()
        .map(std::path::PathBuf::from)
        .unwrap();
    let chain = |conf: Value| knit_cni::conflist::chain(&conf, &state).expect("chains");
    let kindnet = with_ipam(fixture("kindnet/10-kindnet.conflist"), &ipam);
    let multus = json!({"cniVersion": "0.3.1", "name": "multus-cni-network", "type": "multus",
        "kubeconfig": "/etc/cni/net.d/multus.d/multus.kubeconfig", "delegates": [kindnet.clone()]});
    let multus_chained = chain(multus);
    assert_eq!(multus_chained["type"], "multus", "Multus keeps its file");
    vec![
        Shape {
            name: "kindnet",
            version: "0.3.1",
            conflist: chain(kindnet),
        },
        Shape {
            name: "calico",
            version: "0.3.1",
            conflist: chain(with_ipam(fixture("calico/10-calico.conflist"), &ipam)),
        },
        Shape {
            name: "multus",
            version: "0.3.1",
            conflist: multus_chained["delegates"][0].clone(),
        },
        Shape {
            name: "bridge-conf",
            version: "0.4.0",
            conflist: chain(with_ipam(fixture("bridge-040/10-mynet.conf"), &ipam)),
        },
        Shape {
            name: "containerd",
            version: "1.0.0",
            conflist: chain(with_ipam(fixture("containerd/10-containerd-net.conflist"), &ipam)),
        },
    ]
}

fn hits_from(mesh: &LocalMesh, from: PodId, to: PodId) {
    let name = format!("{}/{}", mesh.pod(to).node.cluster.name(), mesh.pod(to).name);
    mesh.wait_for_hits(
        &format!("{} -> {name}", mesh.pod(from).name),
        from,
        mesh.pod(to).ip,
        false,
        |h| h.names.get(&name) == Some(&40),
    );
}

#[test]
fn pods_of_every_shipped_cni_shape_join_the_mesh() {
    let mut mesh = LocalMesh::start(MeshOptions {
        nodes: 1,
        ..MeshOptions::default()
    });
    let node = A.node(0);
    let peer = mesh.add_pod(B.node(0), "shop", "peer", &[("app", "peer")]);
    for shape in shapes(&mesh, node) {
        eprintln!("== {} at {}", shape.name, shape.version);
        assert_eq!(shape.conflist["cniVersion"], shape.version);
        mesh.set_conflist(node, shape.conflist.clone());
        let pod = mesh.add_pod(node, "shop", &format!("web-{}", shape.name), &[("app", "web")]);
        let sandbox = mesh.pod(pod).sandbox.clone();
        let result = mesh.cni_of(pod).cached(&sandbox).expect("a cached result");
        assert_eq!(
            result["cniVersion"], shape.version,
            "{}: answered in its own version",
            shape.name
        );

        let store = knit_cni::attachment::AttachmentStore::new(&mesh.node(node).cni_state_dir);
        let recorded = store
            .get(&sandbox.container_id, "eth0")
            .unwrap()
            .expect("attached");
        assert!(recorded.pod_mac.is_some(), "{}: {recorded:?}", shape.name);
        if shape.name == "calico" {
            assert!(recorded.host_interface.starts_with("cali"), "{recorded:?}");
        }

        if shape.version != "0.3.1" {
            mesh.cni_of(pod)
                .check(&sandbox)
                .unwrap_or_else(|e| panic!("{}: {e}", shape.name));
        }

        hits_from(&mesh, peer, pod);
        hits_from(&mesh, pod, peer);

        mesh.delete_pod(pod)
            .unwrap_or_else(|e| panic!("{}: DEL: {e}", shape.name));
        mesh.cni_of(pod)
            .del(&sandbox)
            .unwrap_or_else(|e| panic!("{}: second DEL: {e}", shape.name));
        assert!(
            store.get(&sandbox.container_id, "eth0").unwrap().is_none(),
            "{}",
            shape.name
        );
    }
}
