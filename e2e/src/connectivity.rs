//! The local mesh as the sites of `knitctl connectivity test`
//! ([`knit_operator::connectivity`]): test pods are made the way the mesh
//! makes every pod (a namespace, a cgroup, CNI ADD of the node's conflist,
//! a probe server, the Pod manifest in the cluster's source directory),
//! services and the isolating NetworkPolicy are manifests in the source
//! directories, and probes run from the pods (or their node's namespace).

use std::collections::BTreeMap;
use std::net::SocketAddrV4;
use std::time::Duration;

use knit_operator::connectivity::{Answers, Deployed, Deployment, NAMESPACE, Sites, Source};

use crate::mesh::{ClusterId, GlobalService, LocalMesh, PodId};

const POLICY_FILE: &str = "knit-connectivity-isolate.yaml";

/// The local mesh's clusters as connectivity-test sites.
pub struct MeshSites<'a> {
    mesh: &'a mut LocalMesh,
    pods: BTreeMap<(String, String), PodId>,
    services: Vec<(ClusterId, String)>,
    policies: Vec<ClusterId>,
}

impl<'a> MeshSites<'a> {
    /// The sites of `mesh`.
    pub fn new(mesh: &'a mut LocalMesh) -> Self {
        Self {
            mesh,
            pods: BTreeMap::new(),
            services: Vec::new(),
            policies: Vec::new(),
        }
    }

    /// The names of the mesh's clusters.
    pub fn clusters(&self) -> Vec<String> {
        self.mesh.cluster_ids().map(ClusterId::name).collect()
    }

    fn cluster(&self, name: &str) -> ClusterId {
        self.mesh
            .cluster_ids()
            .find(|c| c.name() == name)
            .unwrap_or_else(|| panic!("no cluster {name}"))
    }

    fn pod(&self, cluster: &str, name: &str) -> knit_operator::Result<PodId> {
        self.pods
            .get(&(cluster.to_owned(), name.to_owned()))
            .copied()
            .ok_or_else(|| step_error(&format!("finding pod {cluster}/{name}"), "not deployed"))
    }
}

fn step_error(step: &str, why: &str) -> knit_operator::Error {
    knit_operator::Error::Connectivity {
        step: step.to_owned(),
        source: why.to_owned().into(),
    }
}

impl Sites for MeshSites<'_> {
    async fn deploy(&mut self, deployment: &Deployment) -> knit_operator::Result<Deployed> {
        let mut deployed = Deployed::default();
        let nodes = self.mesh.options().nodes;
        for p in &deployment.pods {
            let c = self.cluster(&p.cluster);
            let labels: Vec<(&str, &str)> = p.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let key = (p.cluster.clone(), p.name.clone());
            match self
                .mesh
                .try_add_pod(c.node(p.node % nodes), NAMESPACE, &p.name, &labels)
            {
                Ok(id) => {
                    self.pods.insert(key.clone(), id);
                    deployed.pods.insert(key, self.mesh.pod(id).ip);
                }
                Err(e) => {
                    deployed.missing.insert(key, e.to_string());
                }
            }
        }
        for (k, s) in deployment.services.iter().enumerate() {
            for c in self.mesh.cluster_ids().collect::<Vec<_>>() {
                let backends = self.pod(&c.name(), &s.backend).into_iter().collect();
                let vip = std::net::Ipv4Addr::new(10, 96, c.0 as u8 + 1, 200 + k as u8);
                let mut svc = GlobalService::web(vip, backends);
                svc.namespace = NAMESPACE;
                svc.name = &s.name;
                svc.affinity = &s.affinity;
                self.mesh.deploy_service(c, &svc);
                self.services.push((c, s.name.clone()));
                deployed.services.insert((c.name(), s.name.clone()), vip);
            }
        }
        for c in self.mesh.cluster_ids().collect::<Vec<_>>() {
            let docs: String = deployment
                .isolated
                .iter()
                .map(|pod| {
                    format!(
                        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: isolate-{pod}\n  namespace: {NAMESPACE}\nspec:\n  podSelector:\n    matchLabels: {{app: knit-{pod}}}\n  policyTypes: [Ingress]\n---\n"
                    )
                })
                .collect();
            self.mesh.write_manifest(c, POLICY_FILE, &docs);
            self.policies.push(c);
        }
        let clusters = self.clusters();
        knit_operator::connectivity::settle(self, &clusters, &deployed, Duration::from_secs(30)).await;
        Ok(deployed)
    }

    async fn probe(
        &mut self,
        from: &Source,
        to: SocketAddrV4,
        count: usize,
    ) -> knit_operator::Result<Answers> {
        let hits = match from {
            Source::Pod(c, name) => self.mesh.hits_to(self.pod(c, name)?, to, count, false),
            Source::NodeOf(c, name) => {
                let node = self.mesh.pod(self.pod(c, name)?).node;
                let netns = self.mesh.node(node).netns.name().to_owned();
                self.mesh.hits_from(&netns, to, count)
            }
        };
        let total = hits.total();
        Ok(Answers {
            by_server: hits.names,
            failed: count.saturating_sub(total),
        })
    }

    async fn cleanup(&mut self) -> knit_operator::Result<()> {
        for (c, name) in std::mem::take(&mut self.services) {
            self.mesh
                .remove_manifest(c, &format!("svc-{NAMESPACE}-{name}.yaml"));
        }
        for c in std::mem::take(&mut self.policies) {
            self.mesh.remove_manifest(c, POLICY_FILE);
        }
        for ((c, name), p) in std::mem::take(&mut self.pods) {
            self.mesh
                .delete_pod(p)
                .map_err(|e| step_error(&format!("deleting pod {c}/{name}"), &e.to_string()))?;
        }
        Ok(())
    }
}
