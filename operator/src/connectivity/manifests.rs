//! The Kubernetes objects of a connectivity test in one cluster, rendered
//! without I/O from the plan ([`super::plan`]) and the cluster's nodes:
//! the namespace, the test pods (each pinned to a node by `nodeName`), a
//! host-network twin of every client (the source of "node to pod"), the
//! global services with their GlobalServicePolicies, and the NetworkPolicy
//! isolating the pods the plan names.

use k8s_openapi::api::core::v1::Node;
use serde_json::{Value, json};

use super::{Deployment, NAMESPACE, PORT};

/// The port every client's `knit-probe control` server listens on; the
/// test reaches it through the API server's pod proxy.
pub const CONTROL_PORT: u16 = 4250;
/// Label on everything the test creates.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "knitctl-connectivity");

/// One cluster's objects, in the order they are applied.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Objects {
    /// The namespace.
    pub namespace: Value,
    /// Pods, by name.
    pub pods: Vec<(String, Value)>,
    /// Services, by name.
    pub services: Vec<(String, Value)>,
    /// GlobalServicePolicies, by name.
    pub global_service_policies: Vec<(String, Value)>,
    /// NetworkPolicies, by name.
    pub network_policies: Vec<(String, Value)>,
}

/// The name of `pod`'s host-network twin.
pub fn host_twin(pod: &str) -> String {
    format!("{pod}-host")
}

/// The nodes test pods may run on, by name: Ready, schedulable, without a
/// NoSchedule or NoExecute taint (a kind control plane has one).
pub fn usable_nodes(nodes: &[Node]) -> Vec<String> {
    let mut out: Vec<String> = nodes
        .iter()
        .filter(|n| {
            let spec = n.spec.clone().unwrap_or_default();
            let ready = n
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            let tainted = spec
                .taints
                .unwrap_or_default()
                .iter()
                .any(|t| t.effect == "NoSchedule" || t.effect == "NoExecute");
            ready && !tainted && !spec.unschedulable.unwrap_or(false)
        })
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    out.sort();
    out
}

fn metadata(name: &str, labels: Value) -> Value {
    let mut labels = labels;
    labels[MANAGED_BY.0] = json!(MANAGED_BY.1);
    json!({ "name": name, "namespace": NAMESPACE, "labels": labels })
}

fn probe_pod(
    name: &str,
    labels: Value,
    node: &str,
    image: &str,
    args: Value,
    port: u16,
    host: bool,
) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata(name, labels),
        "spec": {
            "nodeName": node,
            "hostNetwork": host,
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 0,
            "automountServiceAccountToken": false,
            "containers": [{
                "name": "probe",
                "image": image,
                "command": ["/usr/local/bin/knit-probe"],
                "args": args,
                "ports": [{ "containerPort": port, "protocol": "TCP" }],
                "readinessProbe": { "tcpSocket": { "port": port }, "periodSeconds": 1 },
            }],
        },
    })
}

/// `cluster`'s objects of `deployment` on `nodes` (from [`usable_nodes`],
/// not empty), pods running `image` (knit-probe).
pub fn objects(deployment: &Deployment, cluster: &str, nodes: &[String], image: &str) -> Objects {
    let mut o = Objects {
        namespace: json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": NAMESPACE,
                "labels": {
                    MANAGED_BY.0: MANAGED_BY.1,
                    // The host-network twins need the privileged level.
                    "pod-security.kubernetes.io/enforce": "privileged",
                },
            },
        }),
        ..Objects::default()
    };
    for p in deployment.pods.iter().filter(|p| p.cluster == cluster) {
        let node = &nodes[p.node % nodes.len()];
        let labels = json!(p.labels);
        if p.serves {
            let args = json!([
                "serve",
                "--name",
                format!("{cluster}/{}", p.name),
                "--port",
                PORT.to_string()
            ]);
            o.pods.push((
                p.name.clone(),
                probe_pod(&p.name, labels, node, image, args, PORT, false),
            ));
        } else {
            let args = json!(["control", "--port", CONTROL_PORT.to_string()]);
            o.pods.push((
                p.name.clone(),
                probe_pod(&p.name, labels, node, image, args.clone(), CONTROL_PORT, false),
            ));
            let twin = host_twin(&p.name);
            let labels = json!({ "app": format!("knit-{twin}") });
            o.pods.push((
                twin.clone(),
                probe_pod(&twin, labels, node, image, args, CONTROL_PORT, true),
            ));
        }
    }
    for s in &deployment.services {
        let selector = deployment
            .pods
            .iter()
            .find(|p| p.cluster == cluster && p.name == s.backend)
            .map(|p| json!(p.labels))
            .unwrap_or_else(|| json!({ "app": format!("knit-{}", s.backend) }));
        o.services.push((
            s.name.clone(),
            json!({
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": metadata(&s.name, json!({})),
                "spec": {
                    "selector": selector,
                    "ports": [{ "name": "http", "port": PORT, "targetPort": PORT, "protocol": "TCP" }],
                },
            }),
        ));
        o.global_service_policies.push((
            s.name.clone(),
            json!({
                "apiVersion": "knit.dev/v1alpha1",
                "kind": "GlobalServicePolicy",
                "metadata": metadata(&s.name, json!({})),
                "spec": { "services": [s.name], "export": true, "import": true, "affinity": s.affinity },
            }),
        ));
    }
    for pod in &deployment.isolated {
        let selector = deployment
            .pods
            .iter()
            .find(|p| p.cluster == cluster && &p.name == pod)
            .map(|p| json!(p.labels))
            .unwrap_or_else(|| json!({ "app": format!("knit-{pod}") }));
        let name = format!("isolate-{pod}");
        o.network_policies.push((
            name.clone(),
            json!({
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": metadata(&name, json!({})),
                "spec": { "podSelector": { "matchLabels": selector }, "policyTypes": ["Ingress"] },
            }),
        ));
    }
    o
}
