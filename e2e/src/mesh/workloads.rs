//! What runs on the mesh: pods made through the node's CNI (with a probe
//! server in each), the Pod, Service, EndpointSlice and GlobalServicePolicy
//! YAML the directory sources read, and any other manifest a test writes.

use std::net::Ipv4Addr;

use super::topology::{ClusterId, NodeId, Pod, PodId};
use super::{LocalMesh, SERVER_PORT};
use crate::cni::{CniFailure, CniRuntime, Sandbox, result_ipv4};
use crate::netns::Netns;
use crate::process::{ChildProcess, Placement};

/// A global service to deploy.
#[derive(Clone, Debug)]
pub struct GlobalService<'a> {
    /// Namespace.
    pub namespace: &'a str,
    /// Name.
    pub name: &'a str,
    /// ClusterIP in this cluster.
    pub vip: Ipv4Addr,
    /// Backend pods.
    pub backends: Vec<PodId>,
    /// GSP `export`.
    pub export: bool,
    /// GSP `import`.
    pub import: bool,
    /// GSP `affinity`: `local`, `remote` or `none`.
    pub affinity: &'a str,
    /// Backend pods listed in the EndpointSlice as not ready.
    pub not_ready: Vec<PodId>,
    /// More GSP spec fields, as YAML lines of the spec mapping (e.g.
    /// `preferredClusters: [cluster-c]`).
    pub spec_extra: &'a str,
}

impl GlobalService<'static> {
    /// `shop/web` with `vip` and `backends`, exported and imported, no
    /// affinity: the service most scenarios deploy.
    pub fn web(vip: Ipv4Addr, backends: Vec<PodId>) -> Self {
        Self {
            namespace: "shop",
            name: "web",
            vip,
            backends,
            export: true,
            import: true,
            affinity: "none",
            not_ready: Vec::new(),
            spec_extra: "",
        }
    }
}

/// The container ports every pod declares (the probe server answers on
/// each): 8080 (`http`, `dns`) and the upstream NetworkPolicy suite's named
/// ports on 80 and 81.
const SERVED_PORTS: &str = "    - {name: http, containerPort: 8080, protocol: TCP}\n    - {name: dns, containerPort: 8080, protocol: UDP}\n    - {name: serve-80-tcp, containerPort: 80, protocol: TCP}\n    - {name: serve-80-udp, containerPort: 80, protocol: UDP}\n    - {name: serve-81-tcp, containerPort: 81, protocol: TCP}\n    - {name: serve-81-udp, containerPort: 81, protocol: UDP}\n";

impl LocalMesh {
    /// A client pod on cluster a's first node and web pods `near` (a's
    /// second node) and `far` (b's first node), returned once the client
    /// has answers from both: `(client, near, far)`.
    pub fn client_near_far(&mut self) -> (PodId, PodId, PodId) {
        let (a, b) = (ClusterId(0), ClusterId(1));
        let client = self.add_pod(a.node(0), "shop", "client", &[("app", "client")]);
        let near = self.add_pod(a.node(1), "shop", "near", &[("app", "web")]);
        let far = self.add_pod(b.node(0), "shop", "far", &[("app", "web")]);
        for (what, to, cluster) in [("across nodes", near, a), ("across clusters", far, b)] {
            let name = format!("{}/{}", cluster.name(), self.pod(to).name);
            self.wait_for_hits(what, client, self.pod(to).ip, false, |h| {
                h.names.get(&name) == Some(&40)
            });
        }
        (client, near, far)
    }

    /// Adds a pod on `node` with `labels` the way a container runtime does
    /// (namespace, cgroup, CNI ADD of the node's conflist), starts a probe
    /// server named `<cluster>/<name>` in it, and writes its Pod manifest
    /// with the IP the CNI gave.
    pub fn add_pod(&mut self, node: NodeId, namespace: &str, name: &str, labels: &[(&str, &str)]) -> PodId {
        self.try_add_pod(node, namespace, name, labels)
            .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()))
    }

    /// [`LocalMesh::add_pod`], or the CNI's failure (e.g. the node's agent
    /// is down: knit-cni gives up after its wait).
    pub fn try_add_pod(
        &mut self,
        node: NodeId,
        namespace: &str,
        name: &str,
        labels: &[(&str, &str)],
    ) -> Result<PodId, CniFailure> {
        let p = self.create_sandbox(node, namespace, name)?;
        let server_name = format!("{}/{name}", node.cluster.name());
        let args = vec![
            "serve".into(),
            "--name".into(),
            server_name,
            "--port".into(),
            format!("{SERVER_PORT},80,81"),
        ];
        let log = self
            .logs
            .path()
            .join(format!("pod-{}-{name}.log", node.cluster.name()));
        let server = ChildProcess::spawn_in(
            &format!("pod {name}"),
            &self.bins.probe.to_string_lossy(),
            &args,
            &log,
            &self.placement(p, None),
        );
        self.pods[p.0].server = Some(server);
        wait_until_serving(&log);
        let pod = &self.pods[p.0];
        self.register_pod(node, &pod.namespace, &pod.name, pod.ip, labels);
        Ok(p)
    }

    /// Creates a pod's namespace and cgroup on `node` and runs CNI ADD for
    /// it, without a workload or manifest. Returns the pod, or the CNI's
    /// failure (the namespace is then removed).
    pub fn create_sandbox(&mut self, node: NodeId, namespace: &str, name: &str) -> Result<PodId, CniFailure> {
        let n = &mut self.clusters[node.cluster.0].nodes[node.index];
        let k = n.next_pod;
        n.next_pod += 1;
        let tag = format!("{}-p{k}", node.tag());
        let pod_ns = Netns::new(&tag);
        let sandbox = Sandbox::in_netns(&tag, &pod_ns, namespace, name);
        let result = n.cni.add(&sandbox)?;
        let ip = result_ipv4(&result).expect("the CNI result has an IPv4 address");
        let cgroup = self
            .cgroups
            .dir(&format!("{}/n{}/p{k}", node.cluster.letter(), node.index + 1));
        self.pods.push(Pod {
            server: None,
            sandbox,
            deleted: false,
            node,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            ip,
            netns: pod_ns,
            cgroup,
        });
        Ok(PodId(self.pods.len() - 1))
    }

    /// Deletes pod `p` as the runtime does: stops its workload, runs CNI
    /// DEL (plugins in reverse order, with the cached result) and removes
    /// its manifest. The namespace goes when the mesh is dropped.
    pub fn delete_pod(&mut self, p: PodId) -> Result<(), CniFailure> {
        if let Some(mut s) = self.pods[p.0].server.take() {
            s.stop();
        }
        self.cni_of(p).del(&self.pods[p.0].sandbox)?;
        self.delete_pod_manifest(p);
        self.pods[p.0].deleted = true;
        Ok(())
    }

    /// The CNI of the node pod `p` runs on.
    pub fn cni_of(&self, p: PodId) -> &CniRuntime {
        &self.node(self.pods[p.0].node).cni
    }

    /// Writes a running Pod `namespace/name` with `ip` on `node` into its
    /// cluster's source, as kubelet reports a pod a runtime created (file
    /// `pod-<namespace>-<name>.yaml`).
    pub fn register_pod(
        &self,
        node: NodeId,
        namespace: &str,
        name: &str,
        ip: Ipv4Addr,
        labels: &[(&str, &str)],
    ) {
        let labels: String = labels
            .iter()
            .map(|(k, v)| format!("    {k}: \"{v}\"\n"))
            .collect();
        let node_name = &self.node(node).name;
        let yaml = format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: \"{name}\"\n  namespace: \"{namespace}\"\n  labels:\n{labels}spec:\n  nodeName: {node_name}\n  containers:\n  - name: c\n    image: knit-probe\n    ports:\n{ports}status:\n  phase: Running\n  podIP: {ip}\n  podIPs:\n  - ip: {ip}\n",
            ports = SERVED_PORTS,
        );
        self.write_manifest(node.cluster, &format!("pod-{namespace}-{name}.yaml"), &yaml);
    }

    /// Removes pod `p` from its cluster's source (the pod keeps running,
    /// as a deleted pod does while it terminates).
    pub fn delete_pod_manifest(&self, p: PodId) {
        let pod = &self.pods[p.0];
        self.remove_manifest(
            pod.node.cluster,
            &format!("pod-{}-{}.yaml", pod.namespace, pod.name),
        );
    }

    /// Writes a Service with `vip`, its EndpointSlice (ready backends) and a
    /// GlobalServicePolicy into `c`'s source. Ports: TCP `http` and UDP `dns`,
    /// both 8080 → 8080.
    pub fn deploy_service(&self, c: ClusterId, svc: &GlobalService<'_>) {
        let endpoints: String = svc
            .backends
            .iter()
            .map(|p| (p, true))
            .chain(svc.not_ready.iter().map(|p| (p, false)))
            .map(|(p, ready)| {
                format!(
                    "- addresses: [\"{}\"]\n  conditions:\n    ready: {ready}\n",
                    self.pod(*p).ip
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
             apiVersion: knit.dev/v1alpha1\nkind: GlobalServicePolicy\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  services: [{name}]\n  export: {}\n  import: {}\n  affinity: {}\n{}",
            svc.export,
            svc.import,
            svc.affinity,
            svc.spec_extra
                .lines()
                .map(|l| format!("  {l}\n"))
                .collect::<String>()
        );
        self.write_manifest(c, &format!("svc-{ns}-{name}.yaml"), &yaml);
    }

    /// Writes a plain Service with `vip` and its EndpointSlice (ready
    /// `backends`, TCP `http` 8080) into `c`'s source, exported by a
    /// `ServiceExport` (MCS API) created at `exported_at` (RFC 3339) and by
    /// no GlobalServicePolicy.
    pub fn deploy_service_export(
        &self,
        c: ClusterId,
        (namespace, name): (&str, &str),
        vip: Ipv4Addr,
        backends: &[PodId],
        exported_at: &str,
    ) {
        let yaml = format!(
            "{}---\napiVersion: multicluster.x-k8s.io/v1alpha1\nkind: ServiceExport\nmetadata:\n  name: {name}\n  namespace: {namespace}\n  creationTimestamp: \"{exported_at}\"\n",
            self.plain_service_yaml((namespace, name), vip, backends, &[])
        );
        self.write_manifest(c, &format!("svc-{namespace}-{name}.yaml"), &yaml);
    }

    /// Writes a Service with `annotations` (Cilium's global-service ones,
    /// say) and its EndpointSlice of ready `backends` into `c`'s source,
    /// with no GlobalServicePolicy.
    pub fn deploy_annotated_service(
        &self,
        c: ClusterId,
        (namespace, name): (&str, &str),
        vip: Ipv4Addr,
        backends: &[PodId],
        annotations: &[(&str, &str)],
    ) {
        let yaml = self.plain_service_yaml((namespace, name), vip, backends, annotations);
        self.write_manifest(c, &format!("svc-{namespace}-{name}.yaml"), &yaml);
    }

    /// A Service with `vip` (TCP `http` 8080) and `annotations`, and its
    /// EndpointSlice of ready `backends`.
    fn plain_service_yaml(
        &self,
        (namespace, name): (&str, &str),
        vip: Ipv4Addr,
        backends: &[PodId],
        annotations: &[(&str, &str)],
    ) -> String {
        let endpoints: String = backends
            .iter()
            .map(|p| {
                format!(
                    "- addresses: [\"{}\"]\n  conditions:\n    ready: true\n",
                    self.pod(*p).ip
                )
            })
            .collect();
        let endpoints = if endpoints.is_empty() {
            "[]\n".to_owned()
        } else {
            format!("\n{endpoints}")
        };
        let annotations: String = annotations
            .iter()
            .map(|(k, v)| format!("    {k}: \"{v}\"\n"))
            .collect();
        let annotations = if annotations.is_empty() {
            String::new()
        } else {
            format!("  annotations:\n{annotations}")
        };
        let port = SERVER_PORT;
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {namespace}\n{annotations}spec:\n  clusterIP: {vip}\n  clusterIPs: [{vip}]\n  ports:\n  - name: http\n    port: {port}\n    protocol: TCP\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  namespace: {namespace}\n  labels:\n    kubernetes.io/service-name: {name}\naddressType: IPv4\nports:\n- name: http\n  port: {port}\n  protocol: TCP\nendpoints: {endpoints}"
        )
    }

    /// Runs `knitctl mcs render` for cluster `c` (what the operator does in
    /// Kubernetes): the derived Services and ServiceImports of every service
    /// the clusterset exports into `namespaces` go into `c`'s source, with
    /// clusterset VIPs from 10.96.240.0/24. Returns knitctl's output.
    pub fn import_clusterset_services(&self, c: ClusterId, namespaces: &str) -> String {
        let cluster = self.cluster(c);
        let out = Placement {
            netns: Some(cluster.cp.name()),
            ..Placement::default()
        }
        .command(&self.bins.knitctl)
        .args(["mcs", "render", "--etcd-config"])
        .arg(cluster.control.local_config_path())
        .args(["--endpoint", &self.etcd_url(c)])
        .args([
            "--namespaces",
            namespaces,
            "--clusterset-cidr",
            "10.96.240.0/24",
            "--out",
        ])
        .arg(cluster.control.source_dir())
        .output()
        .expect("running knitctl mcs render");
        assert!(
            out.status.success(),
            "knitctl mcs render failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Writes arbitrary YAML into cluster `c`'s source.
    pub fn write_manifest(&self, c: ClusterId, file: &str, yaml: &str) {
        self.cluster(c).control.write_source(file, yaml);
    }

    /// Removes a manifest from cluster `c`'s source.
    pub fn remove_manifest(&self, c: ClusterId, file: &str) {
        self.cluster(c).control.remove_source(file);
    }
}

/// Waits until the probe server logging to `log` says it serves (it binds
/// its sockets first): a request sent right after a pod is added must not
/// meet a closed port. Under qemu's TCG one did (20 of 20 refused).
fn wait_until_serving(log: &std::path::Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains("serving ") {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the probe server logging to {} did not start within 30 s: {text}",
            log.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
