//! knit-operator: reconciles ClusterMeshPeers into the mesh control plane
//! and GlobalServicePolicies into status. Several replicas may run: they
//! elect a leader on the Lease `knit-operator`, and only it reconciles.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use knit_operator::config::ClusterConfig;
use knit_operator::config_files::ConfigFiles;
use knit_operator::kube::lease::LeaderElector;
use knit_operator::kube::{Applier, gsp_controller, mcs_controller, mesh, mesh_status};
use knit_operator::leadership::LeaseTimes;
use knit_telemetry::prometheus_client::metrics::counter::Counter;
use knit_telemetry::prometheus_client::metrics::family::Family;
use knit_telemetry::prometheus_client::metrics::gauge::Gauge;
use knit_telemetry::prometheus_client::registry::Registry;
use prometheus_client::encoding::EncodeLabelSet;

#[derive(Parser)]
#[command(
    version,
    about = "Knit operator: certificates, mesh apiserver and peer configs from ClusterMeshPeers"
)]
struct Args {
    /// Cluster config file (mounted from the knit-operator-config ConfigMap).
    #[arg(long, env = "KNIT_CONFIG", default_value = "/etc/knit/config.yaml")]
    config: PathBuf,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "KNIT_METRICS_ADDR", default_value = "0.0.0.0:9963")]
    metrics_addr: SocketAddr,
    /// Directory of the mesh apiserver's image files `apiserver` and `etcd`
    /// (mounted from ConfigMap knit-images); they override `images` of the
    /// config, and a change takes effect like a config change.
    #[arg(long, env = "KNIT_IMAGES_DIR")]
    images_dir: Option<PathBuf>,
    /// How often the config files are checked for changes.
    #[arg(long, default_value = "10s", value_parser = knit_telemetry::parse_duration)]
    config_check_interval: std::time::Duration,
    /// knit-apiserver image of the mesh apiserver Deployment; overrides
    /// `images.apiserver` of the config and of --images-dir.
    #[arg(long, env = "KNIT_APISERVER_IMAGE")]
    apiserver_image: Option<String>,
    /// etcd image of the mesh apiserver Deployment; overrides `images.etcd`.
    #[arg(long, env = "KNIT_ETCD_IMAGE")]
    etcd_image: Option<String>,
    /// The namespace to keep Knit's objects in (the pod's own, from the
    /// downward API); overrides the config's `namespace`.
    #[arg(long, env = "POD_NAMESPACE")]
    namespace: Option<String>,
    /// Name of this pod, shown as the Events' reporting instance.
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
}

/// Labels naming a certificate: `<Secret>/<key>`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertificateLabel {
    certificate: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _tracing = knit_telemetry::init_tracing("knit-operator")?;
    let stop = knit_telemetry::shutdown_signal()?;
    let elector = ElectorSlot::default();
    tokio::select! {
        r = serve(args, elector.clone()) => r,
        signal = stop => {
            tracing::info!(signal, "shutting down");
            release_lease(&elector).await;
            Ok(())
        }
    }
}

/// The elector of the running operator loop, for releasing the lease when
/// the process stops.
type ElectorSlot = std::sync::Arc<std::sync::Mutex<Option<LeaderElector>>>;

/// Gives the lease up if this replica leads, so the next replica leads
/// within its retry period (2 s) instead of the lease duration (15 s): a
/// rollout of the operator is not leaderless for long. Bounded by 2 s; on
/// failure the lease simply expires.
async fn release_lease(slot: &ElectorSlot) {
    let elector = slot.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let Some(elector) = elector else { return };
    match tokio::time::timeout(std::time::Duration::from_secs(2), elector.release()).await {
        Ok(Ok(true)) => tracing::info!(me = %elector.identity(), "released the leader lease"),
        Ok(Ok(false)) => {}
        Ok(Err(e)) => tracing::warn!(error = %knit_telemetry::error_chain(&e), "releasing the leader lease"),
        Err(_) => tracing::warn!("releasing the leader lease timed out; it expires on its own"),
    }
}

/// Runs the operator with the mounted config and starts it again, in the
/// same process, whenever the config files change (a ConfigMap edit or a
/// GitOps commit takes effect without a rollout).
async fn serve(args: Args, elector: ElectorSlot) -> anyhow::Result<()> {
    let files = ConfigFiles {
        config: args.config.clone(),
        images_dir: args.images_dir.clone(),
        namespace: args.namespace.clone(),
    };
    let mut loaded = files.load()?;
    loop {
        let mut config = loaded.config.clone();
        if let Some(image) = &args.apiserver_image {
            config.images.apiserver = image.clone();
        }
        if let Some(image) = &args.etcd_image {
            config.images.etcd = image.clone();
        }
        tokio::select! {
            r = operate(&args, config, &elector) => return r,
            next = files.next_change(&loaded, args.config_check_interval) => {
                tracing::info!(
                    mesh_ca_rotation = ?next.config.certificates.mesh_ca_rotation,
                    "the operator config changed; reconciling with the new one"
                );
                loaded = next;
            }
        }
    }
}

/// Runs until a loop ends.
async fn operate(args: &Args, config: ClusterConfig, slot: &ElectorSlot) -> anyhow::Result<()> {
    tracing::info!(cluster = %config.cluster_name, id = config.cluster_id, "starting knit-operator");

    let mut registry = Registry::with_prefix("knit_operator");
    let reconciles = Counter::<u64>::default();
    let failures = Counter::<u64>::default();
    let peers = Gauge::<i64>::default();
    registry.register("mesh_reconciles", "Completed mesh reconciles", reconciles.clone());
    registry.register(
        "mesh_reconcile_failures",
        "Failed mesh reconciles",
        failures.clone(),
    );
    registry.register("accepted_peers", "ClusterMeshPeers configured", peers.clone());
    let leader = Gauge::<i64>::default();
    registry.register(
        "leader",
        "1 while this replica holds the leader lease and reconciles, 0 while it follows",
        leader.clone(),
    );
    let expiries = Family::<CertificateLabel, Gauge>::default();
    registry.register(
        "certificate_expiry_timestamp_seconds",
        "When each certificate the operator keeps expires (Unix time)",
        expiries.clone(),
    );
    let (health, server) = knit_telemetry::serve_registry(args.metrics_addr, registry);

    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    // Replicas compete for one Lease; only the leader reconciles.
    let identity = args
        .pod_name
        .clone()
        .unwrap_or_else(|| format!("knit-operator-{}", std::process::id()));
    let elector = LeaderElector::new(client.clone(), &config.namespace, identity, LeaseTimes::default());
    *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(elector.clone());
    let applier = Applier::new(client, &config.namespace, args.pod_name.clone());
    let mcs_loop = {
        let (applier, config) = (applier.clone(), config.clone());
        mcs_controller::run(
            applier.client().clone(),
            config.cluster_name.clone(),
            std::time::Duration::from_secs(5),
            move || {
                let (applier, config) = (applier.clone(), config.clone());
                async move { mesh_status::connect_local_etcd(&applier, &config).await }
            },
        )
    };
    let mesh_ctx = mesh::MeshContext {
        config,
        applier: applier.clone(),
        reports: Default::default(),
        node_sources: Default::default(),
    };
    let standby = health.clone();
    let mesh_loop = mesh::run(mesh_ctx, move |outcome| match outcome {
        Ok(plan) => {
            reconciles.inc();
            peers.set(plan.accepted.len() as i64);
            expiries.clear();
            for (certificate, at) in knit_operator::render::certificate_expiries(plan) {
                expiries.get_or_create(&CertificateLabel { certificate }).set(at);
            }
            health.set_ready(true);
        }
        Err(_) => {
            failures.inc();
        }
    });
    let work = async move {
        tokio::select! {
            () = mesh_loop => "mesh loop",
            () = gsp_controller::run(applier) => "policy controller",
            () = mcs_loop => "multi-cluster services loop",
        }
    };
    let leading = elector.lead(work, move |leads| {
        leader.set(i64::from(leads));
        // A follower is a ready standby: a rollout must not wait for it
        // to lead. The leader is ready after its first reconcile.
        if !leads {
            standby.set_ready(true);
        }
    });
    tokio::select! {
        r = server => r.context("metrics server")?,
        r = leading => anyhow::bail!("{} ended", r?),
    }
    Ok(())
}
