//! `knitctl observe --all-nodes`: the flows of every agent of a cluster in
//! Kubernetes mode. Each agent's API is a unix socket on its node, so the
//! command lists the agent pods and runs `knitctl observe -o json` in each
//! (pods/exec, as `kubectl exec` would), with the same filter; it merges
//! the JSON lines: in time order for the latest flows, as they come with
//! `--follow`. Needs `pods/exec` on the agent pods in Knit's namespace.

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use knit_agent_api::{Flow, FlowFilter};
use kube::api::{Api, AttachParams, ListParams};
use tokio::io::AsyncBufReadExt as _;

/// The label every agent pod carries.
pub const AGENT_SELECTOR: &str = "app.kubernetes.io/name=knit-agent";
/// The agent's container, which has knitctl.
pub const AGENT_CONTAINER: &str = "agent";

/// Where the cluster's agents are.
#[derive(clap::Args)]
pub struct ClusterArgs {
    /// Ask every agent of the cluster (Kubernetes mode: through the API,
    /// by running knitctl in each agent pod) instead of local sockets.
    #[arg(long)]
    all_nodes: bool,
    /// kubeconfig context of the cluster (with --all-nodes).
    #[arg(long, requires = "all_nodes")]
    context: Option<String>,
    /// Namespace Knit's agents run in (with --all-nodes).
    #[arg(long, default_value = "knit-system")]
    knit_namespace: String,
}

impl ClusterArgs {
    /// Whether to ask the cluster rather than sockets.
    pub fn enabled(&self) -> bool {
        self.all_nodes
    }
}

/// The command run in each agent pod: the same filter, JSON lines.
pub fn remote_command(filter: &FlowFilter, last: usize, follow: bool) -> Vec<String> {
    let mut cmd: Vec<String> = ["knitctl", "observe", "-o", "json", "--last"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    cmd.push(last.to_string());
    let mut flag = |name: &str, value: Option<String>| {
        if let Some(v) = value {
            cmd.push(format!("--{name}"));
            cmd.push(v);
        }
    };
    flag("pod", filter.pod.clone());
    flag("namespace", filter.namespace.clone());
    flag("identity", filter.identity.map(|i| i.to_string()));
    flag("cluster", filter.cluster.clone());
    flag("verdict", filter.verdict.map(|v| v.name().to_lowercase()));
    flag("drop-reason", filter.drop_reason.clone());
    flag("port", filter.port.map(|p| p.to_string()));
    if follow {
        cmd.push("--follow".to_owned());
    }
    cmd
}

/// The latest `last` of every agent's flows, in time order.
pub fn merge_latest(mut flows: Vec<Flow>, last: usize) -> Vec<Flow> {
    flows.sort_by_key(|f| f.time_unix_nanos);
    let skip = flows.len().saturating_sub(last);
    flows.split_off(skip)
}

/// The running agent pods' names.
pub async fn agent_pods(pods: &Api<Pod>) -> anyhow::Result<Vec<String>> {
    let listed = pods
        .list(&ListParams::default().labels(AGENT_SELECTOR))
        .await
        .context("listing the agent pods")?;
    Ok(listed
        .items
        .into_iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .filter_map(|p| p.metadata.name)
        .collect())
}

/// Runs the observation; `print` gets every flow to show.
pub async fn observe(
    args: &ClusterArgs,
    filter: &FlowFilter,
    follow: bool,
    last: usize,
    mut print: impl FnMut(&Flow) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let client = super::connectivity::client(args.context.as_deref()).await?;
    let pods: Api<Pod> = Api::namespaced(client, &args.knit_namespace);
    let names = agent_pods(&pods).await?;
    if names.is_empty() {
        bail!(
            "no running agent pod ({AGENT_SELECTOR}) in namespace {}",
            args.knit_namespace
        );
    }
    let command = remote_command(filter, last, follow);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<anyhow::Result<Flow>>(1024);
    for name in names {
        let (pods, command, tx) = (pods.clone(), command.clone(), tx.clone());
        tokio::spawn(async move {
            if let Err(e) = stream_agent(&pods, &name, command, &tx).await {
                let _ = tx.send(Err(e.context(format!("agent pod {name}")))).await;
            }
        });
    }
    drop(tx);
    if follow {
        while let Some(flow) = rx.recv().await {
            match flow {
                Ok(flow) => print(&flow)?,
                Err(e) => eprintln!("{e:#}"),
            }
        }
        return Ok(());
    }
    let mut flows = Vec::new();
    let mut failed = None;
    while let Some(flow) = rx.recv().await {
        match flow {
            Ok(flow) => flows.push(flow),
            Err(e) => failed = Some(e),
        }
    }
    for flow in merge_latest(flows, last) {
        print(&flow)?;
    }
    failed.map_or(Ok(()), Err)
}

/// Runs `command` in agent pod `name` and sends each flow it prints.
async fn stream_agent(
    pods: &Api<Pod>,
    name: &str,
    command: Vec<String>,
    tx: &tokio::sync::mpsc::Sender<anyhow::Result<Flow>>,
) -> anyhow::Result<()> {
    let params = AttachParams::default()
        .container(AGENT_CONTAINER)
        .stdout(true)
        .stderr(false);
    let mut process = pods.exec(name, command, &params).await.context("exec")?;
    let stdout = process.stdout().context("no stdout")?;
    let mut lines = lines_of(stdout);
    while let Some(line) = lines.next().await {
        let line = line.context("reading knitctl's output")?;
        let flow: Flow = serde_json::from_str(&line).with_context(|| format!("knitctl printed {line:?}"))?;
        if tx.send(Ok(flow)).await.is_err() {
            break;
        }
    }
    let status = match process.take_status() {
        Some(status) => status.await,
        None => None,
    };
    if let Some(s) = status.filter(|s| s.status.as_deref() == Some("Failure")) {
        bail!("knitctl observe failed: {}", s.message.unwrap_or_default());
    }
    Ok(())
}

/// The lines of `reader` as a stream.
fn lines_of(
    reader: impl tokio::io::AsyncRead + Unpin + Send + 'static,
) -> impl futures::Stream<Item = std::io::Result<String>> + Unpin {
    let lines = tokio::io::BufReader::new(reader).lines();
    Box::pin(futures::stream::unfold(lines, |mut lines| async move {
        lines.next_line().await.transpose().map(|l| (l, lines))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(t: u128) -> Flow {
        serde_json::from_value(serde_json::json!({
            "seq": 1, "timeUnixNanos": t, "node": "n", "verdict": "allowed", "protocol": "TCP",
            "source": { "ip": "10.1.0.5", "port": 1, "identity": 2, "labels": {} },
            "destination": { "ip": "10.2.0.7", "port": 3, "identity": 4, "labels": {} },
        }))
        .unwrap()
    }

    #[test]
    fn the_latest_flows_of_every_agent_come_in_time_order() {
        let merged = merge_latest(vec![flow(5), flow(1), flow(9), flow(3)], 3);
        let times: Vec<u128> = merged.iter().map(|f| f.time_unix_nanos).collect();
        assert_eq!(times, vec![3, 5, 9]);
    }

    #[tokio::test]
    async fn agent_pods_are_listed_by_label_and_only_running_ones_asked() {
        use http::{Request, Response};
        use kube::client::Body;
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let pods: Api<Pod> = Api::namespaced(kube::Client::new(service, "default"), "knit-system");
        let server = tokio::spawn(async move {
            let (req, send) = handle.next_request().await.expect("a request");
            assert_eq!(req.method(), http::Method::GET);
            assert_eq!(
                req.uri().to_string(),
                "/api/v1/namespaces/knit-system/pods?&labelSelector=app.kubernetes.io%2Fname%3Dknit-agent"
            );
            let pod = |name: &str, phase: &str| serde_json::json!({ "metadata": { "name": name }, "status": { "phase": phase } });
            let list = serde_json::json!({
                "apiVersion": "v1", "kind": "PodList", "metadata": {},
                "items": [pod("knit-agent-a", "Running"), pod("knit-agent-b", "Pending")],
            });
            send.send_response(Response::new(Body::from(serde_json::to_vec(&list).unwrap())));
        });
        assert_eq!(agent_pods(&pods).await.unwrap(), vec!["knit-agent-a".to_owned()]);
        server.await.unwrap();
    }

    #[test]
    fn the_remote_command_carries_every_filter() {
        let filter = FlowFilter {
            pod: Some("shop/web".into()),
            namespace: Some("shop".into()),
            identity: Some(70_000),
            cluster: Some("cluster-b".into()),
            verdict: Some(knit_agent_api::Verdict::Denied),
            drop_reason: Some("policy_denied".into()),
            port: Some(8080),
        };
        assert_eq!(
            remote_command(&filter, 5, true).join(" "),
            "knitctl observe -o json --last 5 --pod shop/web --namespace shop --identity 70000 \
             --cluster cluster-b --verdict denied --drop-reason policy_denied --port 8080 --follow"
        );
        assert_eq!(
            remote_command(&FlowFilter::default(), 20, false).join(" "),
            "knitctl observe -o json --last 20"
        );
    }
}
