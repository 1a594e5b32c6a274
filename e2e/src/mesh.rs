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
//! Everything is removed on drop; leftovers of a killed run are removed by
//! [`netns::clean_stale`] when the next mesh starts.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use knit_kvstore::EtcdClientConfig;

use crate::cluster::{NETNS_ETCD_PORT, TestCluster, full_mesh};
use crate::cni::{CniRuntime, Sandbox, result_ipv4};
use crate::netns::{self, BpffsRoot, CgroupRoot, Netns, sh};
use crate::process::{ChildProcess, Placement, TempDir};

/// Port every probe server listens on (TCP and UDP).
pub const SERVER_PORT: u16 = 8080;

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
}

impl Default for MeshOptions {
    fn default() -> Self {
        Self {
            clusters: 2,
            nodes: 2,
            grace_period: "4s".into(),
        }
    }
}

/// One node: a namespace running knit-agent.
pub struct MeshNode {
    agent: Option<ChildProcess>,
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
    pin_dir: PathBuf,
    cgroup: PathBuf,
    next_pod: u8,
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
    /// Control-plane namespace.
    pub cp: Netns,
    /// Control-plane underlay address.
    pub cp_ip: String,
    agent_config: PathBuf,
}

/// A pod: a namespace attached to a node by the CNI, in its own cgroup.
pub struct Pod {
    server: Option<ChildProcess>,
    /// The sandbox as the CNI knows it.
    pub sandbox: Sandbox,
    /// Whether CNI DEL has run for it.
    pub deleted: bool,
    /// Cluster index.
    pub cluster: usize,
    /// Node index.
    pub node: usize,
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

/// Answers counted by server name.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
pub struct Hits {
    /// Answers per server (`<cluster>/<pod>`).
    pub names: BTreeMap<String, usize>,
    /// Failed requests per error kind.
    pub errors: BTreeMap<String, usize>,
    /// Answers whose source was not the address asked for.
    pub peer_mismatch: usize,
}

impl Hits {
    /// Answers from servers of `cluster`.
    pub fn from_cluster(&self, cluster: &str) -> usize {
        self.names
            .iter()
            .filter(|(n, _)| n.starts_with(&format!("{cluster}/")))
            .map(|(_, c)| c)
            .sum()
    }

    /// Successful answers.
    pub fn total(&self) -> usize {
        self.names.values().sum()
    }
}

/// A global service to deploy.
#[derive(Clone, Debug)]
pub struct GlobalService<'a> {
    /// Namespace.
    pub namespace: &'a str,
    /// Name.
    pub name: &'a str,
    /// ClusterIP in this cluster.
    pub vip: Ipv4Addr,
    /// Backend pods (indexes into [`LocalMesh::pods`]).
    pub backends: Vec<usize>,
    /// GSP `export`.
    pub export: bool,
    /// GSP `import`.
    pub import: bool,
    /// GSP `affinity`: `local`, `remote` or `none`.
    pub affinity: &'a str,
}

/// The whole mesh. Dropping it removes everything it made.
pub struct LocalMesh {
    /// Pods (dropped first).
    pub pods: Vec<Pod>,
    /// Clusters.
    pub clusters: Vec<MeshCluster>,
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

/// Name of cluster `i`.
pub fn cluster_name(i: usize) -> String {
    format!("cluster-{}", (b'a' + i as u8) as char)
}

fn underlay_ip(cluster: usize, slot: usize) -> String {
    format!("192.168.50.{}", 10 + cluster * 10 + slot)
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
        let bpffs = BpffsRoot::new();
        let logs = TempDir::new("mesh-logs");
        let cni = TempDir::new("mesh-cni");
        let plugin_dir = cni.path().join("bin");
        CniRuntime::link_plugins(&plugin_dir, &bins.cni);
        let mut clusters = Vec::new();
        for c in 0..options.clusters {
            let name = cluster_name(c);
            let id = (c + 1) as u16;
            let cp = Netns::new(&format!("{}-cp", short(c)));
            let cp_ip = underlay_ip(c, 0);
            attach_underlay(&underlay, &cp, &format!("u{}cp", short(c)), &cp_ip);
            let control = TestCluster::in_netns(&name, id, &format!("10.{id}.0.0/16"), cp.name(), &cp_ip);
            let agent_config = control.local_config_path().with_file_name("agent.yaml");
            let mut nodes = Vec::new();
            for n in 0..options.nodes {
                let ns = Netns::new(&format!("{}-n{}", short(c), n + 1));
                let ip = underlay_ip(c, n + 1);
                attach_underlay(&underlay, &ns, &format!("u{}n{}", short(c), n + 1), &ip);
                let node_name = format!("{name}-node{}", n + 1);
                let pod_cidr = format!("10.{id}.{}.0/24", n + 1);
                let node_dir = cni.path().join(format!("{}-n{}", short(c), n + 1));
                let cni_state_dir = node_dir.join("state");
                let cni = CniRuntime {
                    conflist: knit_cni::conflist::default_conflist(
                        std::slice::from_ref(&pod_cidr),
                        &cni_state_dir,
                        Some(&node_dir.join("ipam")),
                    ),
                    bin_dir: plugin_dir.clone(),
                    cache_dir: node_dir.join("cache"),
                    node_netns: ns.name().to_owned(),
                };
                nodes.push(MeshNode {
                    agent: None,
                    pin_dir: bpffs.path().join(format!("{}-n{}", short(c), n + 1)),
                    cgroup: cgroups.dir(&format!("{}/n{}", short(c), n + 1)),
                    pod_cidr,
                    name: node_name,
                    ip,
                    netns: ns,
                    cni,
                    cni_state_dir,
                    next_pod: 10,
                });
            }
            clusters.push(MeshCluster {
                nodes,
                control,
                cp,
                cp_ip,
                agent_config,
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
        for c in 0..mesh.clusters.len() {
            mesh.write_nodes(c);
            mesh.start_control_plane(c);
        }
        for c in 0..mesh.clusters.len() {
            for n in 0..mesh.clusters[c].nodes.len() {
                mesh.start_agent(c, n);
            }
        }
        mesh.wait_for_mesh();
        mesh
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

    fn write_nodes(&self, c: usize) {
        let yaml: String = self.clusters[c]
            .nodes
            .iter()
            .map(|n| crate::manifests::node(&n.name, &n.ip, &n.pod_cidr))
            .collect();
        self.clusters[c].control.write_source("nodes.yaml", &yaml);
    }

    /// Starts (or restarts) cluster `c`'s etcd and apiserver.
    pub fn start_control_plane(&mut self, c: usize) {
        let grace = format!("--grace-period={}", self.options.grace_period);
        let bin = self.bins.apiserver.to_string_lossy().into_owned();
        let control = &mut self.clusters[c].control;
        control.start_etcd();
        control.start_apiserver(&bin, &["--poll-interval=1s", &grace, "--lease-ttl=10"]);
    }

    /// Kills cluster `c`'s apiserver and etcd (by PID).
    pub fn stop_control_plane(&mut self, c: usize) {
        let control = &mut self.clusters[c].control;
        control.stop_apiserver();
        control.stop_etcd();
    }

    /// Starts (or restarts) the agent of node `n` of cluster `c`.
    pub fn start_agent(&mut self, c: usize, n: usize) {
        let cluster = &self.clusters[c];
        let node = &cluster.nodes[n];
        let args = vec![
            format!("--cluster-name={}", cluster.control.name),
            format!("--node-name={}", node.name),
            format!("--etcd-config={}", cluster.agent_config.display()),
            format!("--source-dir={}", cluster.control.source_dir().display()),
            "--poll-interval=1s".into(),
            format!("--bpf-pin-dir={}", node.pin_dir.display()),
            format!("--cgroup-path={}", node.cgroup.display()),
            format!("--cni-state-dir={}", node.cni_state_dir.display()),
            "--metrics-addr=127.0.0.1:9964".into(),
        ];
        let log = self.logs.path().join(format!("agent-{}.log", node.name));
        let agent = ChildProcess::spawn_in(
            &format!("knit-agent {}", node.name),
            &self.bins.agent.to_string_lossy(),
            &args,
            &log,
            &Placement {
                netns: Some(node.netns.name()),
                ..Placement::default()
            },
        );
        self.clusters[c].nodes[n].agent = Some(agent);
    }

    /// Kills the agent of node `n` of cluster `c` (SIGKILL, by PID).
    pub fn kill_agent(&mut self, c: usize, n: usize) {
        if let Some(mut a) = self.clusters[c].nodes[n].agent.take() {
            a.stop();
        }
    }

    /// Reads the agent's metrics (from inside its node namespace).
    pub fn agent_metrics(&self, c: usize, n: usize) -> String {
        let node = &self.clusters[c].nodes[n];
        let out = Command::new("ip")
            .args(["netns", "exec", node.netns.name(), "bash", "-c"])
            .arg("exec 3<>/dev/tcp/127.0.0.1/9964; printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3")
            .output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// Every log tail, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for c in &self.clusters {
            out.push_str(&c.control.logs());
            for n in &c.nodes {
                if let Some(a) = &n.agent {
                    out.push('\n');
                    out.push_str(&a.log_tail());
                }
            }
        }
        out
    }

    /// Runs `knitctl status` in cluster `c`'s control-plane namespace (empty
    /// when it fails, e.g. while etcd is down).
    pub fn knitctl_status(&self, c: usize) -> String {
        let cluster = &self.clusters[c];
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

    fn wait_for_mesh(&self) {
        let n = self.clusters.len();
        self.wait_until(
            "every cluster to mirror every peer",
            Duration::from_secs(60),
            || {
                (0..n)
                    .all(|c| knit_operator::status_table::ready_peers(&self.knitctl_status(c)).len() == n - 1)
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

    /// Adds a pod on node `n` of cluster `c` with `labels` the way a
    /// container runtime does (namespace, cgroup, CNI ADD of the node's
    /// conflist), starts a probe server in it, writes its Pod manifest with
    /// the IP the CNI gave, and returns its index in [`LocalMesh::pods`].
    pub fn add_pod(
        &mut self,
        c: usize,
        n: usize,
        namespace: &str,
        name: &str,
        labels: &[(&str, &str)],
    ) -> usize {
        let p = self
            .create_sandbox(c, n, namespace, name)
            .unwrap_or_else(|e| panic!("{e}"));
        let server_name = format!("{}/{name}", cluster_name(c));
        let args = vec![
            "serve".into(),
            "--name".into(),
            server_name,
            "--port".into(),
            SERVER_PORT.to_string(),
        ];
        let log = self
            .logs
            .path()
            .join(format!("pod-{}-{name}.log", cluster_name(c)));
        let server = ChildProcess::spawn_in(
            &format!("pod {name}"),
            &self.bins.probe.to_string_lossy(),
            &args,
            &log,
            &self.placement(p, None),
        );
        self.pods[p].server = Some(server);
        let node_name = self.clusters[c].nodes[n].name.clone();
        self.write_pod(p, labels, &node_name);
        p
    }

    /// Creates a pod's namespace and cgroup and runs CNI ADD for it,
    /// without a workload or manifest. Returns its index, or the CNI's
    /// failure (the namespace is then removed).
    pub fn create_sandbox(
        &mut self,
        c: usize,
        n: usize,
        namespace: &str,
        name: &str,
    ) -> Result<usize, crate::cni::CniFailure> {
        let node = &mut self.clusters[c].nodes[n];
        let k = node.next_pod;
        node.next_pod += 1;
        let tag = format!("{}-n{}-p{k}", short(c), n + 1);
        let pod_ns = Netns::new(&tag);
        let sandbox = Sandbox::in_netns(&tag, &pod_ns, namespace, name);
        let result = node.cni.add(&sandbox)?;
        let ip = result_ipv4(&result).expect("the CNI result has an IPv4 address");
        let cgroup = self.cgroups.dir(&format!("{}/n{}/p{k}", short(c), n + 1));
        self.pods.push(Pod {
            server: None,
            sandbox,
            deleted: false,
            cluster: c,
            node: n,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            ip,
            netns: pod_ns,
            cgroup,
        });
        Ok(self.pods.len() - 1)
    }

    /// Deletes pod `p` as the runtime does: stops its workload, runs CNI
    /// DEL (plugins in reverse order, with the cached result) and removes
    /// its manifest. The namespace goes when the mesh is dropped.
    pub fn delete_pod(&mut self, p: usize) -> Result<(), crate::cni::CniFailure> {
        if let Some(mut s) = self.pods[p].server.take() {
            s.stop();
        }
        let pod = &self.pods[p];
        self.clusters[pod.cluster].nodes[pod.node].cni.del(&pod.sandbox)?;
        self.delete_pod_manifest(p);
        self.pods[p].deleted = true;
        Ok(())
    }

    /// The CNI of the node pod `p` runs on.
    pub fn cni_of(&self, p: usize) -> &CniRuntime {
        let pod = &self.pods[p];
        &self.clusters[pod.cluster].nodes[pod.node].cni
    }

    fn write_pod(&self, p: usize, labels: &[(&str, &str)], node: &str) {
        let pod = &self.pods[p];
        self.register_pod(pod.cluster, node, &pod.namespace, &pod.name, pod.ip, labels);
    }

    /// Writes a running Pod `namespace/name` with `ip` on node `node` into
    /// cluster `c`'s source, as kubelet reports a pod a runtime created
    /// (file `pod-<namespace>-<name>.yaml`).
    pub fn register_pod(
        &self,
        c: usize,
        node: &str,
        namespace: &str,
        name: &str,
        ip: Ipv4Addr,
        labels: &[(&str, &str)],
    ) {
        let labels: String = labels
            .iter()
            .map(|(k, v)| format!("    {k}: \"{v}\"\n"))
            .collect();
        let yaml = format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {namespace}\n  labels:\n{labels}spec:\n  nodeName: {node}\n  containers:\n  - name: c\n    image: knit-probe\nstatus:\n  phase: Running\n  podIP: {ip}\n  podIPs:\n  - ip: {ip}\n",
        );
        self.clusters[c]
            .control
            .write_source(&format!("pod-{namespace}-{name}.yaml"), &yaml);
    }

    /// Removes pod `p` from its cluster's source (the pod keeps running,
    /// as a deleted pod does while it terminates).
    pub fn delete_pod_manifest(&self, p: usize) {
        let pod = &self.pods[p];
        self.clusters[pod.cluster]
            .control
            .remove_source(&format!("pod-{}-{}.yaml", pod.namespace, pod.name));
    }

    /// Writes a Service with `vip`, its EndpointSlice (ready backends) and a
    /// GlobalServicePolicy into `c`'s source. Ports: TCP `http` and UDP `dns`,
    /// both 8080 → 8080.
    pub fn deploy_service(&self, c: usize, svc: &GlobalService<'_>) {
        let endpoints: String = svc
            .backends
            .iter()
            .map(|p| {
                format!(
                    "- addresses: [\"{}\"]\n  conditions:\n    ready: true\n",
                    self.pods[*p].ip
                )
            })
            .collect();
        let endpoints = if endpoints.is_empty() {
            " []\n".to_owned()
        } else {
            format!("\n{endpoints}")
        };
        let (ns, name, vip, port) = (svc.namespace, svc.name, svc.vip, SERVER_PORT);
        let yaml = format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  clusterIP: {vip}\n  clusterIPs: [{vip}]\n  ports:\n  - name: http\n    port: {port}\n    protocol: TCP\n  - name: dns\n    port: {port}\n    protocol: UDP\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  namespace: {ns}\n  labels:\n    kubernetes.io/service-name: {name}\naddressType: IPv4\nports:\n- name: http\n  port: {port}\n  protocol: TCP\n- name: dns\n  port: {port}\n  protocol: UDP\nendpoints:{endpoints}---\n\
             apiVersion: knit.dev/v1alpha1\nkind: GlobalServicePolicy\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  services: [{name}]\n  export: {}\n  import: {}\n  affinity: {}\n",
            svc.export, svc.import, svc.affinity
        );
        self.clusters[c]
            .control
            .write_source(&format!("svc-{ns}-{name}.yaml"), &yaml);
    }

    /// Writes arbitrary YAML into cluster `c`'s source.
    pub fn write_manifest(&self, c: usize, file: &str, yaml: &str) {
        self.clusters[c].control.write_source(file, yaml);
    }

    /// Removes a manifest from cluster `c`'s source.
    pub fn remove_manifest(&self, c: usize, file: &str) {
        self.clusters[c].control.remove_source(file);
    }

    fn placement(&self, p: usize, cpu: Option<usize>) -> Placement<'_> {
        let pod = &self.pods[p];
        Placement {
            netns: Some(pod.netns.name()),
            cgroup: Some(&pod.cgroup),
            cpu,
        }
    }

    /// Runs `knit-probe args…` in pod `p` (its namespace and cgroup) and
    /// returns its standard output.
    pub fn probe(&self, p: usize, args: &[&str]) -> String {
        self.probe_pinned(p, args, None)
    }

    /// Like [`LocalMesh::probe`], pinned to one CPU.
    pub fn probe_pinned(&self, p: usize, args: &[&str], cpu: Option<usize>) -> String {
        let out = self
            .placement(p, cpu)
            .command(&self.bins.probe)
            .args(args)
            .output()
            .expect("running knit-probe");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts `knit-probe args…` in pod `p` in the background.
    pub fn probe_background(&self, p: usize, args: &[&str], tag: &str) -> ChildProcess {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        ChildProcess::spawn_in(
            tag,
            &self.bins.probe.to_string_lossy(),
            &args,
            &self.logs.path().join(format!("{tag}.log")),
            &self.placement(p, None),
        )
    }

    /// `count` requests from pod `p` to `to:8080`, each on a new socket.
    pub fn hits(&self, p: usize, to: Ipv4Addr, count: usize, udp: bool) -> Hits {
        let to = format!("{to}:{SERVER_PORT}");
        let count = count.to_string();
        let mut args = vec!["hits", "--to", &to, "--count", &count];
        if udp {
            args.push("--udp");
        }
        let out = self.probe(p, &args);
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("knit-probe hits printed {out:?}: {e}"))
    }

    /// Polls [`LocalMesh::hits`] until `ok` accepts the result.
    pub fn wait_for_hits(
        &self,
        what: &str,
        p: usize,
        to: Ipv4Addr,
        udp: bool,
        mut ok: impl FnMut(&Hits) -> bool,
    ) -> Hits {
        let deadline = Instant::now() + Duration::from_secs(45);
        loop {
            let h = self.hits(p, to, 40, udp);
            if ok(&h) {
                return h;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last: {h:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Runs `etcdctl args…` from cluster `from`'s control-plane namespace
    /// against `endpoint` with the certificates of `config` (resolved).
    /// Returns success and the combined output.
    pub fn etcdctl(
        &self,
        from: usize,
        config: &EtcdClientConfig,
        endpoint: &str,
        args: &[&str],
    ) -> (bool, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", self.clusters[from].cp.name(), "etcdctl"])
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

    /// The etcd URL of cluster `c` on the underlay.
    pub fn etcd_url(&self, c: usize) -> String {
        format!("https://{}:{NETNS_ETCD_PORT}", self.clusters[c].cp_ip)
    }

    /// The underlay namespace (for tests that add foreign hosts).
    pub fn underlay(&self) -> &Netns {
        &self.underlay
    }

    /// A host outside the mesh on the underlay (standing in for the
    /// internet): its own namespace with `ip`/24 on the bridge and a probe
    /// server named `outside/<tag>` on [`SERVER_PORT`]. Pods reach it only
    /// masqueraded: it has no route to any pod CIDR.
    pub fn add_outside_host(&self, tag: &str, ip: &str) -> (Netns, ChildProcess) {
        let ns = Netns::new(&format!("x-{tag}"));
        attach_underlay(&self.underlay, &ns, &format!("ux{tag}"), ip);
        let server = self.serve_in(ns.name(), &format!("outside/{tag}"), SERVER_PORT);
        (ns, server)
    }

    /// Starts a probe server named `name` on `port` in the namespace
    /// `netns` (a node's, or a host's).
    pub fn serve_in(&self, netns: &str, name: &str, port: u16) -> ChildProcess {
        let args = vec![
            "serve".into(),
            "--name".into(),
            name.to_owned(),
            "--port".into(),
            port.to_string(),
        ];
        ChildProcess::spawn_in(
            &format!("server {name}"),
            &self.bins.probe.to_string_lossy(),
            &args,
            &self
                .logs
                .path()
                .join(format!("server-{}.log", name.replace('/', "-"))),
            &Placement {
                netns: Some(netns),
                ..Placement::default()
            },
        )
    }

    /// `count` requests to `to` from the namespace `netns` (a node's: the
    /// host itself, outside any pod cgroup).
    pub fn hits_from(&self, netns: &str, to: std::net::SocketAddrV4, count: usize) -> Hits {
        let out = Placement {
            netns: Some(netns),
            ..Placement::default()
        }
        .command(&self.bins.probe)
        .args(["hits", "--to", &to.to_string(), "--count", &count.to_string()])
        .output()
        .expect("running knit-probe");
        let out = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("knit-probe hits printed {out:?}: {e}"))
    }

    /// `count` requests from pod `p` to `to` (any port), each on a new
    /// socket.
    pub fn hits_to(&self, p: usize, to: std::net::SocketAddrV4, count: usize, udp: bool) -> Hits {
        let (to, count) = (to.to_string(), count.to_string());
        let mut args = vec!["hits", "--to", &to, "--count", &count];
        if udp {
            args.push("--udp");
        }
        let out = self.probe(p, &args);
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("knit-probe hits printed {out:?}: {e}"))
    }

    /// Value of the agent metric line starting with `prefix` (0 when absent).
    pub fn agent_metric(&self, c: usize, n: usize, prefix: &str) -> i64 {
        self.agent_metrics(c, n)
            .lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0)
    }
}

fn short(c: usize) -> String {
    ((b'a' + c as u8) as char).to_string()
}

fn attach_underlay(underlay: &Netns, ns: &Netns, bridge_side: &str, ip: &str) {
    underlay.veth_to(bridge_side, ns, "eth0");
    underlay.ip(&["link", "set", bridge_side, "master", "br0"]);
    ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
}

fn running_as_root() -> bool {
    sh("id", &["-u"]).stdout.starts_with(b"0")
}
