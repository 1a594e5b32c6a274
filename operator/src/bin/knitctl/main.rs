//! knitctl: the Knit command line.
//!
//! - `knitctl peer export` prints the ClusterMeshPeer manifest describing this
//!   cluster, for the other clusters' git repositories.
//! - `knitctl status` shows, per peer, whether the mesh apiserver is
//!   connected and synced and what it mirrors (from the local etcd).
//! - `knitctl observe` prints the datapath's flow events (drops, policy
//!   verdicts, translations); `services`, `identities`, `ipcache` and
//!   `endpoints` print what a node's datapath holds: all ask the agents'
//!   local API (`--agent-socket`).
//! - `knitctl connectivity test` checks an install end to end across the
//!   clusters of kubeconfig contexts (`connectivity.rs`).
//! - `knitctl render` writes the certificates and peer configs of a site
//!   without Kubernetes to a directory, through the operator's render code.

mod cluster_observe;
mod connectivity;

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use knit_crds::ClusterMeshPeer;
use knit_operator::config::ClusterConfig;
use knit_operator::kube::apply::peers_service_view;
use knit_operator::{files, names, peer_export};
use kube::api::Api;

#[derive(Parser)]
#[command(version, about = "Knit command line")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Peer manifests.
    Peer {
        #[command(subcommand)]
        command: PeerCommand,
    },
    /// Render certificates and peer configs to a directory (no Kubernetes).
    Render {
        /// Cluster config file (same format as the operator's).
        #[arg(long)]
        config: PathBuf,
        /// ClusterMeshPeer manifests: files or directories of *.yaml.
        #[arg(long = "peers")]
        peers: Vec<PathBuf>,
        /// Output directory; existing certificates in it are kept until due.
        #[arg(long)]
        out: PathBuf,
    },
    /// Multi-Cluster Services for sites without Kubernetes.
    Mcs {
        #[command(subcommand)]
        command: McsCommand,
    },
    /// Flow events of the datapath: drops and their reasons, policy
    /// verdicts, service translations (like `hubble observe`).
    Observe {
        #[command(flatten)]
        agents: Agents,
        #[command(flatten)]
        cluster: cluster_observe::ClusterArgs,
        #[command(flatten)]
        filter: FilterArgs,
        /// Keep printing new flows.
        #[arg(long, short = 'f')]
        follow: bool,
        /// How many of the latest flows to print first.
        #[arg(long, default_value_t = 20)]
        last: usize,
    },
    /// Service frontends in the datapath, their backends per cluster, and
    /// where they differ from the kvstore.
    Services {
        #[command(flatten)]
        agents: Agents,
    },
    /// Identities the datapath maps addresses to, with labels and cluster.
    Identities {
        #[command(flatten)]
        agents: Agents,
    },
    /// The datapath's ipcache: prefix, identity, tunnel endpoint, origin.
    Ipcache {
        #[command(flatten)]
        agents: Agents,
    },
    /// The node's attached pods: identity and policy enforcement.
    Endpoints {
        #[command(flatten)]
        agents: Agents,
    },
    /// The allow and deny entries that apply to a pod of the node, and
    /// the policies that produce each.
    Policy {
        /// The pod: `namespace/name`.
        pod: String,
        #[command(flatten)]
        agents: Agents,
    },
    /// Checks an install end to end: deploys test workloads into every
    /// cluster, probes pod to pod, global services, affinity, a denying
    /// NetworkPolicy and node to pod, prints a pass/fail table, and removes
    /// what it deployed.
    Connectivity {
        #[command(subcommand)]
        command: ConnectivityCommand,
    },
    /// Per peer: connected, synced, mirrored counts, rejections.
    Status {
        /// etcd client config (the `local` or admin certificate's config.yaml).
        #[arg(long, default_value = "/etc/knit/etcd/config.yaml")]
        etcd_config: PathBuf,
        /// etcd URL, instead of the config's endpoints.
        #[arg(long)]
        endpoint: Option<String>,
        /// Output format: a table for people, JSON or YAML for programs.
        #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
        output: Output,
        /// The per-node view: whether each node's agent reaches each peer.
        #[arg(long)]
        nodes: bool,
    },
}

/// Where the agents' local APIs are (`--agent-socket`, repeatable: one per
/// node to ask).
#[derive(clap::Args)]
struct Agents {
    /// Unix socket of a node's agent (repeat for several nodes).
    #[arg(long = "agent-socket", default_value = knit_agent_api::DEFAULT_SOCKET)]
    sockets: Vec<PathBuf>,
    /// Output format: a table for people, JSON for programs.
    #[arg(long, short = 'o', value_enum, default_value_t = Format::Table)]
    output: Format,
}

/// `-o` of the inspection commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    /// For people.
    Table,
    /// For programs: one JSON object per flow (observe), a JSON array of
    /// the nodes' tables (the others).
    Json,
}

/// `knitctl observe`'s filter (every one given must hold).
#[derive(clap::Args)]
struct FilterArgs {
    /// A pod at either end: `namespace/name` or `name`.
    #[arg(long)]
    pod: Option<String>,
    /// A namespace at either end.
    #[arg(long)]
    namespace: Option<String>,
    /// An identity at either end.
    #[arg(long)]
    identity: Option<u32>,
    /// A cluster at either end.
    #[arg(long)]
    cluster: Option<String>,
    /// allowed, denied, dropped or translated.
    #[arg(long, value_parser = parse_verdict)]
    verdict: Option<knit_agent_api::Verdict>,
    /// A drop reason (policy_denied, no_route, no_backend, ...).
    #[arg(long)]
    drop_reason: Option<String>,
    /// A port at either end.
    #[arg(long)]
    port: Option<u16>,
}

fn parse_verdict(text: &str) -> Result<knit_agent_api::Verdict, String> {
    knit_agent_api::Verdict::ALL
        .into_iter()
        .find(|v| v.name().eq_ignore_ascii_case(text))
        .ok_or_else(|| format!("unknown verdict {text:?}: use allowed, denied, dropped or translated"))
}

/// `knitctl status -o`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    /// The human table.
    Table,
    /// One JSON document (`StatusReport`).
    Json,
    /// The same as YAML.
    Yaml,
}

#[derive(Subcommand)]
enum McsCommand {
    /// Write the derived Service (with a clusterset VIP) and the
    /// ServiceImport of every service the clusterset exports into a
    /// namespace of this site, as the operator does in Kubernetes.
    Render {
        /// etcd client config of this cluster (the `local` certificate's config.yaml).
        #[arg(long)]
        etcd_config: PathBuf,
        /// etcd URL, instead of the config's endpoints.
        #[arg(long)]
        endpoint: Option<String>,
        /// Namespaces that exist at this site (comma-separated).
        #[arg(long, value_delimiter = ',', required = true)]
        namespaces: Vec<String>,
        /// Range clusterset VIPs are taken from, e.g. 10.96.240.0/24.
        #[arg(long)]
        clusterset_cidr: ipnet::Ipv4Net,
        /// The apiserver's source directory: `mcs-*.yaml` files are written
        /// there, and stale ones removed.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum ConnectivityCommand {
    /// Run the test against the clusters of kubeconfig contexts.
    Test(connectivity::TestArgs),
}

#[derive(Subcommand)]
enum PeerCommand {
    /// Print the ClusterMeshPeer manifest that describes this cluster.
    Export {
        /// Offline: the cluster config file (use with --pki-dir).
        #[arg(long, requires = "pki_dir")]
        config: Option<PathBuf>,
        /// Offline: directory written by `knitctl render`.
        #[arg(long)]
        pki_dir: Option<PathBuf>,
        /// Namespace of the operator (when reading from Kubernetes).
        #[arg(long, default_value = "knit-system")]
        namespace: String,
        /// URL peers use, instead of the configured external addresses. Repeatable.
        #[arg(long = "endpoint")]
        endpoints: Vec<String>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Render { config, peers, out } => render(&config, &peers, &out),
        Command::Mcs {
            command:
                McsCommand::Render {
                    etcd_config,
                    endpoint,
                    namespaces,
                    clusterset_cidr,
                    out,
                },
        } => mcs_render(&etcd_config, endpoint, &namespaces, clusterset_cidr, &out).await,
        Command::Observe {
            agents,
            cluster,
            filter,
            follow,
            last,
        } => {
            let filter = filter.into();
            if cluster.enabled() {
                let output = agents.output;
                cluster_observe::observe(&cluster, &filter, follow, last, |f| print_flow(f, output)).await
            } else {
                observe(&agents, &filter, follow, last).await
            }
        }
        Command::Services { agents } => show(&agents, "/v1/services", knit_operator::inspect::services).await,
        Command::Identities { agents } => {
            show(&agents, "/v1/identities", knit_operator::inspect::identities).await
        }
        Command::Ipcache { agents } => show(&agents, "/v1/ipcache", knit_operator::inspect::ipcache).await,
        Command::Endpoints { agents } => {
            show(&agents, "/v1/endpoints", knit_operator::inspect::endpoints).await
        }
        Command::Policy { pod, agents } => {
            if !pod.contains('/') {
                bail!("name the pod as <namespace>/<name>, e.g. shop/web");
            }
            let path = format!("/v1/policy?pod={pod}");
            show(&agents, &path, knit_operator::inspect::policy).await
        }
        Command::Connectivity {
            command: ConnectivityCommand::Test(args),
        } => connectivity::test(args).await,
        Command::Status {
            etcd_config,
            endpoint,
            output,
            nodes,
        } => status(&etcd_config, endpoint, output, nodes).await,
        Command::Peer {
            command:
                PeerCommand::Export {
                    config,
                    pki_dir,
                    namespace,
                    endpoints,
                },
        } => {
            let yaml = match (config, pki_dir) {
                (Some(config), Some(dir)) => export_offline(&config, &dir, endpoints)?,
                _ => export_from_cluster(&namespace, endpoints).await?,
            };
            print!("{yaml}");
            Ok(())
        }
    }
}

impl From<FilterArgs> for knit_agent_api::FlowFilter {
    fn from(a: FilterArgs) -> Self {
        Self {
            pod: a.pod,
            namespace: a.namespace,
            identity: a.identity,
            cluster: a.cluster,
            verdict: a.verdict,
            drop_reason: a.drop_reason,
            port: a.port,
        }
    }
}

/// Asks every agent for `path` and prints the tables.
async fn show<T: serde::de::DeserializeOwned + serde::Serialize>(
    agents: &Agents,
    path: &str,
    table: fn(&[T]) -> String,
) -> anyhow::Result<()> {
    let mut tables = Vec::new();
    for socket in &agents.sockets {
        tables.push(knit_agent_api::client::get::<T>(socket, path).await?);
    }
    match agents.output {
        Format::Table => print!("{}", table(&tables)),
        Format::Json => println!("{}", serde_json::to_string_pretty(&tables)?),
    }
    Ok(())
}

fn print_flow(flow: &knit_agent_api::Flow, output: Format) -> anyhow::Result<()> {
    match output {
        Format::Table => println!("{}", knit_operator::inspect::flow_line(flow)),
        Format::Json => println!("{}", serde_json::to_string(flow)?),
    }
    Ok(())
}

/// `knitctl observe`: the last `last` matching flows of every agent, in
/// time order, then (`follow`) new ones as they come.
async fn observe(
    agents: &Agents,
    filter: &knit_agent_api::FlowFilter,
    follow: bool,
    last: usize,
) -> anyhow::Result<()> {
    let mut next = vec![0u64; agents.sockets.len()];
    let mut first = true;
    loop {
        let mut flows = Vec::new();
        for (socket, since) in agents.sockets.iter().zip(next.iter_mut()) {
            loop {
                let path = format!("/v1/flows?since={since}");
                let page: knit_agent_api::FlowPage = knit_agent_api::client::get(socket, &path).await?;
                if page.missed > 0 && !first {
                    eprintln!(
                        "{}: {} flows were overwritten before they were read",
                        page.node, page.missed
                    );
                }
                let done = page.flows.is_empty() || page.next == *since;
                *since = page.next;
                flows.extend(page.flows.into_iter().filter(|f| filter.matches(f)));
                if done {
                    break;
                }
            }
        }
        flows.sort_by_key(|f| f.time_unix_nanos);
        let skip = if first {
            flows.len().saturating_sub(last)
        } else {
            0
        };
        for flow in &flows[skip..] {
            print_flow(flow, agents.output)?;
        }
        if !follow {
            return Ok(());
        }
        first = false;
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

async fn status(
    etcd_config: &Path,
    endpoint: Option<String>,
    output: Output,
    per_node: bool,
) -> anyhow::Result<()> {
    use knit_kvstore::records::{AgentStatusRecord, PeerStatusRecord};
    let mut client = connect_local(etcd_config, endpoint).await?;
    let mut reports: Vec<PeerStatusRecord> =
        read_reports(&mut client, &knit_kvstore::keys::mesh_status_prefix()).await?;
    reports.sort_by(|a, b| a.peer.cmp(&b.peer));
    let mut nodes: Vec<AgentStatusRecord> =
        read_reports(&mut client, &knit_kvstore::keys::agent_status_prefix()).await?;
    nodes.sort_by(|a, b| a.node.cmp(&b.node));
    let cluster = knit_kvstore::etcd::local_cluster_name(&mut client)
        .await
        .context("reading the cluster name")?
        .unwrap_or_else(|| "(unknown)".to_owned());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default();
    let report = knit_operator::status_table::StatusReport {
        cluster,
        peers: reports,
        nodes,
    };
    match output {
        Output::Table if per_node => print!("{}", knit_operator::status_table::render_nodes(&report, now)),
        Output::Table => print!(
            "{}",
            knit_operator::status_table::render_status(&report.cluster, &report.peers, &report.nodes, now)
        ),
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Yaml => print!("{}", serde_saphyr::to_string(&report)?),
    }
    Ok(())
}

async fn mcs_render(
    etcd_config: &Path,
    endpoint: Option<String>,
    namespaces: &[String],
    cidr: ipnet::Ipv4Net,
    out: &Path,
) -> anyhow::Result<()> {
    let mut client = connect_local(etcd_config, endpoint).await?;
    let records = knit_kvstore::etcd::exported_services(&mut client)
        .await
        .context("reading the exported services")?;
    let services = knit_operator::mcs::clusterset_services(&records);
    let namespaces = namespaces.iter().cloned().collect();
    let files = knit_operator::mcs::site_manifests(&services, &namespaces, cidr)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    for entry in std::fs::read_dir(out)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("mcs-") && name.ends_with(".yaml") && !files.contains_key(&name) {
            std::fs::remove_file(entry.path())?;
        }
    }
    for (name, yaml) in &files {
        let path = out.join(name);
        if std::fs::read_to_string(&path).ok().as_deref() == Some(yaml.as_str()) {
            continue;
        }
        let tmp = out.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, yaml)?;
        std::fs::rename(&tmp, &path)?;
    }
    println!("{} clusterset service(s) imported", files.len());
    Ok(())
}

/// Connects to this cluster's etcd with the client config at
/// `etcd_config`, at `endpoint` instead of the config's when given.
async fn connect_local(etcd_config: &Path, endpoint: Option<String>) -> anyhow::Result<etcd_client::Client> {
    let mut config = knit_kvstore::etcd::load_client_config(etcd_config)
        .with_context(|| format!("reading {}", etcd_config.display()))?;
    if let Some(e) = endpoint {
        config.endpoints = vec![e];
    }
    knit_kvstore::etcd::connect(&config)
        .await
        .context("connecting to the local etcd")
}

/// Every record under `prefix`, skipping (and naming) unreadable ones.
async fn read_reports<T: serde::de::DeserializeOwned>(
    client: &mut etcd_client::Client,
    prefix: &str,
) -> anyhow::Result<Vec<T>> {
    let resp = client
        .get(prefix, Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .with_context(|| format!("reading {prefix}"))?;
    let mut out = Vec::new();
    for kv in resp.kvs() {
        match serde_json::from_slice(kv.value()) {
            Ok(r) => out.push(r),
            Err(e) => eprintln!(
                "skipping an unreadable report {}: {e}",
                kv.key_str().unwrap_or("?")
            ),
        }
    }
    Ok(out)
}

fn load_config(path: &Path) -> anyhow::Result<ClusterConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    ClusterConfig::from_yaml(&text).with_context(|| format!("in {}", path.display()))
}

fn render(config: &Path, peer_paths: &[PathBuf], out: &Path) -> anyhow::Result<()> {
    let config = load_config(config)?;
    let mut peers = Vec::new();
    for path in peer_paths {
        for file in yaml_files(path)? {
            let text =
                std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            let peer: ClusterMeshPeer = serde_saphyr::from_str(&text)
                .with_context(|| format!("{} is not a ClusterMeshPeer", file.display()))?;
            peers.push(peer);
        }
    }
    let plan = files::render_to_dir(&config, &peers, out, jiff::Timestamp::now())?;
    for event in &plan.events {
        eprintln!("{}: {}", event.reason, event.note);
    }
    for (name, status) in &plan.peer_statuses {
        match &status.last_error {
            Some(problem) => eprintln!("peer {name}: NOT configured: {problem}"),
            None => eprintln!("peer {name}: configured"),
        }
    }
    println!("rendered {} peer(s) into {}", plan.accepted.len(), out.display());
    if plan.accepted.len() < plan.peer_statuses.len() {
        bail!("some peers were not configured; see above");
    }
    Ok(())
}

fn yaml_files(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("reading {}", path.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect();
        files.sort();
        Ok(files)
    } else {
        Ok(vec![path.to_owned()])
    }
}

fn export_offline(config: &Path, dir: &Path, endpoints: Vec<String>) -> anyhow::Result<String> {
    let config = load_config(config)?;
    let ca_path = dir.join(names::PUBLIC_CA_CONFIGMAP).join("ca.crt");
    let ca = std::fs::read_to_string(&ca_path)
        .with_context(|| format!("reading {} (run `knitctl render` first)", ca_path.display()))?;
    let endpoints = if endpoints.is_empty() {
        config.peer_endpoints(&Default::default())?
    } else {
        endpoints
    };
    Ok(peer_export::export_peer_yaml(&config, &ca, endpoints)?)
}

/// Reads only public objects: the operator's config, the public CA
/// ConfigMap and the mesh apiserver Service. Never the CA Secret.
async fn export_from_cluster(namespace: &str, endpoints: Vec<String>) -> anyhow::Result<String> {
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let config_key = |name: &str, key: &str, hint: &str| {
        let cms = cms.clone();
        let (name, key, hint) = (name.to_owned(), key.to_owned(), hint.to_owned());
        async move {
            cms.get(&name)
                .await
                .with_context(|| format!("reading ConfigMap {namespace}/{name} ({hint})"))?
                .data
                .and_then(|d| d.get(&key).cloned())
                .with_context(|| format!("ConfigMap {namespace}/{name} has no key {key}"))
        }
    };
    let text = config_key(
        "knit-operator-config",
        "config.yaml",
        "is Knit installed in this namespace?",
    )
    .await?;
    let config = ClusterConfig::from_yaml(&text)?;
    let ca = config_key(
        names::PUBLIC_CA_CONFIGMAP,
        "ca.crt",
        "is the operator running? it writes this ConfigMap",
    )
    .await?;
    let endpoints = if endpoints.is_empty() {
        let services: Api<Service> = Api::namespaced(client, namespace);
        let service = services
            .get_opt(names::PEERS_SERVICE)
            .await
            .context("reading the peers Service")?
            .map(|svc| peers_service_view(&svc))
            .unwrap_or_default();
        config.peer_endpoints(&service)?
    } else {
        endpoints
    };
    Ok(peer_export::export_peer_yaml(&config, &ca, endpoints)?)
}
