//! One test cluster's control plane: certificates rendered by the
//! operator's code (as `knitctl render` does), a real etcd with client
//! certificate auth, and optionally a real `knit-apiserver`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use etcd_client::Client;
use knit_crds::ClusterMeshPeer;
use knit_kvstore::{EtcdClientConfig, etcd};
use knit_operator::config::ClusterConfig;
use knit_operator::{files, names, peer_export};

use crate::process::{ChildProcess, Placement, TempDir, free_port};

/// etcd's client port inside a control-plane namespace.
pub const NETNS_ETCD_PORT: u16 = 2379;
/// The peer front's port inside a control-plane namespace.
pub const NETNS_FRONT_PORT: u16 = 2480;

/// A cluster of the local mesh.
pub struct TestCluster {
    /// Cluster name.
    pub name: String,
    /// Cluster ID.
    pub id: u16,
    /// Port of its etcd on 127.0.0.1.
    pub port: u16,
    /// Port of its peer front (knit-apiserver), where peers connect.
    pub front_port: u16,
    config: ClusterConfig,
    peers: Vec<ClusterMeshPeer>,
    /// The mesh apiserver's replicas: one pod each, sharing the
    /// certificates (`dir`) and nothing else.
    replicas: Vec<Replica>,
    dir: TempDir,
}

/// One replica of the mesh apiserver: its own etcd and knit-apiserver, as
/// one pod of the Deployment.
struct Replica {
    /// Network namespace and underlay address; `None`: loopback of the
    /// test's own namespace.
    netns: Option<(String, String)>,
    peer_port: u16,
    etcd: Option<ChildProcess>,
    apiserver: Option<ChildProcess>,
    /// etcd's data, on tmpfs like the Deployment's `emptyDir: {medium: Memory}`.
    data: TempDir,
    /// Log file prefix (`etcd`, `etcd-r1`, …).
    tag: String,
}

impl TestCluster {
    /// Renders the cluster's certificates (no peers yet). Pod CIDR `10.<id>.0.0/16`.
    pub fn new(name: &str, id: u16) -> Self {
        Self::with_pod_cidr(name, id, &pod_cidr(id))
    }

    /// Like [`TestCluster::new`] with another pod CIDR.
    pub fn with_pod_cidr(name: &str, id: u16, cidr: &str) -> Self {
        Self::build(name, id, cidr, "127.0.0.1", &[])
    }

    /// A cluster whose control plane runs in network namespace `netns`,
    /// reachable by peers and agents at `ip` (etcd on port 2379).
    pub fn in_netns(name: &str, id: u16, cidr: &str, netns: &str, ip: &str) -> Self {
        Self::build(name, id, cidr, ip, &[(netns.to_owned(), ip.to_owned())])
    }

    /// A cluster whose mesh apiserver runs as one replica per
    /// `(netns, ip)` of `replicas`, each with its own etcd on port 2379,
    /// while agents and peers reach them at `service_ip` (a proxy the
    /// caller runs, as the Services are in Kubernetes).
    pub fn replicated(
        name: &str,
        id: u16,
        cidr: &str,
        service_ip: &str,
        replicas: &[(String, String)],
    ) -> Self {
        Self::build(name, id, cidr, service_ip, replicas)
    }

    fn build(name: &str, id: u16, cidr: &str, external: &str, netns: &[(String, String)]) -> Self {
        let (port, front_port) = if netns.is_empty() {
            (free_port(), free_port())
        } else {
            (NETNS_ETCD_PORT, NETNS_FRONT_PORT)
        };
        let placements: Vec<Option<(String, String)>> = if netns.is_empty() {
            vec![None]
        } else {
            netns.iter().cloned().map(Some).collect()
        };
        let replicas = placements
            .into_iter()
            .enumerate()
            .map(|(r, netns)| Replica {
                peer_port: if netns.is_some() { 2380 } else { free_port() },
                netns,
                etcd: None,
                apiserver: None,
                data: TempDir::new_in(Path::new("/dev/shm"), &format!("etcd-{name}")),
                tag: if r == 0 { String::new() } else { format!("-r{r}") },
            })
            .collect();
        let yaml = format!(
            "clusterName: {name}\nclusterID: {id}\npodCIDRs: [{cidr}]\napiserver:\n  port: {port}\n  peerPort: {front_port}\n  externalAddresses: [{external}]\n"
        );
        let config = ClusterConfig::from_yaml(&yaml).expect("test cluster config");
        let cluster = Self {
            name: name.to_owned(),
            id,
            port,
            front_port,
            config,
            peers: Vec::new(),
            replicas,
            dir: TempDir::new(&format!("cluster-{name}")),
        };
        std::fs::create_dir_all(cluster.source_dir()).expect("source dir");
        cluster.render();
        cluster
    }

    fn render(&self) {
        files::render_to_dir(&self.config, &self.peers, &self.pki(), jiff::Timestamp::now()).expect("render");
    }

    /// The ClusterMeshPeer other clusters apply for this one (`knitctl peer export`).
    pub fn manifest(&self) -> ClusterMeshPeer {
        let ca =
            std::fs::read_to_string(self.pki().join(names::PUBLIC_CA_CONFIGMAP).join("ca.crt")).expect("CA");
        peer_export::export_peer(
            &self.config,
            &ca,
            self.config
                .peer_endpoints(&Default::default())
                .expect("endpoints"),
        )
        .expect("export")
    }

    /// Makes `peers` this cluster's peers and renders again. Restart etcd
    /// afterwards for a change of trust to take effect.
    pub fn set_peers(&mut self, peers: &[ClusterMeshPeer]) {
        self.peers = peers.to_vec();
        self.render();
    }

    /// Applies `manifest` (a peer's fresh `knitctl peer export`) in place
    /// of the one this cluster holds for that peer, and renders again.
    pub fn apply_peer(&mut self, manifest: ClusterMeshPeer) {
        self.peers
            .retain(|p| p.spec.cluster_name != manifest.spec.cluster_name);
        self.peers.push(manifest);
        self.render();
    }

    /// Sets `certificates.meshCARotation` and renders again (what the
    /// operator does when the setting is committed).
    pub fn set_mesh_ca_rotation(&mut self, step: Option<knit_operator::config::CaRotationStep>) {
        self.config.certificates.mesh_ca_rotation = step;
        self.render();
    }

    /// The pod CIDR of this cluster.
    pub fn pod_cidr(&self) -> String {
        self.config.pod_cidrs.first().cloned().unwrap_or_default()
    }

    /// Directory of rendered Secrets/ConfigMaps.
    pub fn pki(&self) -> PathBuf {
        self.dir.path().join("pki")
    }

    /// Directory source of the apiserver.
    pub fn source_dir(&self) -> PathBuf {
        self.dir.path().join("source")
    }

    /// Directory of peer etcd client configs.
    pub fn peer_configs(&self) -> PathBuf {
        self.pki().join(names::PEER_CONFIGS_SECRET)
    }

    /// The etcd users file.
    pub fn users_file(&self) -> PathBuf {
        self.pki().join(names::ETCD_USERS_CONFIGMAP).join("users.yaml")
    }

    /// Path of the read-only `local` client config (what agents use).
    pub fn local_config_path(&self) -> PathBuf {
        self.pki().join(names::LOCAL_CERT_SECRET).join("config.yaml")
    }

    /// Path of the admin (local writer) client config.
    pub fn admin_config_path(&self) -> PathBuf {
        self.pki().join(names::ADMIN_CERT_SECRET).join("config.yaml")
    }

    /// The admin client config, resolved.
    pub fn admin_config(&self) -> EtcdClientConfig {
        etcd::load_client_config(&self.admin_config_path()).expect("admin config")
    }

    /// The client config this cluster uses to reach `peer`, resolved.
    pub fn peer_config(&self, peer: &str) -> EtcdClientConfig {
        etcd::load_client_config(&self.peer_configs().join(format!("{peer}.yaml"))).expect("peer config")
    }

    /// Number of mesh apiserver replicas.
    pub fn replica_count(&self) -> usize {
        self.replicas.len()
    }

    /// Starts every replica's etcd with client-certificate auth and waits
    /// until each accepts connections.
    pub fn start_etcd(&mut self) {
        self.start_etcd_with(&[]);
    }

    /// [`start_etcd`](Self::start_etcd) with `extra` flags (say, a quota).
    pub fn start_etcd_with(&mut self, extra: &[&str]) {
        for r in 0..self.replicas.len() {
            self.start_replica_etcd(r, extra);
        }
    }

    /// Starts replica `r`'s etcd on its data and waits until it accepts
    /// connections.
    pub fn start_replica_etcd(&mut self, r: usize, extra: &[&str]) {
        let pki = self.pki();
        let replica = &self.replicas[r];
        let data = replica.data.path().join("etcd");
        let (port, peer_port) = (self.port, replica.peer_port);
        let (client_urls, advertise) = match &replica.netns {
            Some((_, ip)) => (
                format!("https://127.0.0.1:{port},https://{ip}:{port}"),
                format!("https://{ip}:{port}"),
            ),
            None => (
                format!("https://127.0.0.1:{port}"),
                format!("https://127.0.0.1:{port}"),
            ),
        };
        let args: Vec<String> = [
            format!("--name={}", self.name),
            format!("--data-dir={}", data.display()),
            format!("--listen-client-urls={client_urls}"),
            format!("--advertise-client-urls={advertise}"),
            format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"),
            format!("--initial-cluster={}=http://127.0.0.1:{peer_port}", self.name),
            "--client-cert-auth=true".into(),
            format!(
                "--trusted-ca-file={}",
                pki.join(names::TRUSTED_CAS_CONFIGMAP).join("ca.crt").display()
            ),
            format!(
                "--cert-file={}",
                pki.join(names::SERVER_CERT_SECRET).join("tls.crt").display()
            ),
            format!(
                "--key-file={}",
                pki.join(names::SERVER_CERT_SECRET).join("tls.key").display()
            ),
            "--log-level=warn".into(),
        ]
        .into_iter()
        .chain(extra.iter().map(|s| s.to_string()))
        .collect();
        let log = self.dir.path().join(format!("etcd{}.log", replica.tag));
        let mut child = ChildProcess::spawn_in(
            &format!("etcd {}{}", self.name, replica.tag),
            "etcd",
            &args,
            &log,
            &replica.placement(),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while !replica.etcd_listening(port) {
            assert!(
                child.is_running() && Instant::now() < deadline,
                "etcd did not start\n{}",
                child.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.replicas[r].etcd = Some(child);
    }

    /// Kills every replica's etcd (by PID); the data stays for a restart.
    pub fn stop_etcd(&mut self) {
        for r in 0..self.replicas.len() {
            self.stop_replica_etcd(r);
        }
    }

    /// Kills replica `r`'s etcd (by PID); its data stays for a restart.
    pub fn stop_replica_etcd(&mut self, r: usize) {
        if let Some(mut e) = self.replicas[r].etcd.take() {
            e.stop();
        }
    }

    /// Deletes every replica's etcd data (etcd must be stopped): the next
    /// start is empty, as the mesh apiserver's in-memory etcd is after a
    /// pod restart.
    pub fn wipe_etcd(&mut self) {
        for r in 0..self.replicas.len() {
            self.wipe_replica_etcd(r);
        }
    }

    /// Deletes replica `r`'s etcd data (its etcd must be stopped).
    pub fn wipe_replica_etcd(&mut self, r: usize) {
        let replica = &self.replicas[r];
        assert!(replica.etcd.is_none(), "stop etcd before wiping its data");
        let _ = std::fs::remove_dir_all(replica.data.path().join("etcd"));
    }

    /// A client with the admin certificate, retrying until etcd answers.
    pub async fn admin(&self) -> Client {
        connect_retrying(&self.admin_config()).await
    }

    /// Starts the `knit-apiserver` binary at `bin` in every replica.
    pub fn start_apiserver(&mut self, bin: &str, extra: &[&str]) {
        for r in 0..self.replicas.len() {
            self.start_replica_apiserver(r, bin, extra);
        }
    }

    /// Starts the `knit-apiserver` binary at `bin` in replica `r`.
    pub fn start_replica_apiserver(&mut self, r: usize, bin: &str, extra: &[&str]) {
        let replica = &self.replicas[r];
        let mut args = vec![
            format!("--cluster-name={}", self.name),
            format!("--cluster-id={}", self.id),
            format!("--pod-cidrs={}", self.config.pod_cidrs.join(",")),
            format!("--etcd-config={}", self.admin_config_path().display()),
            format!("--etcd-users={}", self.users_file().display()),
            format!("--peer-configs={}", self.peer_configs().display()),
            format!(
                "--peer-listen={}:{}",
                if replica.netns.is_some() {
                    "0.0.0.0"
                } else {
                    "127.0.0.1"
                },
                self.front_port
            ),
            format!(
                "--server-cert-dir={}",
                self.pki().join(names::FRONT_CERT_SECRET).display()
            ),
            format!(
                "--peer-access-dir={}",
                self.pki().join(names::PEER_ACCESS_SECRET).display()
            ),
            format!("--source-dir={}", self.source_dir().display()),
            "--metrics-addr=127.0.0.1:0".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let log = self.dir.path().join(format!("apiserver{}.log", replica.tag));
        let child = ChildProcess::spawn_in(
            &format!("knit-apiserver {}{}", self.name, replica.tag),
            bin,
            &args,
            &log,
            &replica.placement(),
        );
        self.replicas[r].apiserver = Some(child);
    }

    /// PID of the first replica's running apiserver.
    pub fn apiserver_pid(&self) -> Option<u32> {
        self.replica_apiserver_pid(0)
    }

    /// PID of replica `r`'s running apiserver.
    pub fn replica_apiserver_pid(&self, r: usize) -> Option<u32> {
        self.replicas[r].apiserver.as_ref().and_then(ChildProcess::pid)
    }

    /// Kills every replica's apiserver (by PID).
    pub fn stop_apiserver(&mut self) {
        for r in 0..self.replicas.len() {
            self.stop_replica_apiserver(r);
        }
    }

    /// Kills replica `r`'s apiserver (by PID).
    pub fn stop_replica_apiserver(&mut self, r: usize) {
        if let Some(mut a) = self.replicas[r].apiserver.take() {
            a.stop();
        }
    }

    /// Tails of every replica's etcd and apiserver logs.
    pub fn logs(&self) -> String {
        self.replicas
            .iter()
            .flat_map(|r| [&r.etcd, &r.apiserver])
            .filter_map(|p| p.as_ref().map(ChildProcess::log_tail))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Writes a source manifest atomically (write + rename).
    pub fn write_source(&self, file: &str, yaml: &str) {
        write_atomic(&self.source_dir().join(file), yaml);
    }

    /// Removes a source manifest.
    pub fn remove_source(&self, file: &str) {
        let _ = std::fs::remove_file(self.source_dir().join(file));
    }
}

impl Replica {
    fn placement(&self) -> Placement<'_> {
        Placement {
            netns: self.netns.as_ref().map(|(ns, _)| ns.as_str()),
            ..Placement::default()
        }
    }

    fn etcd_listening(&self, port: u16) -> bool {
        match &self.netns {
            Some((ns, _)) => crate::process::tcp_open(ns, "127.0.0.1", port),
            None => std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
        }
    }
}

/// Makes every cluster a peer of every other (as exchanging `knitctl peer
/// export` manifests would).
pub fn full_mesh<C: std::borrow::BorrowMut<TestCluster>>(clusters: &mut [C]) {
    let manifests: Vec<ClusterMeshPeer> = clusters.iter().map(|c| c.borrow().manifest()).collect();
    for c in clusters.iter_mut() {
        let c: &mut TestCluster = c.borrow_mut();
        let others: Vec<ClusterMeshPeer> = manifests
            .iter()
            .filter(|m| m.spec.cluster_name != c.name)
            .cloned()
            .collect();
        c.set_peers(&others);
    }
}

/// Connects with `config`, retrying for up to 20 s.
pub async fn connect_retrying(config: &EtcdClientConfig) -> Client {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let error = match etcd::connect(config).await {
            Ok(mut c) => match c.status().await {
                Ok(_) => return c,
                Err(e) => e.to_string(),
            },
            Err(e) => knit_telemetry::error_chain(&e),
        };
        assert!(
            Instant::now() < deadline,
            "cannot reach etcd at {:?}: {error}",
            config.endpoints
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn pod_cidr(id: u16) -> String {
    format!("10.{id}.0.0/16")
}

fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).expect("writing a source file");
    std::fs::rename(&tmp, path).expect("renaming a source file");
}
