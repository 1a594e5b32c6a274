//! The local multi-cluster mesh, entirely inside network namespaces.
//!
//! ```text
//! underlay ns: bridge br0 ── veth ── <cluster>-cp ns  (etcd + knit-apiserver, directory source)
//!                        └── veth ── <cluster>-n<i> ns (knit-agent, VXLAN device, pod veths)
//!                                        └── veth ── pod ns (in its own cgroup v2 subtree)
//! ```
//!
//! Certificates and peer configs come from the operator's render code (what
//! `knitctl render` runs). Pods are made the way a container runtime makes
//! them: the harness creates the pod's namespace and cgroup, then runs the
//! node's conflist (Knit's default: `ptp` + `host-local`, `portmap`, `knit`)
//! through the CNI protocol ([`crate::cni`]); the reference plugins create
//! the veth and addresses and knit-cni hands the attachment to the agent.
//! The harness then writes the Pod YAML (with the IP the CNI gave) and the
//! Node/Service YAML the directory sources read.
//!
//! - [`topology`]: typed ids ([`ClusterId`], [`NodeId`], [`PodId`]) and
//!   what clusters, nodes and pods hold;
//! - this module: building the mesh, its control planes and agents;
//! - [`replicas`]: a mesh apiserver of several replicas behind a proxy;
//! - [`workloads`]: pods, Services and other manifests;
//! - [`probes`]: traffic and the answers counted ([`Hits`]).
//!
//! Everything is removed on drop; leftovers of a killed run are removed by
//! [`netns::clean_stale`] when the next mesh starts.

pub mod probes;
pub mod replicas;
pub mod topology;
pub mod workloads;

use std::process::Command;
use std::time::{Duration, Instant};

use knit_kvstore::EtcdClientConfig;

use crate::cluster::{NETNS_ETCD_PORT, TestCluster, full_mesh};
use crate::cni::CniRuntime;
use crate::netns::{self, BpffsRoot, CgroupRoot, Netns, sh};
use crate::process::{Placement, TempDir};
pub use probes::{Hits, SteadyClient, assert_no_failures};
pub use topology::{Binaries, ClusterId, MeshCluster, MeshNode, MeshOptions, NodeId, Pod, PodId};
use topology::{REPLICA_SLOT, attach_underlay, underlay_ip};
pub use workloads::GlobalService;

/// Port every probe server listens on (TCP and UDP).
pub const SERVER_PORT: u16 = 8080;

/// The whole mesh. Dropping it removes everything it made.
pub struct LocalMesh {
    /// Pods (dropped first).
    pods: Vec<Pod>,
    /// Clusters.
    clusters: Vec<MeshCluster>,
    underlay: Netns,
    cgroups: CgroupRoot,
    /// Pins of every agent; unmounted after the nodes are gone.
    _bpffs: BpffsRoot,
    /// One mesh per test process at a time (names and addresses repeat).
    _exclusive: std::sync::MutexGuard<'static, ()>,
    /// The binaries under test.
    pub bins: Binaries,
    options: MeshOptions,
    logs: TempDir,
    /// Plugin directory, host-local data, CNI caches and state.
    _cni: TempDir,
}

impl LocalMesh {
    /// Builds the mesh, starts every control plane and agent, and waits
    /// until every cluster has mirrored every peer.
    pub fn start(options: MeshOptions) -> Self {
        assert!(
            running_as_root(),
            "the local mesh needs root (network namespaces, eBPF, cgroups): run the tests as root"
        );
        static EXCLUSIVE: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let exclusive = EXCLUSIVE.lock().unwrap_or_else(|p| p.into_inner());
        netns::clean_stale();
        let bins = Binaries::locate();
        let underlay = Netns::new("ul");
        underlay.ip(&["link", "add", "br0", "type", "bridge"]);
        underlay.ip(&["link", "set", "br0", "up"]);
        let cgroups = CgroupRoot::new();
        let bpffs = netns::run_bpffs();
        let logs = TempDir::new("mesh-logs");
        let cni = TempDir::new("mesh-cni");
        let mut clusters = Vec::new();
        for c in (0..options.clusters).map(ClusterId) {
            let cluster_bins = options
                .binaries
                .iter()
                .find(|(of, _)| *of == c)
                .map_or_else(|| bins.clone(), |(_, b)| b.clone());
            let (name, id, letter) = (c.name(), c.mesh_id(), c.letter());
            let cp = Netns::new(&format!("{letter}-cp"));
            let cp_ip = underlay_ip(c, 0);
            attach_underlay(
                &underlay,
                &cp,
                &format!("u{letter}cp"),
                &cp_ip,
                options.underlay_mtu,
            );
            let cidrs = match &options.extra_pod_cidr {
                Some((of, extra)) if *of == c => format!("10.{id}.0.0/16, {extra}"),
                _ => format!("10.{id}.0.0/16"),
            };
            let mut replica_netns = Vec::new();
            let control = if options.apiserver_replicas <= 1 {
                TestCluster::in_netns(&name, id, &cidrs, cp.name(), &cp_ip)
            } else {
                let mut placements = Vec::new();
                for r in 0..options.apiserver_replicas {
                    let ns = Netns::new(&format!("{letter}-cp{r}"));
                    let ip = underlay_ip(c, REPLICA_SLOT + r);
                    attach_underlay(
                        &underlay,
                        &ns,
                        &format!("u{letter}cp{r}"),
                        &ip,
                        options.underlay_mtu,
                    );
                    placements.push((ns.name().to_owned(), ip));
                    replica_netns.push(ns);
                }
                TestCluster::replicated(&name, id, &cidrs, &cp_ip, &placements)
            };
            let agent_config = control.local_config_path().with_file_name("agent.yaml");
            let mut nodes = Vec::new();
            for n in (0..options.nodes).map(|i| c.node(i)) {
                let tag = n.tag();
                let ns = Netns::new(&tag);
                let ip = underlay_ip(c, n.index + 1);
                attach_underlay(
                    &underlay,
                    &ns,
                    &format!("u{}", tag.replace('-', "")),
                    &ip,
                    options.underlay_mtu,
                );
                let pod_cidr = format!("10.{id}.{}.0/24", n.index + 1);
                let node_dir = cni.path().join(&tag);
                let cni_state_dir = node_dir.join("state");
                // Each node its own plugin directory: install-cni of the
                // node's agent build puts its knit-cni there.
                let plugin_dir = node_dir.join("bin");
                CniRuntime::link_plugins(&plugin_dir, &cluster_bins.cni);
                let cni = CniRuntime {
                    conflist: knit_cni::conflist::default_conflist(
                        std::slice::from_ref(&pod_cidr),
                        &cni_state_dir,
                        Some(&node_dir.join("ipam")),
                        Some(options.pod_mtu_in(c)),
                    ),
                    bin_dir: plugin_dir,
                    cache_dir: node_dir.join("cache"),
                    node_netns: ns.name().to_owned(),
                };
                nodes.push(MeshNode {
                    agent: None,
                    pin_dir: bpffs.path().join(&tag),
                    cgroup: cgroups.dir(&format!("{letter}/n{}", n.index + 1)),
                    pod_cidr,
                    name: format!("{name}-node{}", n.index + 1),
                    ip,
                    netns: ns,
                    cni,
                    cni_state_dir,
                    next_pod: 10,
                    status_in_every_replica: false,
                });
            }
            clusters.push(MeshCluster {
                nodes,
                control,
                service_proxy: None,
                cp,
                cp_ip,
                replica_netns,
                agent_config,
                bins: cluster_bins,
            });
        }
        let mut mesh = Self {
            pods: Vec::new(),
            clusters,
            underlay,
            cgroups,
            _bpffs: bpffs,
            _exclusive: exclusive,
            bins,
            options,
            logs,
            _cni: cni,
        };
        mesh.wire_peers();
        for c in mesh.cluster_ids() {
            mesh.write_nodes(c);
            mesh.start_control_plane(c);
        }
        for n in mesh.node_ids() {
            mesh.start_agent(n);
        }
        mesh.wait_for_mesh();
        mesh
    }

    /// Every cluster.
    pub fn cluster_ids(&self) -> impl Iterator<Item = ClusterId> + use<> {
        (0..self.clusters.len()).map(ClusterId)
    }

    /// Every node of every cluster.
    pub fn node_ids(&self) -> Vec<NodeId> {
        self.clusters
            .iter()
            .enumerate()
            .flat_map(|(c, cl)| (0..cl.nodes.len()).map(move |i| ClusterId(c).node(i)))
            .collect()
    }

    /// Cluster `c`.
    pub fn cluster(&self, c: ClusterId) -> &MeshCluster {
        &self.clusters[c.0]
    }

    /// Node `n`.
    pub fn node(&self, n: NodeId) -> &MeshNode {
        &self.clusters[n.cluster.0].nodes[n.index]
    }

    /// Pod `p`.
    pub fn pod(&self, p: PodId) -> &Pod {
        &self.pods[p.0]
    }

    fn wire_peers(&mut self) {
        let mut controls: Vec<&mut TestCluster> = self.clusters.iter_mut().map(|c| &mut c.control).collect();
        full_mesh(&mut controls);
        for c in &mut self.clusters {
            let mut cfg = EtcdClientConfig::from_yaml(
                &std::fs::read_to_string(c.control.local_config_path()).expect("local client config"),
            )
            .expect("local client config");
            cfg.endpoints = vec![format!("https://{}:{NETNS_ETCD_PORT}", c.cp_ip)];
            std::fs::write(&c.agent_config, cfg.to_yaml().expect("yaml")).expect("agent etcd config");
        }
    }

    fn write_nodes(&self, c: ClusterId) {
        let yaml: String = self
            .cluster(c)
            .nodes
            .iter()
            .map(|n| crate::manifests::node(&n.name, &n.ip, &n.pod_cidr))
            .collect();
        self.write_manifest(c, "nodes.yaml", &yaml);
    }

    /// Sets `spec.limits` on cluster `of`'s ClusterMeshPeer as cluster `at`
    /// holds it, and renders `at` again (its KVStoreMesh picks up the new
    /// peer config on its own).
    pub fn limit_peer(&mut self, at: ClusterId, of: ClusterId, limits: knit_crds::PeerLimits) {
        let mut manifests: Vec<_> = self
            .cluster_ids()
            .filter(|c| *c != at)
            .map(|c| self.cluster(c).control.manifest())
            .collect();
        for m in &mut manifests {
            if m.spec.cluster_name == of.name() {
                m.spec.limits = Some(limits);
            }
        }
        self.clusters[at.0].control.set_peers(&manifests);
    }

    /// Starts (or restarts) cluster `c`'s etcd and apiserver.
    pub fn start_control_plane(&mut self, c: ClusterId) {
        let (bin, args) = self.apiserver_args(c);
        let control = &mut self.clusters[c.0].control;
        control.start_etcd();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        control.start_apiserver(&bin, &args);
        self.start_service_proxy(c);
    }

    /// Restarts cluster `c`'s apiserver (etcd keeps running) with `extra`
    /// arguments beside the harness's own.
    pub fn restart_apiserver_with(&mut self, c: ClusterId, extra: &[&str]) {
        let (bin, args) = self.apiserver_args(c);
        let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
        args.extend_from_slice(extra);
        let control = &mut self.clusters[c.0].control;
        control.stop_apiserver();
        control.start_apiserver(&bin, &args);
    }

    /// Cluster `c`'s apiserver binary and the harness's arguments for it.
    /// Identity numbers are kept in a file beside the source directory
    /// (what the ConfigMap `knit-identities` is in Kubernetes), when the
    /// build knows the flag (a previous release may not).
    fn apiserver_args(&self, c: ClusterId) -> (String, Vec<String>) {
        let bin = self.cluster(c).bins.apiserver.to_string_lossy().into_owned();
        let mut args = vec![
            "--poll-interval=1s".to_owned(),
            format!("--grace-period={}", self.options.grace_period),
            format!("--lease-ttl={}", self.options.lease_ttl_secs),
            format!("--routing-mode={}", self.options.routing_mode(c)),
        ];
        if self.options.encrypted
            && !self.options.plaintext_clusters.contains(&c)
            && build_knows(&self.cluster(c).bins.apiserver, "--node-report-wait")
        {
            args.push("--encryption=wireguard".to_owned());
        }
        if build_knows(&self.cluster(c).bins.apiserver, "--identity-file") {
            let file = self
                .cluster(c)
                .control
                .source_dir()
                .with_file_name("identities.json");
            args.push(format!("--identity-file={}", file.display()));
        }
        (bin, args)
    }

    /// Kills cluster `c`'s apiserver (by PID); its etcd keeps running, as
    /// when the apiserver container of the pod crashes. Start it again with
    /// [`LocalMesh::restart_apiserver_with`].
    pub fn stop_apiserver(&mut self, c: ClusterId) {
        self.clusters[c.0].control.stop_apiserver();
    }

    /// Kills cluster `c`'s apiserver and etcd (by PID).
    pub fn stop_control_plane(&mut self, c: ClusterId) {
        let control = &mut self.clusters[c.0].control;
        control.stop_apiserver();
        control.stop_etcd();
    }

    /// Kills cluster `c`'s etcd (by PID); its apiserver keeps running, as
    /// when the etcd container of the mesh apiserver pod crashes. Start it
    /// again with [`LocalMesh::start_etcd`]: its data is kept (the pod's
    /// memory volume outlives the container).
    pub fn stop_etcd(&mut self, c: ClusterId) {
        self.clusters[c.0].control.stop_etcd();
    }

    /// Starts cluster `c`'s etcd again on its data.
    pub fn start_etcd(&mut self, c: ClusterId) {
        self.clusters[c.0].control.start_etcd();
    }

    /// Deletes cluster `c`'s etcd data (its control plane stopped), as a
    /// new mesh apiserver pod starts on a new memory volume.
    pub fn wipe_etcd(&mut self, c: ClusterId) {
        self.clusters[c.0].control.wipe_etcd();
    }

    /// Restarts cluster `c`'s control plane with an **empty** etcd, as a
    /// restart of the mesh apiserver pod does in Kubernetes (its etcd lives
    /// in memory): apiserver and etcd stop, etcd's data goes, both start.
    pub fn restart_control_plane_empty(&mut self, c: ClusterId) {
        self.stop_control_plane(c);
        self.clusters[c.0].control.wipe_etcd();
        self.start_control_plane(c);
    }

    /// Cuts node `n` off the underlay (its link goes down), as a node that
    /// dies or loses its network: its pods stop answering, its agent and
    /// the control plane know nothing of it.
    pub fn cut_node(&self, n: NodeId) {
        self.node(n).netns.ip(&["link", "set", "eth0", "down"]);
    }

    /// Puts node `n` back on the underlay.
    pub fn restore_node(&self, n: NodeId) {
        self.node(n).netns.ip(&["link", "set", "eth0", "up"]);
    }

    /// Makes node `n`'s runtime run `conflist` for the pods added from now
    /// on (pods already there are deleted with the conflist that made them
    /// only if the test sets it back first).
    pub fn set_conflist(&mut self, n: NodeId, conflist: serde_json::Value) {
        self.clusters[n.cluster.0].nodes[n.index].cni.conflist = conflist;
    }

    /// The options the mesh was started with.
    pub fn options(&self) -> &MeshOptions {
        &self.options
    }

    /// Starts (or restarts) the agent of node `n`.
    pub fn start_agent(&mut self, n: NodeId) {
        let cluster = self.cluster(n.cluster);
        let node = self.node(n);
        let mut args = vec![
            format!("--cluster-name={}", cluster.control.name),
            format!("--node-name={}", node.name),
            format!("--etcd-config={}", cluster.agent_config.display()),
            format!("--source-dir={}", cluster.control.source_dir().display()),
            "--poll-interval=1s".into(),
            format!("--bpf-pin-dir={}", node.pin_dir.display()),
            format!("--cgroup-path={}", node.cgroup.display()),
            format!("--cni-state-dir={}", node.cni_state_dir.display()),
            // Read only with --encryption=wireguard: each node its own key.
            format!(
                "--wireguard-key={}",
                node.cni_state_dir.with_file_name("wireguard.key").display()
            ),
            // The harness's nodes run Knit's default conflist.
            "--direct-node-routes=always".into(),
            "--metrics-addr=127.0.0.1:9964".into(),
            format!("--routing-mode={}", self.options.routing_mode(n.cluster)),
            format!("--api-socket={}", self.agent_socket(n).display()),
        ];
        if self.options.encrypted && !self.options.plaintext_clusters.contains(&n.cluster) {
            args.push("--encryption=wireguard".into());
        }
        args.extend(self.options.agent_args.iter().cloned());
        let replica_args = self.replica_agent_args(n.cluster);
        let status_in_every_replica = !replica_args.is_empty();
        args.extend(replica_args);
        let log = self.logs.path().join(format!("agent-{}.log", node.name));
        let agent = crate::process::ChildProcess::spawn_in(
            &format!("knit-agent {}", node.name),
            &cluster.bins.agent.to_string_lossy(),
            &args,
            &log,
            &Placement {
                netns: Some(node.netns.name()),
                ..Placement::default()
            },
        );
        let node = &mut self.clusters[n.cluster.0].nodes[n.index];
        node.agent = Some(agent);
        node.status_in_every_replica = status_in_every_replica;
    }

    /// Makes cluster `c` run `bins` from the next start of each component
    /// on: an upgrade or a rollback, applied by
    /// [`LocalMesh::restart_control_plane_empty`] (the mesh apiserver pod
    /// replaced) and [`LocalMesh::replace_agent`] (node by node).
    pub fn set_cluster_binaries(&mut self, c: ClusterId, bins: Binaries) {
        self.clusters[c.0].bins = bins;
    }

    /// Replaces node `n`'s agent with its cluster's build, as a DaemonSet
    /// rollout does: install-cni puts that build's knit-cni in place, the
    /// old agent stops (its pinned programs and maps keep forwarding), the
    /// new one starts, and this returns once it has every pod of the node
    /// in its datapath again.
    pub fn replace_agent(&mut self, n: NodeId) {
        let endpoints = self.agent_metric(n, "knit_agent_map_entries{name=\"endpoints\"}");
        let knit = self.node(n).cni.bin_dir.join("knit");
        let _ = std::fs::remove_file(&knit);
        std::os::unix::fs::symlink(&self.cluster(n.cluster).bins.cni, &knit).expect("linking knit-cni");
        self.kill_agent(n);
        self.start_agent(n);
        self.wait_attached(n, endpoints);
    }

    /// The unix socket of node `n`'s agent API (`knitctl --agent-socket`).
    pub fn agent_socket(&self, n: NodeId) -> std::path::PathBuf {
        self.node(n).cni_state_dir.with_file_name("agent.sock")
    }

    /// Node `n`'s bpffs pin directory (`<dir>/maps/<map>`).
    pub fn agent_pin_dir(&self, n: NodeId) -> std::path::PathBuf {
        self.node(n).pin_dir.clone()
    }

    /// The PID of node `n`'s agent, while it runs.
    pub fn agent_pid(&self, n: NodeId) -> Option<u32> {
        self.clusters[n.cluster.0].nodes[n.index].agent.as_ref()?.pid()
    }

    /// Kills the agent of node `n` (SIGKILL, by PID).
    pub fn kill_agent(&mut self, n: NodeId) {
        if let Some(mut a) = self.clusters[n.cluster.0].nodes[n.index].agent.take() {
            a.stop();
        }
    }

    /// Reads the agent's metrics (from inside its node namespace).
    pub fn agent_metrics(&self, n: NodeId) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", self.node(n).netns.name(), "bash", "-c"])
            .arg("exec 3<>/dev/tcp/127.0.0.1/9964; printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3")
            .output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// Value of the agent metric line starting with `prefix` (0 when absent).
    pub fn agent_metric(&self, n: NodeId, prefix: &str) -> i64 {
        self.agent_metrics(n)
            .lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0)
    }

    /// Waits until node `n`'s agent has `endpoints` pods in its datapath,
    /// programs attached. Pods of one node reach each other through the
    /// node's plain routes before that, so a probe that passes proves
    /// nothing about Knit until then.
    pub fn wait_attached(&self, n: NodeId, endpoints: i64) {
        self.wait_until(
            "the agent to attach its pods",
            std::time::Duration::from_secs(30),
            || self.agent_metric(n, "knit_agent_map_entries{name=\"endpoints\"}") == endpoints,
        );
    }

    /// Every log tail, and every agent's non-zero drop counters, for
    /// failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (ci, c) in self.clusters.iter().enumerate() {
            out.push_str(&c.control.logs());
            for (ni, n) in c.nodes.iter().enumerate() {
                if let Some(a) = &n.agent {
                    out.push('\n');
                    out.push_str(&a.log_tail());
                    let drops: Vec<String> = self
                        .agent_metrics(ClusterId(ci).node(ni))
                        .lines()
                        .filter(|l| l.starts_with("knit_agent_drops") && !l.ends_with(" 0"))
                        .map(str::to_owned)
                        .collect();
                    out.push_str(&format!("drops of {}: {drops:?}\n", n.name));
                    for dev in ["knit_vxlan", "eth0"] {
                        if let Ok(link) = Command::new("ip")
                            .args(["-n", n.netns.name(), "-s", "-o", "link", "show", "dev", dev])
                            .output()
                        {
                            out.push_str(&String::from_utf8_lossy(&link.stdout));
                        }
                    }
                }
            }
        }
        out
    }

    /// Runs `knitctl status` in cluster `c`'s control-plane namespace (empty
    /// when it fails, e.g. while etcd is down).
    pub fn knitctl_status(&self, c: ClusterId) -> String {
        let cluster = self.cluster(c);
        Placement {
            netns: Some(cluster.cp.name()),
            ..Placement::default()
        }
        .command(&self.bins.knitctl)
        .args(["status", "--etcd-config"])
        .arg(cluster.control.local_config_path())
        .args(["--endpoint", &self.etcd_url(c)])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
    }

    /// Runs `knitctl <args>` against node `n`'s agent (its local API
    /// socket) and returns what it printed; panics with its stderr if it
    /// fails.
    pub fn knitctl_agent(&self, n: NodeId, args: &[&str]) -> String {
        let out = Command::new(&self.bins.knitctl)
            .args(args)
            .arg("--agent-socket")
            .arg(self.agent_socket(n))
            .output()
            .expect("run knitctl");
        assert!(
            out.status.success(),
            "knitctl {args:?} on {}: {}",
            self.node(n).name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `knitctl status -o json` of cluster `c`: what tests read (the human
    /// table is for people). `None` while it fails (e.g. etcd is down).
    pub fn status_report(&self, c: ClusterId) -> Option<knit_operator::status_table::StatusReport> {
        let cluster = self.cluster(c);
        let out = Placement {
            netns: Some(cluster.cp.name()),
            ..Placement::default()
        }
        .command(&self.bins.knitctl)
        .args(["status", "-o", "json", "--etcd-config"])
        .arg(cluster.control.local_config_path())
        .args(["--endpoint", &self.etcd_url(c)])
        .output()
        .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }

    fn wait_for_mesh(&self) {
        let n = self.clusters.len();
        self.wait_until(
            "every cluster to mirror every peer",
            Duration::from_secs(60),
            || {
                self.cluster_ids().all(|c| {
                    self.status_report(c)
                        .is_some_and(|r| r.ready_peers().len() == n - 1)
                })
            },
        );
    }

    /// Waits (up to 2 minutes) until cluster `c`'s KVStoreMesh has its one
    /// peer synced with at least `endpoints` endpoints mirrored: an etcd
    /// that restarted empty has been filled again.
    pub fn wait_peer_synced(&self, c: ClusterId, endpoints: usize) {
        self.wait_until(
            &format!("{} to sync its peer", c.name()),
            Duration::from_secs(120),
            || {
                self.status_report(c).is_some_and(|r| {
                    r.ready_peers().len() == 1
                        && r.peers.iter().all(|p| {
                            p.counts
                                .get(&knit_kvstore::keys::Kind::Endpoints)
                                .is_some_and(|n| *n as usize >= endpoints)
                        })
                })
            },
        );
    }

    /// Polls `done` until it holds, panicking with every log after `timeout`.
    pub fn wait_until(&self, what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !done() {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Runs `etcdctl args…` from cluster `from`'s control-plane namespace
    /// against `endpoint` with the certificates of `config` (resolved).
    /// Returns success and the combined output.
    pub fn etcdctl(
        &self,
        from: ClusterId,
        config: &EtcdClientConfig,
        endpoint: &str,
        args: &[&str],
    ) -> (bool, String) {
        etcdctl_in(self.cluster(from).cp.name(), config, endpoint, args)
    }

    /// Moves cluster `c`'s mesh CA roll to `step` (see
    /// `certificates.meshCARotation`): its certificates are rendered again
    /// and its processes pick them up as they would from a Secret volume.
    pub fn set_mesh_ca_rotation(
        &mut self,
        c: ClusterId,
        step: Option<knit_operator::config::CaRotationStep>,
    ) {
        self.clusters[c.0].control.set_mesh_ca_rotation(step);
    }

    /// Every other cluster applies cluster `of`'s current `knitctl peer
    /// export`, as each peer's GitOps would after `of` publishes a change.
    pub fn apply_export(&mut self, of: ClusterId) {
        let manifest = self.cluster(of).control.manifest();
        for c in self.cluster_ids().filter(|c| *c != of) {
            self.clusters[c.0].control.apply_peer(manifest.clone());
        }
    }

    /// The peer front's URL of cluster `c` on the underlay: where peers
    /// connect.
    pub fn front_url(&self, c: ClusterId) -> String {
        format!(
            "https://{}:{}",
            self.cluster(c).cp_ip,
            crate::cluster::NETNS_FRONT_PORT
        )
    }

    /// The etcd URL of cluster `c` on the underlay.
    pub fn etcd_url(&self, c: ClusterId) -> String {
        format!("https://{}:{NETNS_ETCD_PORT}", self.cluster(c).cp_ip)
    }
}

/// Whether the binary at `bin` lists `flag` in its `--help` (a previous
/// release may not have it).
fn build_knows(bin: &std::path::Path, flag: &str) -> bool {
    let help = Command::new(bin)
        .arg("--help")
        .output()
        .map(|o| o.stdout)
        .unwrap_or_default();
    String::from_utf8_lossy(&help).contains(flag)
}

/// Runs `etcdctl args…` in network namespace `netns` against `endpoint`
/// with the certificates of `config` (resolved); one fresh connection per
/// call. Returns success and the combined output.
pub fn etcdctl_in(netns: &str, config: &EtcdClientConfig, endpoint: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "etcdctl"])
        .arg(format!("--endpoints={endpoint}"))
        .arg(format!("--cacert={}", config.trusted_ca_file.display()))
        .arg(format!("--cert={}", config.cert_file.display()))
        .arg(format!("--key={}", config.key_file.display()))
        .arg("--dial-timeout=3s")
        .arg("--command-timeout=3s")
        .args(args)
        .env("ETCDCTL_API", "3")
        .output()
        .expect("running etcdctl");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn running_as_root() -> bool {
    sh("id", &["-u"]).stdout.starts_with(b"0")
}
