//! A replicated mesh apiserver on the local mesh
//! ([`MeshOptions::apiserver_replicas`](super::MeshOptions) > 1).
//!
//! ```text
//! <cluster>-cp ns   knit-service-proxy on the cluster's address, ports 2379 and 2480
//!                     ├── <cluster>-cp0 ns  etcd + knit-apiserver (replica 0)
//!                     └── <cluster>-cp1 ns  etcd + knit-apiserver (replica 1)
//! ```
//!
//! Agents and peers reach the cluster's address as before and land on one
//! replica per connection, as through the Services in Kubernetes; agents
//! also write their status into every replica (`--etcd-replicas`, the
//! headless Service's part). Replicas share the certificates and the
//! identity file and nothing else. This module starts the proxy and
//! stops, wipes and starts one replica at a time, for the fault and
//! upgrade tests.

use std::time::{Duration, Instant};

use super::LocalMesh;
use super::topology::ClusterId;
use crate::cluster::{NETNS_ETCD_PORT, NETNS_FRONT_PORT};
use crate::process::{ChildProcess, Placement};

/// The name the replicas' etcd certificate is checked for when agents
/// dial a replica's own address (the headless Service's name).
pub const REPLICAS_SERVER_NAME: &str = "knit-apiserver-replicas.knit-system.svc";

impl LocalMesh {
    /// The underlay addresses of cluster `c`'s replicas (empty with one).
    pub fn replica_ips(&self, c: ClusterId) -> Vec<String> {
        self.cluster(c)
            .replica_netns
            .iter()
            .enumerate()
            .map(|(r, _)| super::topology::underlay_ip(c, super::topology::REPLICA_SLOT + r))
            .collect()
    }

    /// Starts the Services' stand-in of cluster `c` when it has replicas
    /// and it is not running, and waits until it listens.
    pub(super) fn start_service_proxy(&mut self, c: ClusterId) {
        let ips = self.replica_ips(c);
        if ips.is_empty() || self.cluster(c).service_proxy.is_some() {
            return;
        }
        let mut args: Vec<String> = [NETNS_ETCD_PORT, NETNS_FRONT_PORT]
            .iter()
            .flat_map(|p| ["--port".to_owned(), p.to_string()])
            .collect();
        args.extend(ips.iter().flat_map(|ip| ["--backend".to_owned(), ip.clone()]));
        let cluster = self.cluster(c);
        let log = self
            .logs
            .path()
            .join(format!("service-proxy-{}.log", cluster.control.name));
        let mut proxy = ChildProcess::spawn_in(
            &format!("knit-service-proxy {}", cluster.control.name),
            &self.bins.service_proxy.to_string_lossy(),
            &args,
            &log,
            &Placement {
                netns: Some(cluster.cp.name()),
                ..Placement::default()
            },
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while !crate::process::tcp_open(cluster.cp.name(), "127.0.0.1", NETNS_FRONT_PORT) {
            assert!(
                proxy.is_running() && Instant::now() < deadline,
                "knit-service-proxy did not start\n{}",
                proxy.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.clusters[c.0].service_proxy = Some(proxy);
    }

    /// The log of cluster `c`'s Service proxy: one line per connection
    /// and the replica it went to.
    pub fn service_proxy_log(&self, c: ClusterId) -> String {
        self.cluster(c)
            .service_proxy
            .as_ref()
            .map(|p| std::fs::read_to_string(p.log_path()).unwrap_or_default())
            .unwrap_or_default()
    }

    /// Agent arguments for a replicated control plane: its status goes into
    /// every replica, checked for the headless Service's name. None with
    /// one replica, or for an agent build that does not know the flag.
    pub(super) fn replica_agent_args(&self, c: ClusterId) -> Vec<String> {
        let ips = self.replica_ips(c);
        if ips.is_empty() || !super::build_knows(&self.cluster(c).bins.agent, "--etcd-replicas") {
            return Vec::new();
        }
        let addresses: Vec<String> = ips.iter().map(|ip| format!("{ip}:{NETNS_ETCD_PORT}")).collect();
        vec![
            format!("--etcd-replicas={}", addresses.join(",")),
            format!("--etcd-replicas-server-name={REPLICAS_SERVER_NAME}"),
        ]
    }

    /// Kills replica `r` of cluster `c`, etcd and apiserver (by PID), as a
    /// node lost or a pod evicted: its etcd's data stays until
    /// [`LocalMesh::wipe_replica`].
    pub fn stop_replica(&mut self, c: ClusterId, r: usize) {
        let control = &mut self.clusters[c.0].control;
        control.stop_replica_apiserver(r);
        control.stop_replica_etcd(r);
    }

    /// Deletes replica `r`'s etcd data (it must be stopped): a new pod.
    pub fn wipe_replica(&mut self, c: ClusterId, r: usize) {
        self.clusters[c.0].control.wipe_replica_etcd(r);
    }

    /// Starts replica `r` of cluster `c` (etcd, then its apiserver of the
    /// cluster's build).
    pub fn start_replica(&mut self, c: ClusterId, r: usize) {
        let (bin, args) = self.apiserver_args(c);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let control = &mut self.clusters[c.0].control;
        control.start_replica_etcd(r, &[]);
        control.start_replica_apiserver(r, &bin, &args);
    }

    /// Replaces replica `r` of cluster `c` with a new pod of the cluster's
    /// build: stopped, its etcd emptied, started.
    pub fn replace_replica(&mut self, c: ClusterId, r: usize) {
        self.stop_replica(c, r);
        self.wipe_replica(c, r);
        self.start_replica(c, r);
    }

    /// `knitctl status -o json` read from replica `r`'s own etcd (inside
    /// its namespace, on loopback); `None` while it fails.
    pub fn replica_status_report(
        &self,
        c: ClusterId,
        r: usize,
    ) -> Option<knit_operator::status_table::StatusReport> {
        let cluster = self.cluster(c);
        let out = Placement {
            netns: Some(cluster.replica_netns[r].name()),
            ..Placement::default()
        }
        .command(&self.bins.knitctl)
        .args(["status", "-o", "json", "--etcd-config"])
        .arg(cluster.control.local_config_path())
        .args(["--endpoint", &format!("https://127.0.0.1:{NETNS_ETCD_PORT}")])
        .output()
        .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Waits (up to 2 minutes) until replica `r` of cluster `c` has every
    /// peer synced with at least `endpoints` endpoints each, and the
    /// status of every agent that writes into every replica: a replica
    /// that started empty has caught up.
    pub fn wait_replica_synced(&self, c: ClusterId, r: usize, endpoints: usize) {
        let peers = self.clusters.len() - 1;
        let agents = self
            .cluster(c)
            .nodes
            .iter()
            .filter(|n| n.status_in_every_replica)
            .count();
        let synced = |report: &knit_operator::status_table::StatusReport| {
            report.nodes.len() >= agents
                && report.ready_peers().len() == peers
                && report.peers.iter().all(|p| {
                    p.counts
                        .get(&knit_kvstore::keys::Kind::Endpoints)
                        .map_or(0, |n| *n as usize)
                        >= endpoints
                })
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let report = self.replica_status_report(c, r);
            if report.as_ref().is_some_and(synced) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for replica {r} of {} to sync its peers and hold {agents} agents' status; it reports {report:?}\n{}",
                c.name(),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Kills only replica `r`'s etcd (its apiserver runs on), as a crash
    /// of the etcd container.
    pub fn stop_replica_etcd(&mut self, c: ClusterId, r: usize) {
        self.clusters[c.0].control.stop_replica_etcd(r);
    }

    /// Starts replica `r`'s etcd again on its data.
    pub fn start_replica_etcd(&mut self, c: ClusterId, r: usize) {
        self.clusters[c.0].control.start_replica_etcd(r, &[]);
    }
}
