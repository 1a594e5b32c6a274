//! The mesh's shape: typed ids of clusters, nodes and pods, what each of
//! them holds, the binaries it runs and how they hang on the underlay.
//!
//! Ids are positions: [`ClusterId`]`(0)` is cluster-a (cluster ID 1),
//! [`NodeId`] is a node of a cluster, [`PodId`] is what
//! [`LocalMesh::add_pod`](super::LocalMesh::add_pod) returned.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::cluster::TestCluster;
use crate::cni::{CniRuntime, Sandbox};
use crate::netns::Netns;
use crate::process::ChildProcess;

/// A cluster of the mesh, by position: `ClusterId(0)` is `cluster-a`
/// (cluster ID 1), `ClusterId(1)` is `cluster-b`, …
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClusterId(pub usize);

impl ClusterId {
    /// `cluster-a`, `cluster-b`, …
    pub fn name(self) -> String {
        format!("cluster-{}", self.letter())
    }

    /// The cluster ID in the mesh (1, 2, …).
    pub fn mesh_id(self) -> u16 {
        (self.0 + 1) as u16
    }

    /// Node `index` (from 0) of this cluster.
    pub fn node(self, index: usize) -> NodeId {
        NodeId { cluster: self, index }
    }

    /// `a`, `b`, …: the short form in namespace and interface names.
    pub(super) fn letter(self) -> char {
        (b'a' + self.0 as u8) as char
    }
}

/// A node: its cluster and its position there (from 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId {
    /// The node's cluster.
    pub cluster: ClusterId,
    /// Position in the cluster (node names count from 1).
    pub index: usize,
}

impl NodeId {
    /// `a-n1`-style tag used in namespace and directory names.
    pub(super) fn tag(self) -> String {
        format!("{}-n{}", self.cluster.letter(), self.index + 1)
    }
}

/// A pod the mesh made, as returned by
/// [`LocalMesh::add_pod`](super::LocalMesh::add_pod) or
/// [`LocalMesh::create_sandbox`](super::LocalMesh::create_sandbox).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodId(pub(super) usize);

/// The binaries the mesh runs.
#[derive(Clone, Debug)]
pub struct Binaries {
    /// knit-apiserver.
    pub apiserver: PathBuf,
    /// knit-agent.
    pub agent: PathBuf,
    /// knitctl.
    pub knitctl: PathBuf,
    /// knit-probe.
    pub probe: PathBuf,
    /// knit-cni.
    pub cni: PathBuf,
    /// knit-service-proxy, the Services of a replicated control plane (not
    /// checked for: a previous release has none, the harness runs the one
    /// under test).
    pub service_proxy: PathBuf,
    /// knit-operator (not checked for: the kernel VMs of `make
    /// test-kernels` carry only what the datapath tests run).
    pub operator: PathBuf,
}

impl Binaries {
    /// Finds the binaries next to the running test (`target/<profile>/`).
    pub fn locate() -> Self {
        let exe = std::env::current_exe().expect("current exe");
        let dir = exe
            .ancestors()
            .find(|d| d.join("knit-agent").exists())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| {
                panic!(
                    "knit-agent not found above {}: run `cargo build --workspace --bins` first",
                    exe.display()
                )
            });
        Self::in_dir(&dir)
    }

    /// The binaries in `dir` (a cargo profile directory).
    pub fn in_dir(dir: &Path) -> Self {
        let bin = |n: &str| {
            let p = dir.join(n);
            assert!(
                p.exists(),
                "{} missing: run `cargo build --workspace --bins`",
                p.display()
            );
            p
        };
        Self {
            apiserver: bin("knit-apiserver"),
            agent: bin("knit-agent"),
            knitctl: bin("knitctl"),
            probe: bin("knit-probe"),
            cni: bin("knit-cni"),
            service_proxy: dir.join("knit-service-proxy"),
            operator: dir.join("knit-operator"),
        }
    }
}

/// Shape of the mesh.
#[derive(Clone, Debug)]
pub struct MeshOptions {
    /// Number of clusters (named cluster-a, cluster-b, …; IDs 1, 2, …).
    pub clusters: usize,
    /// Nodes per cluster.
    pub nodes: usize,
    /// The apiservers' `--grace-period`.
    pub grace_period: String,
    /// More arguments for every agent.
    pub agent_args: Vec<String>,
    /// The apiservers' `--lease-ttl` in seconds (10: leases of a stopped
    /// apiserver lapse quickly in the fault tests; production's is 30).
    pub lease_ttl_secs: u32,
    /// A second pod CIDR for one cluster, beside its `10.<id>.0.0/16`
    /// (room for the benchmarks' 100,000 endpoints).
    pub extra_pod_cidr: Option<(ClusterId, String)>,
    /// MTU of the underlay (every node's `eth0` and the bridge's ports);
    /// pods get this less the tunnel's overhead, as install-cni gives them.
    pub underlay_mtu: u32,
    /// Agents encrypt with WireGuard (`--encryption=wireguard`), and pods
    /// get 60 bytes less MTU for it, as install-cni gives them.
    pub encrypted: bool,
    /// Clusters whose agents run without encryption even when `encrypted`
    /// (a mixed mesh).
    pub plaintext_clusters: Vec<ClusterId>,
    /// Routing mode of each cluster by position (agents' and apiserver's
    /// `--routing-mode`); clusters past the end tunnel.
    pub routing_modes: Vec<knit_kvstore::records::RoutingMode>,
    /// Knit's components (apiserver, agent, knit-cni) of some clusters from
    /// other builds than the one under test: a previous release, say
    /// ([`crate::previous`]). Clusters not listed run the ones under test.
    pub binaries: Vec<(ClusterId, Binaries)>,
    /// Mesh apiserver replicas per cluster. With more than one, each
    /// replica (etcd + apiserver) has a namespace of its own, and the
    /// control-plane namespace runs `knit-service-proxy` at the cluster's
    /// address in front of them, as the Services do in Kubernetes.
    pub apiserver_replicas: usize,
}

impl MeshOptions {
    /// Cluster `c`'s routing mode.
    pub fn routing_mode(&self, c: ClusterId) -> knit_kvstore::records::RoutingMode {
        self.routing_modes.get(c.0).copied().unwrap_or_default()
    }

    /// The MTU cluster `c`'s conflists give pods: the underlay's outside
    /// tunnel mode (routes into the tunnel carry the smaller one).
    pub fn pod_mtu_in(&self, c: ClusterId) -> u32 {
        if self.routing_mode(c) != knit_kvstore::records::RoutingMode::Tunnel {
            return self.underlay_mtu;
        }
        self.pod_mtu()
    }

    /// The MTU tunnel-mode conflists give pods.
    pub fn pod_mtu(&self) -> u32 {
        let overhead = if self.encrypted {
            knit_agent::encryption::node::WIREGUARD_OVERHEAD
        } else {
            0
        };
        knit_cni::conflist::pod_mtu(self.underlay_mtu) - overhead
    }
}

impl Default for MeshOptions {
    fn default() -> Self {
        Self {
            clusters: 2,
            nodes: 2,
            grace_period: "4s".into(),
            agent_args: Vec::new(),
            extra_pod_cidr: None,
            lease_ttl_secs: 10,
            underlay_mtu: 1500,
            encrypted: false,
            plaintext_clusters: Vec::new(),
            routing_modes: Vec::new(),
            binaries: Vec::new(),
            apiserver_replicas: 1,
        }
    }
}

/// One node: a namespace running knit-agent.
pub struct MeshNode {
    pub(super) agent: Option<ChildProcess>,
    /// Node name.
    pub name: String,
    /// Underlay address.
    pub ip: String,
    /// Pod CIDR (`10.<cluster id>.<node+1>.0/24`).
    pub pod_cidr: String,
    /// The node's namespace.
    pub netns: Netns,
    /// The node's CNI: its conflist, plugin directory and result cache.
    pub cni: CniRuntime,
    /// knit-cni's state directory (the agent's `--cni-state-dir`).
    pub cni_state_dir: PathBuf,
    pub(super) pin_dir: PathBuf,
    pub(super) cgroup: PathBuf,
    pub(super) next_pod: u8,
    /// Whether its agent writes its status into every replica (a build
    /// that knows `--etcd-replicas`, with replicas).
    pub(super) status_in_every_replica: bool,
}

impl Drop for MeshNode {
    fn drop(&mut self) {
        if let Some(mut a) = self.agent.take() {
            a.stop();
        }
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

/// One cluster: a control-plane namespace and its nodes.
pub struct MeshCluster {
    /// Nodes (dropped first: agents stop before the control plane).
    pub nodes: Vec<MeshNode>,
    /// etcd, certificates, apiserver.
    pub control: TestCluster,
    /// The Services in front of the replicas (stopped before the
    /// namespaces go).
    pub(super) service_proxy: Option<ChildProcess>,
    /// Control-plane namespace.
    pub cp: Netns,
    /// Control-plane underlay address: the Services' address with
    /// replicas.
    pub cp_ip: String,
    /// The replicas' namespaces (none with a single replica, which runs in
    /// `cp`), dropped after the control plane.
    pub replica_netns: Vec<Netns>,

    pub(super) agent_config: PathBuf,
    /// The build its apiserver, agents and knit-cni run (from the next
    /// start of each on).
    pub bins: Binaries,
}

/// A pod: a namespace attached to a node by the CNI, in its own cgroup.
pub struct Pod {
    pub(super) server: Option<ChildProcess>,
    /// The sandbox as the CNI knows it.
    pub sandbox: Sandbox,
    /// Whether CNI DEL has run for it.
    pub deleted: bool,
    /// The node it runs on.
    pub node: NodeId,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// IP.
    pub ip: Ipv4Addr,
    /// The pod's network namespace.
    pub netns: Netns,
    /// The pod's cgroup.
    pub cgroup: PathBuf,
}

/// Underlay address of a cluster's control plane (`slot` 0), node (`slot`
/// = index + 1) or mesh apiserver replica (`slot` = [`REPLICA_SLOT`] + index).
pub(super) fn underlay_ip(cluster: ClusterId, slot: usize) -> String {
    assert!(slot < 10, "a cluster has 10 underlay addresses");
    format!("192.168.50.{}", 10 + cluster.0 * 10 + slot)
}

/// The first underlay slot of a cluster's replicas (after up to 6 nodes).
pub(super) const REPLICA_SLOT: usize = 7;

/// Connects `ns` to the underlay bridge with `ip`/24 on its `eth0`.
pub(super) fn attach_underlay(underlay: &Netns, ns: &Netns, bridge_side: &str, ip: &str, mtu: u32) {
    underlay.veth_to(bridge_side, ns, "eth0");
    let mtu = mtu.to_string();
    underlay.ip(&["link", "set", bridge_side, "mtu", &mtu]);
    ns.ip(&["link", "set", "eth0", "mtu", &mtu]);
    underlay.ip(&["link", "set", bridge_side, "master", "br0"]);
    ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
}
