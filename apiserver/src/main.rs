//! knit-apiserver binary: bootstrap etcd, export this cluster, mirror peers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use knit_apiserver::export::LocalCluster;
use knit_apiserver::export::exporter::{ExporterSettings, run_exporter};
use knit_apiserver::export::identity_store::IdentityStore;
use knit_apiserver::metrics::Metrics;
use knit_apiserver::mirror::{MeshSettings, run_mesh};
use knit_kvstore::{EtcdAccess, etcd};
use knit_sources::directory::DirectorySource;
use knit_sources::kubernetes::KubernetesSource;
use prometheus_client::registry::Registry;

#[derive(Parser)]
#[command(
    version,
    about = "Knit mesh apiserver: exports this cluster to etcd and mirrors peers"
)]
struct Args {
    /// This cluster's name.
    #[arg(long)]
    cluster_name: String,
    /// This cluster's ID (1–511).
    #[arg(long)]
    cluster_id: u16,
    /// Pod CIDRs of this cluster (comma-separated); pods outside are not
    /// exported. None (or empty): the Nodes' podCIDRs.
    #[arg(long, value_delimiter = ',', value_parser = parse_pod_cidr)]
    pod_cidrs: Vec<ipnet::IpNet>,
    /// UDP port of this cluster's VXLAN tunnel (the agents'
    /// `tunnelPort`), announced in the cluster's config record.
    #[arg(long, env = "KNIT_TUNNEL_PORT", default_value_t = 8472)]
    tunnel_port: u16,
    /// How this cluster's nodes reach other nodes' pods (the agents'
    /// `routingMode`: tunnel, native or hybrid), announced in the cluster's
    /// config record.
    #[arg(long, env = "KNIT_ROUTING_MODE", default_value = "tunnel")]
    routing_mode: knit_kvstore::records::RoutingMode,
    /// The agents' `encryption` (none or wireguard). With wireguard, the
    /// first export waits for every node's key (--node-report-wait).
    #[arg(long, env = "KNIT_ENCRYPTION", default_value = "none", value_parser = ["none", "wireguard"])]
    encryption: String,
    /// With encryption on: the longest the first export waits for every
    /// node's agent to report its key into this etcd (an etcd that started
    /// empty has none until they write again).
    #[arg(long, default_value = "20s", value_parser = knit_telemetry::parse_duration)]
    node_report_wait: std::time::Duration,
    /// etcd client config of the local writer (the `admin` certificate).
    #[arg(long)]
    etcd_config: PathBuf,
    /// etcd users file written by the operator; applied before anything else.
    #[arg(long)]
    etcd_users: Option<PathBuf>,
    /// Directory of peer etcd client configs (`<peer>.yaml`).
    #[arg(long)]
    peer_configs: Option<PathBuf>,
    /// Read cluster state from this directory of Kubernetes YAML instead of
    /// the Kubernetes API (sites without Kubernetes, the local mesh).
    #[arg(long)]
    source_dir: Option<PathBuf>,
    /// With --source-dir: keep identity numbers in this JSON file, so they
    /// survive restarts of etcd and agree between apiservers sharing it
    /// (without it, numbers live only in etcd).
    #[arg(long, requires = "source_dir")]
    identity_file: Option<PathBuf>,
    /// Without --source-dir: the ConfigMap identity numbers are kept in, in
    /// the pod's namespace.
    #[arg(long, default_value = "knit-identities")]
    identity_configmap: String,
    /// The namespace of the identity ConfigMap (the pod's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "knit-system")]
    namespace: String,
    /// How often the source directory is fully rescanned (a safety net: inotify
    /// reports changes as they happen).
    #[arg(long, default_value = "5s", value_parser = knit_telemetry::parse_duration)]
    poll_interval: Duration,
    /// How long a peer may be unreachable before its services are withdrawn.
    #[arg(long, default_value = "30s", value_parser = knit_telemetry::parse_duration)]
    grace_period: Duration,
    /// TTL of the leases holding published and mirrored keys, in seconds.
    #[arg(long, default_value_t = 30)]
    lease_ttl: i64,
    /// Serve peers on this address through the peer front, which lets a
    /// peer's CA act only as that peer (see `knit_apiserver::front`).
    /// Needs --peer-configs, --server-cert-dir and --peer-access-dir.
    #[arg(long, requires_all = ["peer_configs", "server_cert_dir", "peer_access_dir"])]
    peer_listen: Option<SocketAddr>,
    /// The server certificate peers see (`tls.crt`, `tls.key`).
    #[arg(long)]
    server_cert_dir: Option<PathBuf>,
    /// Certificates the local CA issued for each peer's read-only etcd user
    /// (`<peer>.crt`, `<peer>.key`) and the local CA (`ca.crt`).
    #[arg(long)]
    peer_access_dir: Option<PathBuf>,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "127.0.0.1:9962")]
    metrics_addr: SocketAddr,
    /// Peer front: how long a client may take to complete the TLS handshake.
    #[arg(long, default_value = "10s", value_parser = knit_telemetry::parse_duration)]
    front_handshake_timeout: Duration,
    /// Peer front: handshakes in progress at once, from all sources.
    #[arg(long, default_value_t = 256)]
    front_max_handshakes: usize,
    /// Peer front: handshakes in progress at once from one source address.
    #[arg(long, default_value_t = 16)]
    front_max_handshakes_per_source: usize,
    /// Peer front: authenticated connections of one peer at once.
    #[arg(long, default_value_t = 8)]
    front_max_connections_per_peer: usize,
    /// Peer front: concurrent calls and watches on one connection.
    #[arg(long, default_value_t = 64)]
    front_max_streams: u32,
    /// Peer front: watch streams of one peer at once (a KVStoreMesh needs one).
    #[arg(long, default_value_t = 4)]
    front_max_watches_per_peer: usize,
    /// How often the local etcd's size and alarms are checked (defragmented
    /// when mostly free, recovered from a NOSPACE alarm).
    #[arg(long, default_value = "60s", value_parser = knit_telemetry::parse_duration)]
    etcd_maintenance_interval: Duration,
    /// Peer front: calls one peer may start per second (bursts of twice as many).
    #[arg(long, default_value_t = 200.0)]
    front_requests_per_second: f64,
    /// Peer front: bytes of read answers one peer may take per second, on
    /// average (a call waits while the peer is over it).
    #[arg(long, default_value_t = 1 << 20)]
    front_read_bytes_per_second: u64,
    /// Peer front: bytes of read answers one peer may take in a burst (its
    /// KVStoreMesh's first list of this cluster).
    #[arg(long, default_value_t = 16 << 20)]
    front_read_burst_bytes: u64,
    /// Peer front: keys one read may ask for; a list for more gets this
    /// many and pages on (one unlimited list of a big cluster is a spike
    /// every other reader waits behind).
    #[arg(long, default_value_t = 1000)]
    front_max_read_keys: i64,
}

impl Args {
    /// The peer front's settings, when it is asked for.
    fn front_settings(
        &self,
        config: &knit_kvstore::EtcdClientConfig,
    ) -> anyhow::Result<Option<knit_apiserver::front::FrontSettings>> {
        let (Some(listen), Some(peer_configs), Some(server_cert_dir), Some(peer_access)) = (
            &self.peer_listen,
            &self.peer_configs,
            &self.server_cert_dir,
            &self.peer_access_dir,
        ) else {
            return Ok(None);
        };
        let upstream = config
            .endpoints
            .first()
            .and_then(|e| e.strip_prefix("https://"))
            .and_then(|hostport| hostport.parse::<SocketAddr>().ok())
            .context("--etcd-config's first endpoint must be https://IP:PORT (etcd on loopback) for the peer front")?;
        Ok(Some(knit_apiserver::front::FrontSettings {
            listen: *listen,
            server_cert_dir: server_cert_dir.clone(),
            peer_configs: peer_configs.clone(),
            peer_access: peer_access.clone(),
            upstream,
            limits: self.front_limits(),
        }))
    }

    fn front_limits(&self) -> knit_apiserver::front::limits::FrontLimits {
        knit_apiserver::front::limits::FrontLimits {
            handshake_timeout: self.front_handshake_timeout,
            max_handshakes: self.front_max_handshakes,
            max_handshakes_per_source: self.front_max_handshakes_per_source,
            max_connections_per_peer: self.front_max_connections_per_peer,
            max_streams_per_connection: self.front_max_streams,
            max_watches_per_peer: self.front_max_watches_per_peer,
            requests_per_second: self.front_requests_per_second,
            request_burst: 2.0 * self.front_requests_per_second,
            read_bytes_per_second: self.front_read_bytes_per_second as f64,
            read_burst_bytes: self.front_read_burst_bytes as f64,
            max_read_keys: self.front_max_read_keys.max(1),
            ..knit_apiserver::front::limits::FrontLimits::default()
        }
    }
}

fn parse_pod_cidr(s: &str) -> Result<ipnet::IpNet, String> {
    s.parse()
        .map_err(|e| format!("{s:?} is not a CIDR ({e}); give e.g. --pod-cidrs=10.1.0.0/16,fd00:1::/48"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _tracing = knit_telemetry::init_tracing("knit-apiserver")?;
    knit_telemetry::until_shutdown(serve(args), "shutting down").await
}

/// Runs until a component fails.
async fn serve(args: Args) -> anyhow::Result<()> {
    let metrics = Metrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    // Health answers from the first moment (the liveness probe must not
    // kill an apiserver that waits for its etcd); readiness says why not.
    let (health, server) = knit_telemetry::serve_registry(args.metrics_addr, registry);
    let mut server = tokio::spawn(server);
    health.set_waiting_for("the local etcd");

    let config = etcd::load_client_config(&args.etcd_config).context("loading the etcd client config")?;
    let front = args.front_settings(&config)?;
    let front_metrics = metrics.clone();
    let front = async {
        match front {
            Some(settings) => knit_apiserver::front::run_front(settings, front_metrics).await,
            None => std::future::pending().await,
        }
    };
    let mut client = loop {
        match etcd::connect(&config).await {
            Ok(c) => break c,
            Err(e) => {
                tracing::warn!(error = %knit_telemetry::error_chain(&e), "waiting for the local etcd");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    if let Some(users) = &args.etcd_users {
        let text = std::fs::read_to_string(users).with_context(|| format!("reading {}", users.display()))?;
        let access = EtcdAccess::from_yaml(&text)?;
        loop {
            match knit_apiserver::bootstrap::bootstrap(&mut client, &access).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %knit_telemetry::error_chain(&e), "etcd bootstrap failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        tracing::info!(
            users = access.users.len(),
            "etcd users and roles bootstrapped; auth enabled"
        );
    }

    health.set_waiting_for("the first complete export of the cluster");
    let exporter = export(&args, client.clone(), metrics.clone(), health);
    let mesh = async {
        match &args.peer_configs {
            Some(dir) => {
                run_mesh(
                    client.clone(),
                    dir.clone(),
                    MeshSettings {
                        grace_period: args.grace_period,
                        lease_ttl_secs: args.lease_ttl,
                        metrics: metrics.clone(),
                    },
                )
                .await
            }
            None => std::future::pending().await,
        }
    };
    let maintenance = knit_apiserver::maintenance::run_maintenance(
        client.clone(),
        knit_apiserver::maintenance::MaintenanceSettings {
            interval: args.etcd_maintenance_interval,
            ..Default::default()
        },
        metrics.clone(),
    );
    tokio::select! {
        () = maintenance => anyhow::bail!("etcd maintenance ended"),
        r = &mut server => r.context("metrics server")?.context("metrics server")?,
        r = exporter => r.context("exporter")?,
        () = mesh => anyhow::bail!("mesh ended"),
        r = front => r.context("peer front")?,
    }
    Ok(())
}

/// Exports the cluster from its source (a directory, or the Kubernetes
/// API) into the local etcd, with identity numbers kept in the matching
/// store (`--identity-file`, or the ConfigMap `--identity-configmap`).
async fn export(
    args: &Args,
    client: etcd_client::Client,
    metrics: Metrics,
    health: knit_telemetry::Health,
) -> anyhow::Result<()> {
    let cluster = LocalCluster {
        name: args.cluster_name.clone(),
        id: args.cluster_id,
        pod_cidrs: args.pod_cidrs.clone(),
        tunnel_port: Some(args.tunnel_port),
        routing_mode: args.routing_mode,
    };
    let settings = |identities| ExporterSettings {
        cluster,
        lease_ttl_secs: args.lease_ttl,
        identities,
        node_report_wait: (args.encryption == "wireguard").then_some(args.node_report_wait),
    };
    match &args.source_dir {
        Some(dir) => {
            let source = DirectorySource::new(dir, args.poll_interval);
            let identities = match &args.identity_file {
                Some(file) => IdentityStore::File(file.clone()),
                None => IdentityStore::Memory(Default::default()),
            };
            run_exporter(client, source, settings(identities), metrics, health).await?;
        }
        None => {
            let kube = kube::Client::try_default()
                .await
                .context("connecting to the Kubernetes API")?;
            let identities = IdentityStore::ConfigMap(
                Box::new(kube::Api::namespaced(kube.clone(), &args.namespace)),
                args.identity_configmap.clone(),
            );
            let source = KubernetesSource::new(kube, knit_sources::Kinds::ALL);
            run_exporter(client, source, settings(identities), metrics, health).await?;
        }
    }
    Ok(())
}
