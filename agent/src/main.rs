//! `knit-agent`: the node agent binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use knit_agent::metrics::Metrics;
use knit_agent::netdev::VXLAN_PORT;
use knit_agent::run::{AgentSettings, run};
use knit_sources::directory::DirectorySource;
use knit_sources::kubernetes::KubernetesSource;
use knit_telemetry::prometheus_client::registry::Registry;

/// Programs this node's eBPF datapath from the local mesh kvstore.
#[derive(Debug, Parser)]
#[command(name = "knit-agent", version)]
struct Args {
    /// This cluster's name; read from the local kvstore when not given.
    #[arg(long, env = "KNIT_CLUSTER_NAME")]
    cluster_name: Option<String>,
    /// This node's name.
    #[arg(long, env = "KNIT_NODE_NAME")]
    node_name: String,
    /// etcd client config of the local kvstore.
    #[arg(long, default_value = "/etc/knit/etcd/config.yaml")]
    etcd_config: PathBuf,
    /// Every replica of the mesh apiserver's etcd (`host:port`, comma
    /// separated; a name stands for every address it resolves to, e.g. the
    /// headless Service knit-apiserver-replicas): this node's status is
    /// written into each. Unset or unresolvable: through --etcd-config.
    #[arg(long, env = "KNIT_ETCD_REPLICAS", value_delimiter = ',')]
    etcd_replicas: Vec<String>,
    /// The name the replicas' certificate is checked for; the first
    /// --etcd-replicas host when unset.
    #[arg(long, env = "KNIT_ETCD_REPLICAS_SERVER_NAME")]
    etcd_replicas_server_name: Option<String>,
    /// Read NetworkPolicies from this directory of Kubernetes YAML instead
    /// of the Kubernetes API.
    #[arg(long)]
    source_dir: Option<PathBuf>,
    /// Rescan interval of --source-dir.
    #[arg(long, default_value = "5s", value_parser = knit_telemetry::parse_duration)]
    poll_interval: Duration,
    /// bpffs directory for pinned maps and links.
    #[arg(long, default_value = "/sys/fs/bpf/knit")]
    bpf_pin_dir: PathBuf,
    /// cgroup v2 directory of this node's pods, for socket-level load
    /// balancing (e.g. /run/knit/cgroupv2/kubepods.slice).
    #[arg(long)]
    cgroup_path: Option<PathBuf>,
    /// Name of the VXLAN device.
    #[arg(long, default_value = "knit_vxlan")]
    tunnel_interface: String,
    /// UDP port of the VXLAN device (the same on every cluster of the
    /// mesh).
    #[arg(long, env = "KNIT_TUNNEL_PORT", default_value_t = VXLAN_PORT)]
    tunnel_port: u16,
    /// How tc programs attach: `auto` uses TCX where the kernel has it
    /// (6.6+) and netlink cls_bpf elsewhere.
    #[arg(long, value_enum, env = "KNIT_TC_ATTACH", default_value_t = knit_agent::datapath::tc::TcAttach::Auto)]
    tc_attach: knit_agent::datapath::tc::TcAttach,
    /// knit-cni's state directory (the `stateDir` of the conflist's knit
    /// plugin).
    #[arg(long, default_value = knit_cni::attachment::DEFAULT_STATE_DIR)]
    cni_state_dir: PathBuf,
    /// The node's CNI config directory; when set, the agent keeps Knit
    /// chained into the active config if the cluster's CNI rewrites it.
    #[arg(long)]
    cni_conf_dir: Option<PathBuf>,
    /// Direct routes to this cluster's other nodes' pod CIDRs: `auto` adds
    /// them when the node runs Knit's default conflist (a cluster CNI adds
    /// its own).
    #[arg(long, value_enum, default_value_t = knit_agent::node_routes::Mode::Auto)]
    direct_node_routes: knit_agent::node_routes::Mode,
    /// UDP port of data-path health probes between agents.
    #[arg(long, default_value_t = knit_agent::health::HEALTH_PORT)]
    health_port: u16,
    /// Interval of data-path health probes (a node fails after 3 missed).
    #[arg(long, default_value = "500ms", value_parser = knit_telemetry::parse_duration)]
    health_interval: Duration,
    /// A NetworkPolicy peer selector that names no cluster
    /// (`knit.dev/cluster` or `io.cilium.k8s.policy.cluster`) selects only
    /// this cluster's pods, as Cilium 1.19 does by default. `false` keeps
    /// the older meaning (every cluster).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    policy_default_local_cluster: bool,
    /// Namespace of Knit's control plane (the mesh apiserver's pods): a
    /// pod there is not isolated while its identity is unknown, since the
    /// identities come through it.
    #[arg(long, env = "POD_NAMESPACE", default_value = "knit-system")]
    control_plane_namespace: String,
    /// Metrics and health address.
    #[arg(long, default_value = "0.0.0.0:9964")]
    metrics_addr: SocketAddr,
    /// Encryption between nodes: `none`, or `wireguard` (VXLAN inside
    /// WireGuard; userspace where the kernel has no WireGuard).
    #[arg(long, value_enum, env = "KNIT_ENCRYPTION", default_value_t = Encryption::None)]
    encryption: Encryption,
    /// With WireGuard: pod traffic to a node without a key is dropped (and
    /// counted), never sent in plaintext, also while the agent restarts.
    #[arg(long, env = "KNIT_ENCRYPTION_STRICT", default_value_t = false, action = clap::ArgAction::Set)]
    encryption_strict: bool,
    /// UDP port of WireGuard (Cilium's).
    #[arg(long, default_value_t = 51871)]
    wireguard_port: u16,
    /// The node's WireGuard private key, made at first start (keep it on
    /// the node: a hostPath).
    #[arg(long, default_value = "/var/lib/knit/wireguard.key")]
    wireguard_key: PathBuf,
    /// Rotate the WireGuard key when it is this old (`0`: only on demand,
    /// by creating `<wireguard-key>.rotate`, e.g. with `kubectl exec`).
    #[arg(long, env = "KNIT_WIREGUARD_KEY_LIFETIME", default_value = "0s", value_parser = knit_telemetry::parse_duration)]
    wireguard_key_lifetime: Duration,
    /// How pods of other nodes are reached: `tunnel` (VXLAN to every
    /// node), `native` (unencapsulated to this cluster's nodes and those of
    /// other native clusters, through the node's routes), `hybrid` (native
    /// within this cluster, the tunnel to other clusters). The same for
    /// every node of a cluster, and the mesh apiserver's.
    #[arg(long, env = "KNIT_ROUTING_MODE", default_value = "tunnel")]
    routing_mode: knit_agent::routing::RoutingMode,
    /// Flow events the datapath emits for `knitctl observe`: `all`,
    /// `none`, or a comma-separated list of `drops`, `policy` (verdicts
    /// that admit a flow), `translations` (service connects).
    #[arg(long, env = "KNIT_OBSERVE", default_value = "all", value_parser = knit_agent::observe::parse_kinds)]
    observe: std::vec::Vec<u8>,
    /// Flow events the agent keeps for `knitctl observe`.
    #[arg(long, default_value_t = knit_agent::observe::log::DEFAULT_CAPACITY)]
    observe_history: usize,
    /// Unix socket of the agent's local API (knitctl observe, services,
    /// identities, ipcache, endpoints).
    #[arg(long, env = "KNIT_API_SOCKET", default_value = knit_agent_api::DEFAULT_SOCKET)]
    api_socket: PathBuf,
}

/// `--encryption`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Encryption {
    /// Plaintext VXLAN.
    None,
    /// WireGuard between nodes.
    Wireguard,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _guard = knit_telemetry::init_tracing("knit-agent")?;
    knit_telemetry::until_shutdown(serve(), "shutting down; the datapath stays in place").await
}

/// The subcommand, or the agent until it fails.
async fn serve() -> anyhow::Result<()> {
    match std::env::args().nth(1).as_deref() {
        Some("install-cni") => return install_cni(CniArgs::parse_from(std::env::args().skip(1))).await,
        Some("uninstall-cni") => {
            let args = CniArgs::parse_from(std::env::args().skip(1));
            let restored = knit_cni::conflist::uninstall(&args.conf_dir)?;
            tracing::info!(?restored, "Knit removed from the node's CNI config");
            return Ok(());
        }
        _ => {}
    }
    let args = Args::parse();
    let metrics = Metrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    // Health answers from the first moment: the liveness probe must not
    // kill an agent that waits for etcd; readiness says what it waits for.
    let (health, server) = knit_telemetry::serve_registry(args.metrics_addr, registry);
    let mut server = tokio::spawn(server);
    let direct_node_routes = args.direct_node_routes.enabled(args.cni_conf_dir.as_deref());
    let agent = async {
        match &args.source_dir {
            Some(dir) => {
                let source = DirectorySource::new(dir, args.poll_interval);
                agent(&args, direct_node_routes, source, metrics, health).await
            }
            None => {
                let kube = kube::Client::try_default()
                    .await
                    .context("connecting to the Kubernetes API")?;
                // Nodes only where the agent routes to other nodes' pods.
                let kinds = knit_sources::Kinds {
                    nodes: direct_node_routes,
                    ..knit_sources::Kinds::AGENT
                };
                agent(
                    &args,
                    direct_node_routes,
                    KubernetesSource::new(kube, kinds),
                    metrics,
                    health,
                )
                .await
            }
        }
    };
    tokio::select! {
        r = &mut server => r.context("metrics server")?.context("metrics server")?,
        r = agent => r?,
    }
    Ok(())
}

/// The agent on `source` (see `knit_agent::run`).
async fn agent<S: knit_sources::Source>(
    args: &Args,
    direct_node_routes: bool,
    source: S,
    metrics: Metrics,
    health: knit_telemetry::Health,
) -> anyhow::Result<()> {
    if args.encryption == Encryption::Wireguard
        && args.routing_mode != knit_agent::routing::RoutingMode::Tunnel
    {
        anyhow::bail!(
            "routingMode {} with encryption wireguard: WireGuard carries the tunnel, so encryption needs routingMode tunnel; set routingMode tunnel or encryption none",
            args.routing_mode
        );
    }
    let settings = AgentSettings {
        cluster: args.cluster_name.clone(),
        node: args.node_name.clone(),
        etcd_config: args.etcd_config.clone(),
        etcd_replicas: knit_agent::status_publish::EtcdReplicas {
            addresses: args.etcd_replicas.clone(),
            server_name: args.etcd_replicas_server_name.clone(),
        },
        pin_dir: args.bpf_pin_dir.clone(),
        cgroup: args.cgroup_path.clone(),
        tunnel_interface: args.tunnel_interface.clone(),
        tunnel_port: args.tunnel_port,
        tc_attach: args.tc_attach,
        refresh: Duration::from_millis(500),
        cni_state_dir: args.cni_state_dir.clone(),
        cni_conf_dir: args.cni_conf_dir.clone(),
        direct_node_routes,
        health_port: args.health_port,
        health_interval: args.health_interval,
        policy_default_local_cluster: args.policy_default_local_cluster,
        control_plane_namespace: args.control_plane_namespace.clone(),
        encryption: (args.encryption == Encryption::Wireguard).then(|| {
            knit_agent::encryption::node::EncryptionSettings {
                key_path: args.wireguard_key.clone(),
                port: args.wireguard_port,
                interface: "knit_wg".to_owned(),
                strict: args.encryption_strict,
                key_lifetime: (!args.wireguard_key_lifetime.is_zero()).then_some(args.wireguard_key_lifetime),
            }
        }),
        routing_mode: args.routing_mode,
        observe: knit_agent::observe::ObserveSettings {
            kinds: args.observe.clone(),
            history: args.observe_history,
            socket: Some(args.api_socket.clone()),
        },
    };
    run(settings, source, metrics, health).await.context("agent")
}

/// `knit-agent install-cni` / `uninstall-cni` (the DaemonSet's init
/// container): see `knit_agent::cni_install`.
#[derive(Debug, Parser)]
#[command(name = "knit-agent install-cni")]
struct CniArgs {
    /// The node's CNI config directory (mounted from the host).
    #[arg(long, default_value = "/host/etc/cni/net.d")]
    conf_dir: PathBuf,
    /// The node's CNI plugin directory (mounted from the host).
    #[arg(long, default_value = "/host/opt/cni/bin")]
    bin_dir: PathBuf,
    /// knit-cni in this image.
    #[arg(long, default_value = "/usr/local/bin/knit-cni")]
    knit_cni: PathBuf,
    /// Reference plugins in this image.
    #[arg(long, default_value = "/usr/lib/cni")]
    image_plugins: PathBuf,
    /// knit-cni's state directory as the node sees it.
    #[arg(long, default_value = knit_cni::attachment::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// The node's pod CIDRs, for the default conflist; read from the Node
    /// object (`spec.podCIDRs`) when not given and needed.
    #[arg(long = "pod-cidr")]
    pod_cidrs: Vec<String>,
    /// This node's name (for reading its pod CIDRs).
    #[arg(long, env = "KNIT_NODE_NAME")]
    node_name: Option<String>,
    /// MTU of the default conflist's pods; by default the MTU of the
    /// interface of the node's default route less the tunnel's 50 bytes
    /// (and WireGuard's 60 with `--encryption=wireguard`).
    #[arg(long, env = "KNIT_POD_MTU")]
    pod_mtu: Option<u32>,
    /// The agent's encryption, whose overhead the pods' MTU leaves room for.
    #[arg(long, value_enum, env = "KNIT_ENCRYPTION", default_value_t = Encryption::None)]
    encryption: Encryption,
    /// The agent's routing mode: outside `tunnel`, pods get the underlay's
    /// full MTU (routes into the tunnel carry the smaller one).
    #[arg(long, env = "KNIT_ROUTING_MODE", default_value = "tunnel")]
    routing_mode: knit_agent::routing::RoutingMode,
}

async fn install_cni(args: CniArgs) -> anyhow::Result<()> {
    let mut pod_cidrs = args.pod_cidrs.clone();
    if pod_cidrs.is_empty() && knit_agent::cni_install::needs_pod_cidrs(&args.conf_dir)? {
        let node = args
            .node_name
            .as_deref()
            .context("the node has no CNI config: give --pod-cidr or --node-name (KNIT_NODE_NAME) to read the Node's podCIDRs")?;
        let kube = kube::Client::try_default()
            .await
            .context("connecting to the Kubernetes API")?;
        let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(kube);
        let n = nodes
            .get(node)
            .await
            .with_context(|| format!("reading Node {node}"))?;
        let spec = n.spec.unwrap_or_default();
        pod_cidrs = spec.pod_cidrs.unwrap_or_default();
        if pod_cidrs.is_empty() {
            pod_cidrs.extend(spec.pod_cidr);
        }
    }
    let overhead = match args.encryption {
        Encryption::None => 0,
        Encryption::Wireguard => knit_agent::encryption::node::WIREGUARD_OVERHEAD,
    };
    let pod_mtu = args.pod_mtu.or_else(|| {
        let mtu = if args.routing_mode == knit_agent::routing::RoutingMode::Tunnel {
            knit_agent::cni_install::node_pod_mtu()
        } else {
            knit_agent::cni_install::underlay_mtu()
        };
        mtu.map(|m| m.saturating_sub(overhead))
    });
    let installed = knit_agent::cni_install::install(
        &args.knit_cni,
        &args.image_plugins,
        &args.bin_dir,
        &args.conf_dir,
        &args.state_dir,
        &pod_cidrs,
        pod_mtu,
    )?;
    tracing::info!(?installed, ?pod_mtu, "CNI installed");
    Ok(())
}
