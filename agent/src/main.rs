//! `knit-agent`: the node agent binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use knit_agent::metrics::Metrics;
use knit_agent::netdev::VXLAN_PORT;
use knit_agent::run::{AgentSettings, run};
use knit_apiserver::source::directory::DirectorySource;
use knit_apiserver::source::kubernetes::KubernetesSource;
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
    /// UDP port of the VXLAN device.
    #[arg(long, default_value_t = VXLAN_PORT)]
    tunnel_port: u16,
    /// knit-cni's state directory (the `stateDir` of the conflist's knit
    /// plugin).
    #[arg(long, default_value = knit_cni::attachment::DEFAULT_STATE_DIR)]
    cni_state_dir: PathBuf,
    /// Metrics and health address.
    #[arg(long, default_value = "0.0.0.0:9964")]
    metrics_addr: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _guard = knit_telemetry::init_tracing("knit-agent")?;
    let args = Args::parse();
    let metrics = Metrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let (health, server) = knit_telemetry::serve_registry(args.metrics_addr, registry);
    let cluster = match &args.cluster_name {
        Some(name) => name.clone(),
        None => discover_cluster(&args.etcd_config).await?,
    };
    let settings = AgentSettings {
        cluster,
        node: args.node_name.clone(),
        etcd_config: args.etcd_config.clone(),
        pin_dir: args.bpf_pin_dir.clone(),
        cgroup: args.cgroup_path.clone(),
        tunnel_interface: args.tunnel_interface.clone(),
        tunnel_port: args.tunnel_port,
        refresh: Duration::from_millis(500),
        cni_state_dir: args.cni_state_dir.clone(),
    };
    let agent = async {
        match &args.source_dir {
            Some(dir) => {
                run(
                    settings,
                    DirectorySource::new(dir, args.poll_interval),
                    metrics,
                    health,
                )
                .await
            }
            None => {
                let kube = kube::Client::try_default()
                    .await
                    .context("connecting to the Kubernetes API")?;
                run(settings, KubernetesSource::new(kube), metrics, health).await
            }
        }
        .context("agent")
    };
    tokio::select! {
        r = server => r.context("metrics server")?,
        r = agent => r?,
        _ = tokio::signal::ctrl_c() => tracing::info!("shutting down; the datapath stays in place"),
    }
    Ok(())
}

/// Waits until the local kvstore names its cluster.
async fn discover_cluster(etcd_config: &std::path::Path) -> anyhow::Result<String> {
    let config = knit_kvstore::etcd::load_client_config(etcd_config)?;
    loop {
        let found = async {
            let mut client = knit_kvstore::etcd::connect(&config).await?;
            knit_kvstore::etcd::local_cluster_name(&mut client).await
        }
        .await;
        match found {
            Ok(Some(name)) => return Ok(name),
            Ok(None) => tracing::info!("the local kvstore has no cluster yet; waiting"),
            Err(e) => {
                tracing::warn!(error = %knit_kvstore::error_chain(&e), "cannot read the cluster name; retrying")
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
