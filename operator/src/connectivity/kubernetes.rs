//! Clusters reached through the Kubernetes API as the sites of a
//! connectivity test. Deploying applies each cluster's [`Objects`]
//! (server-side apply, field manager `knitctl`) and waits until every pod
//! is Ready; probing asks a client's `knit-probe control` server through
//! the API server's pod proxy (`pods/<name>:4250/proxy/hits`), so the
//! test needs nothing but API access; cleanup deletes the namespace and
//! waits until it is gone.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use knit_crds::GlobalServicePolicy;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde::Deserialize;

use super::manifests::{CONTROL_PORT, Objects, host_twin, objects, usable_nodes};
use super::{Answers, Deployed, Deployment, NAMESPACE, Sites, Source};

/// The field manager of every object the test applies.
pub const FIELD_MANAGER: &str = "knitctl";

/// How long the test waits, and how often it looks.
#[derive(Clone, Copy, Debug)]
pub struct Waits {
    /// For every pod to be Ready (an image pull included).
    pub pods: Duration,
    /// For the clusters to know each other's backends.
    pub settle: Duration,
    /// For the namespace to be gone.
    pub cleanup: Duration,
    /// Between two looks.
    pub poll: Duration,
}

impl Default for Waits {
    fn default() -> Self {
        Self {
            pods: Duration::from_secs(180),
            settle: Duration::from_secs(60),
            cleanup: Duration::from_secs(120),
            poll: Duration::from_secs(2),
        }
    }
}

/// Clusters (name, API client) as connectivity-test sites.
pub struct KubeSites {
    clusters: Vec<(String, kube::Client)>,
    image: String,
    waits: Waits,
    deployed_to: Vec<usize>,
}

fn step(
    step: impl Into<String>,
    source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> crate::Error {
    crate::Error::Connectivity {
        step: step.into(),
        source: source.into(),
    }
}

/// `hits`' JSON from a client's control server.
#[derive(Deserialize)]
struct Hits {
    names: BTreeMap<String, usize>,
}

/// Why `pod` is not Ready yet, or none when it is.
fn not_ready(pod: &Pod) -> Option<String> {
    let status = pod.status.clone().unwrap_or_default();
    let ready = status
        .conditions
        .as_ref()
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    if ready && status.pod_ip.is_some() {
        return None;
    }
    let waiting = status
        .container_statuses
        .unwrap_or_default()
        .into_iter()
        .filter_map(|c| c.state.and_then(|s| s.waiting))
        .map(|w| {
            let reason = w.reason.unwrap_or_default();
            match w.message {
                Some(m) => format!("{reason}: {m}"),
                None => reason,
            }
        })
        .next();
    let phase = status.phase.unwrap_or_else(|| "Pending".into());
    Some(match waiting {
        Some(w) => format!("not ready (phase {phase}, {w})"),
        None => format!("not ready (phase {phase})"),
    })
}

impl KubeSites {
    /// The sites of `clusters` (each cluster's name, as its agents know
    /// it, and a client of its API), running pods of `image` (knit-probe).
    pub fn new(clusters: Vec<(String, kube::Client)>, image: impl Into<String>, waits: Waits) -> Self {
        Self {
            clusters,
            image: image.into(),
            waits,
            deployed_to: Vec::new(),
        }
    }

    /// The names of the clusters.
    pub fn cluster_names(&self) -> Vec<String> {
        self.clusters.iter().map(|(n, _)| n.clone()).collect()
    }

    fn client(&self, cluster: &str) -> crate::Result<&kube::Client> {
        self.clusters
            .iter()
            .find(|(n, _)| n == cluster)
            .map(|(_, c)| c)
            .ok_or_else(|| {
                step(
                    format!("finding cluster {cluster}"),
                    "not one of the test's clusters",
                )
            })
    }

    async fn apply_cluster(
        &self,
        k: usize,
        deployment: &Deployment,
        deployed: &mut Deployed,
    ) -> crate::Result<()> {
        let (cluster, client) = &self.clusters[k];
        let nodes = Api::<Node>::all(client.clone())
            .list(&ListParams::default())
            .await
            .map_err(|e| step(format!("listing the nodes of {cluster}"), e))?;
        let nodes = usable_nodes(&nodes.items);
        if nodes.is_empty() {
            return Err(step(
                format!("choosing nodes in {cluster}"),
                "no node is Ready, schedulable and free of NoSchedule taints",
            ));
        }
        let o: Objects = objects(deployment, cluster, &nodes, &self.image);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let apply_err = |what: &str, name: &str| format!("applying {what} {NAMESPACE}/{name} in {cluster}");
        Api::<Namespace>::all(client.clone())
            .patch(NAMESPACE, &params, &Patch::Apply(&o.namespace))
            .await
            .map_err(|e| step(format!("applying namespace {NAMESPACE} in {cluster}"), e))?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
        for (name, body) in &o.pods {
            pods.patch(name, &params, &Patch::Apply(body))
                .await
                .map_err(|e| step(apply_err("pod", name), e))?;
        }
        let services: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
        for (name, body) in &o.services {
            let applied = services
                .patch(name, &params, &Patch::Apply(body))
                .await
                .map_err(|e| step(apply_err("service", name), e))?;
            let vip = applied
                .spec
                .and_then(|s| s.cluster_ip)
                .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
                .ok_or_else(|| step(apply_err("service", name), "it has no IPv4 cluster IP"))?;
            deployed.services.insert((cluster.clone(), name.clone()), vip);
        }
        let gsps: Api<GlobalServicePolicy> = Api::namespaced(client.clone(), NAMESPACE);
        for (name, body) in &o.global_service_policies {
            gsps.patch(name, &params, &Patch::Apply(body))
                .await
                .map_err(|e| step(apply_err("GlobalServicePolicy", name), e))?;
        }
        let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), NAMESPACE);
        for (name, body) in &o.network_policies {
            policies
                .patch(name, &params, &Patch::Apply(body))
                .await
                .map_err(|e| step(apply_err("NetworkPolicy", name), e))?;
        }
        Ok(())
    }

    /// Waits until every pod of every cluster is Ready; records the
    /// addresses, and why the others are not.
    async fn wait_for_pods(&self, deployment: &Deployment, deployed: &mut Deployed) -> crate::Result<()> {
        let deadline = tokio::time::Instant::now() + self.waits.pods;
        loop {
            let mut waiting = BTreeMap::new();
            for &k in &self.deployed_to {
                let (cluster, client) = &self.clusters[k];
                let listed = Api::<Pod>::namespaced(client.clone(), NAMESPACE)
                    .list(&ListParams::default())
                    .await
                    .map_err(|e| step(format!("listing the test pods in {cluster}"), e))?;
                let by_name: BTreeMap<String, &Pod> = listed
                    .items
                    .iter()
                    .filter_map(|p| Some((p.metadata.name.clone()?, p)))
                    .collect();
                for p in deployment.pods.iter().filter(|p| &p.cluster == cluster) {
                    let key = (cluster.clone(), p.name.clone());
                    let twin = (!p.serves).then(|| host_twin(&p.name));
                    let why = [Some(&p.name), twin.as_ref()]
                        .into_iter()
                        .flatten()
                        .find_map(|name| match by_name.get(name) {
                            None => Some(format!("pod {name} does not exist")),
                            Some(pod) => not_ready(pod).map(|w| format!("pod {name} {w}")),
                        });
                    match why {
                        Some(why) => {
                            waiting.insert(key, why);
                        }
                        None => {
                            let ip = by_name[&p.name]
                                .status
                                .as_ref()
                                .and_then(|s| s.pod_ip.as_deref())
                                .and_then(|ip| ip.parse().ok());
                            if let Some(ip) = ip {
                                deployed.pods.insert(key, ip);
                            }
                        }
                    }
                }
            }
            if waiting.is_empty() || tokio::time::Instant::now() >= deadline {
                deployed.missing = waiting;
                return Ok(());
            }
            tokio::time::sleep(self.waits.poll).await;
        }
    }
}

impl Sites for KubeSites {
    async fn deploy(&mut self, deployment: &Deployment) -> crate::Result<Deployed> {
        let mut deployed = Deployed::default();
        for k in 0..self.clusters.len() {
            // Recorded first: cleanup removes a half-applied cluster too.
            self.deployed_to.push(k);
            self.apply_cluster(k, deployment, &mut deployed).await?;
        }
        self.wait_for_pods(deployment, &mut deployed).await?;
        let clusters = self.cluster_names();
        let settle = self.waits.settle;
        super::settle(self, &clusters, &deployed, settle).await;
        Ok(deployed)
    }

    async fn probe(&mut self, from: &Source, to: SocketAddrV4, count: usize) -> crate::Result<Answers> {
        let (cluster, pod) = match from {
            Source::Pod(c, name) => (c, name.clone()),
            Source::NodeOf(c, name) => (c, host_twin(name)),
        };
        let client = self.client(cluster)?;
        let path = format!(
            "/api/v1/namespaces/{NAMESPACE}/pods/{pod}:{CONTROL_PORT}/proxy/hits?to={to}&count={count}"
        );
        let request = http::Request::get(&path)
            .body(Vec::new())
            .map_err(|e| step(format!("building {path}"), e))?;
        let text = client
            .request_text(request)
            .await
            .map_err(|e| step(format!("probing from {cluster}/{pod}"), e))?;
        let hits: Hits = serde_json::from_str(&text)
            .map_err(|e| step(format!("reading {cluster}/{pod}'s answer {text:?}"), e))?;
        let total: usize = hits.names.values().sum();
        Ok(Answers {
            by_server: hits.names,
            failed: count.saturating_sub(total),
        })
    }

    async fn cleanup(&mut self) -> crate::Result<()> {
        let mut first_error = None;
        for k in std::mem::take(&mut self.deployed_to) {
            let (cluster, client) = &self.clusters[k];
            let namespaces: Api<Namespace> = Api::all(client.clone());
            let deleted = match namespaces.delete(NAMESPACE, &DeleteParams::background()).await {
                Ok(_) => self.wait_gone(&namespaces).await,
                Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                Err(e) => Err(e),
            };
            if let Err(e) = deleted {
                first_error.get_or_insert(step(format!("deleting namespace {NAMESPACE} in {cluster}"), e));
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl KubeSites {
    async fn wait_gone(&self, namespaces: &Api<Namespace>) -> Result<(), kube::Error> {
        let deadline = tokio::time::Instant::now() + self.waits.cleanup;
        while namespaces.get_opt(NAMESPACE).await?.is_some() {
            if tokio::time::Instant::now() >= deadline {
                return Err(kube::Error::Service(
                    format!("still terminating after {:?}", self.waits.cleanup).into(),
                ));
            }
            tokio::time::sleep(self.waits.poll).await;
        }
        Ok(())
    }
}
