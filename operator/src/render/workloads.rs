//! The mesh apiserver's Deployment, Services and NetworkPolicy.
//!
//! Each replica (`apiserver.replicas`, 2 by default, spread over nodes)
//! runs etcd (client-certificate auth; only this cluster's CA) and
//! knit-apiserver beside it, which bootstraps etcd's users and roles from
//! `knit-etcd-users`, exports cluster state, mirrors peers and serves peers
//! through its peer front (`--peer-listen`), the only way in for them.
//! Replicas share nothing but the identity numbers (ConfigMap
//! `knit-identities`): readers reach one of them through a Service and
//! resynchronise by value when they are moved to another; agents write
//! their status into every one (headless Service `knit-apiserver-replicas`).
//! Leaf certificates are renewed in place: etcd reads its certificate files
//! on every handshake, so open connections survive. A change of trust (a
//! peer added or removed) changes the pod template's trust hash and rolls the
//! pod with surge, so the new one is ready before the old one goes.

use std::net::IpAddr;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use serde_json::json;

use crate::config::{ClusterConfig, ServiceType};
use crate::{Error, Result, names};

/// The Deployment, with `trust_hash` on its pod template.
pub fn apiserver_deployment(config: &ClusterConfig, trust_hash: &str) -> Result<Deployment> {
    let ns = &config.namespace;
    let port = config.apiserver.port;
    let advertise = format!("https://{}.{ns}.svc:{port}", names::APISERVER);
    let value = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": names::APISERVER,
            "namespace": ns,
            "labels": names::managed_labels("mesh-apiserver"),
        },
        "spec": {
            "replicas": config.apiserver.replicas,
            "selector": { "matchLabels": names::apiserver_selector() },
            "strategy": { "type": "RollingUpdate", "rollingUpdate": { "maxSurge": 1, "maxUnavailable": 0 } },
            "template": {
                "metadata": {
                    "labels": names::apiserver_selector(),
                    "annotations": { names::TRUST_HASH_ANNOTATION: trust_hash },
                },
                "spec": {
                    // Preempts ordinary pods when it has to move (a drain,
                    // a node lost): this cluster is withdrawn from every
                    // peer once it stays away past their grace period.
                    "priorityClassName": "system-cluster-critical",
                    "nodeSelector": { "kubernetes.io/os": "linux" },
                    // One replica per node where the nodes allow; a
                    // one-node cluster still runs them all.
                    "affinity": { "podAntiAffinity": { "preferredDuringSchedulingIgnoredDuringExecution": [{
                        "weight": 100,
                        "podAffinityTerm": {
                            "labelSelector": { "matchLabels": names::apiserver_selector() },
                            "topologyKey": "kubernetes.io/hostname",
                        },
                    }] } },
                    "serviceAccountName": names::APISERVER,
                    "automountServiceAccountToken": true,
                    "securityContext": { "runAsNonRoot": true, "runAsUser": 65532, "fsGroup": 65532,
                                         "seccompProfile": { "type": "RuntimeDefault" } },
                    "containers": [
                        {
                            "name": "etcd",
                            "image": config.images.etcd,
                            "command": ["etcd"],
                            "args": [
                                "--name=knit",
                                "--data-dir=/var/run/etcd/data",
                                format!("--listen-client-urls=https://0.0.0.0:{port}"),
                                format!("--advertise-client-urls={advertise}"),
                                "--listen-peer-urls=http://127.0.0.1:2380",
                                "--initial-advertise-peer-urls=http://127.0.0.1:2380",
                                "--initial-cluster=knit=http://127.0.0.1:2380",
                                "--client-cert-auth=true",
                                "--trusted-ca-file=/etc/knit/trusted-cas/ca.crt",
                                "--cert-file=/etc/knit/server/tls.crt",
                                "--key-file=/etc/knit/server/tls.key",
                                "--auto-compaction-retention=1",
                                // Below the memory volume's sizeLimit.
                                "--quota-backend-bytes=805306368",
                            ],
                            "ports": [{ "name": "etcd", "containerPort": port }],
                            "readinessProbe": { "tcpSocket": { "port": port }, "periodSeconds": 5 },
                            "resources": { "requests": { "cpu": "100m", "memory": "128Mi" } },
                            "securityContext": security_context(),
                            "volumeMounts": [
                                { "name": "etcd-data", "mountPath": "/var/run/etcd" },
                                { "name": "server-cert", "mountPath": "/etc/knit/server", "readOnly": true },
                                { "name": "trusted-cas", "mountPath": "/etc/knit/trusted-cas", "readOnly": true },
                            ],
                        },
                        {
                            "name": "apiserver",
                            "image": config.images.apiserver,
                            "args": apiserver_args(config),
                            "env": apiserver_env(),
                            "ports": [
                                { "name": "metrics", "containerPort": names::APISERVER_METRICS_PORT },
                                { "name": "peers", "containerPort": config.apiserver.peer_port },
                            ],
                            "livenessProbe": { "httpGet": { "path": "/healthz", "port": "metrics" } },
                            "readinessProbe": { "httpGet": { "path": "/readyz", "port": "metrics" } },
                            "resources": { "requests": { "cpu": "100m", "memory": "128Mi" } },
                            "securityContext": security_context(),
                            "volumeMounts": [
                                { "name": "admin-cert", "mountPath": "/etc/knit/admin", "readOnly": true },
                                { "name": "etcd-users", "mountPath": "/etc/knit/users", "readOnly": true },
                                { "name": "peer-configs", "mountPath": "/etc/knit/peers", "readOnly": true },
                                { "name": "front-cert", "mountPath": "/etc/knit/front", "readOnly": true },
                                { "name": "peer-access", "mountPath": "/etc/knit/peer-access", "readOnly": true },
                            ],
                        },
                    ],
                    "volumes": [
                        // The state is rebuilt by the apiserver on start, so etcd keeps it in
                        // memory: no fsync latency on the path between clusters.
                        { "name": "etcd-data", "emptyDir": { "medium": "Memory", "sizeLimit": "1Gi" } },
                        { "name": "server-cert", "secret": { "secretName": names::SERVER_CERT_SECRET, "defaultMode": 0o400 } },
                        { "name": "front-cert", "secret": { "secretName": names::FRONT_CERT_SECRET, "defaultMode": 0o400 } },
                        { "name": "trusted-cas", "configMap": { "name": names::TRUSTED_CAS_CONFIGMAP } },
                        { "name": "admin-cert", "secret": { "secretName": names::ADMIN_CERT_SECRET, "defaultMode": 0o400 } },
                        { "name": "etcd-users", "configMap": { "name": names::ETCD_USERS_CONFIGMAP } },
                        { "name": "peer-configs", "secret": { "secretName": names::PEER_CONFIGS_SECRET, "defaultMode": 0o400 } },
                        { "name": "peer-access", "secret": { "secretName": names::PEER_ACCESS_SECRET, "defaultMode": 0o400 } },
                    ],
                },
            },
        },
    });
    serde_json::from_value(value).map_err(|source| Error::RenderObject {
        kind: "Deployment",
        source,
    })
}

/// The apiserver container's arguments. `--pod-cidrs` is left out when the
/// config names none (every pod IP is exported then).
pub fn apiserver_args(config: &ClusterConfig) -> Vec<String> {
    let mut args = vec![
        format!("--cluster-name={}", config.cluster_name),
        format!("--cluster-id={}", config.cluster_id),
    ];
    if !config.pod_cidrs.is_empty() {
        args.push(format!("--pod-cidrs={}", config.pod_cidrs.join(",")));
    }
    args.extend([
        "--etcd-config=/etc/knit/admin/config.yaml".to_owned(),
        "--etcd-users=/etc/knit/users/users.yaml".to_owned(),
        "--peer-configs=/etc/knit/peers".to_owned(),
        format!("--peer-listen=0.0.0.0:{}", config.apiserver.peer_port),
        "--server-cert-dir=/etc/knit/front".to_owned(),
        "--peer-access-dir=/etc/knit/peer-access".to_owned(),
        format!("--metrics-addr=0.0.0.0:{}", names::APISERVER_METRICS_PORT),
    ]);
    args
}

/// The Service local agents reach etcd through: ClusterIP, port `etcd`.
pub fn apiserver_service(config: &ClusterConfig) -> Result<Service> {
    service(
        config,
        names::APISERVER,
        "ClusterIP",
        json!({
            "name": "etcd",
            "port": config.apiserver.port,
            "targetPort": "etcd",
            "protocol": "TCP",
        }),
    )
}

/// The headless Service whose name resolves to every ready replica's pod
/// address (agents' `--etcd-replicas`): each replica has its own etcd, and
/// each needs every agent's status.
pub fn replicas_service(config: &ClusterConfig) -> Result<Service> {
    let mut service = service(
        config,
        names::REPLICAS_SERVICE,
        "ClusterIP",
        json!({
            "name": "etcd",
            "port": config.apiserver.port,
            "targetPort": "etcd",
            "protocol": "TCP",
        }),
    )?;
    if let Some(spec) = service.spec.as_mut() {
        spec.cluster_ip = Some("None".to_owned());
        // A replica's first export waits for the agents' reports (with
        // encryption), so agents must find it before it is ready.
        spec.publish_not_ready_addresses = Some(true);
    }
    Ok(service)
}

/// The Service peers reach the peer front through, of the configured type
/// (the node port and the load balancer serve only the front).
pub fn peers_service(config: &ClusterConfig) -> Result<Service> {
    let service_type = match config.apiserver.service_type {
        ServiceType::ClusterIP => "ClusterIP",
        ServiceType::NodePort => "NodePort",
        ServiceType::LoadBalancer => "LoadBalancer",
    };
    let mut peers = json!({
        "name": "peers",
        "port": config.apiserver.peer_port,
        "targetPort": "peers",
        "protocol": "TCP",
    });
    if let (ServiceType::NodePort, Some(node_port)) =
        (config.apiserver.service_type, config.apiserver.node_port)
    {
        peers["nodePort"] = json!(node_port);
    }
    service(config, names::PEERS_SERVICE, service_type, peers)
}

/// The apiserver container's environment: the agents' tunnel port and
/// routing mode, set once in knit-agent-config and announced to peers,
/// their encryption (the first export waits for the nodes' keys), and
/// the namespace of the ConfigMap knit-identities (identity numbers that
/// outlive etcd).
fn apiserver_env() -> serde_json::Value {
    json!([{
        "name": "KNIT_TUNNEL_PORT",
        "valueFrom": { "configMapKeyRef": {
            "name": names::AGENT_CONFIG, "key": "tunnelPort", "optional": true,
        } },
    }, {
        "name": "KNIT_ROUTING_MODE",
        "valueFrom": { "configMapKeyRef": {
            "name": names::AGENT_CONFIG, "key": "routingMode", "optional": true,
        } },
    }, {
        "name": "KNIT_ENCRYPTION",
        "valueFrom": { "configMapKeyRef": {
            "name": names::AGENT_CONFIG, "key": "encryption", "optional": true,
        } },
    }, {
        "name": "POD_NAMESPACE",
        "valueFrom": { "fieldRef": { "fieldPath": "metadata.namespace" } },
    }])
}

/// The mesh apiserver's PodDisruptionBudget: a voluntary eviction (a
/// drain) never takes the last ready replica. With one replica a drain of
/// its node waits until the replica is moved on purpose (`kubectl delete
/// pod`, which a budget does not block) or more replicas run; a replica
/// that is not ready may always be evicted.
pub fn apiserver_disruption_budget(config: &ClusterConfig) -> Result<PodDisruptionBudget> {
    let value = json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {
            "name": names::APISERVER,
            "namespace": config.namespace,
            "labels": names::managed_labels("mesh-apiserver"),
        },
        "spec": {
            "minAvailable": 1,
            "selector": { "matchLabels": names::apiserver_selector() },
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    });
    serde_json::from_value(value).map_err(|source| Error::RenderObject {
        kind: "PodDisruptionBudget",
        source,
    })
}

/// The NetworkPolicy of the mesh apiserver pod: the peer front and the
/// metrics port are open (peers come from outside the cluster); etcd's port
/// only from `apiserver.etcdClientCIDRs` when set, plus what always needs
/// it: the operator's pods and, for the host-network agents, every address
/// in `node_sources` (see [`node_sources`]); nothing else (etcd's peer
/// port listens on loopback anyway).
pub fn apiserver_network_policy(config: &ClusterConfig, node_sources: &[IpAddr]) -> Result<NetworkPolicy> {
    let mut etcd_from: Vec<serde_json::Value> = config
        .apiserver
        .etcd_client_cidrs
        .iter()
        .map(|cidr| json!({ "ipBlock": { "cidr": cidr } }))
        .collect();
    if !etcd_from.is_empty() {
        etcd_from
            .push(json!({ "podSelector": { "matchLabels": { "app.kubernetes.io/name": "knit-operator" } } }));
        etcd_from.extend(node_sources.iter().map(|ip| {
            let cidr = match ip {
                IpAddr::V4(_) => format!("{ip}/32"),
                IpAddr::V6(_) => format!("{ip}/128"),
            };
            json!({ "ipBlock": { "cidr": cidr } })
        }));
    }
    let mut etcd_rule = json!({ "ports": [{ "protocol": "TCP", "port": config.apiserver.port }] });
    if !etcd_from.is_empty() {
        etcd_rule["from"] = json!(etcd_from);
    }
    let value = json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": names::APISERVER,
            "namespace": config.namespace,
            "labels": names::managed_labels("mesh-apiserver"),
        },
        "spec": {
            "podSelector": { "matchLabels": names::apiserver_selector() },
            "policyTypes": ["Ingress"],
            "ingress": [
                { "ports": [
                    { "protocol": "TCP", "port": config.apiserver.peer_port },
                    { "protocol": "TCP", "port": names::APISERVER_METRICS_PORT },
                ] },
                etcd_rule,
            ],
        },
    });
    serde_json::from_value(value).map_err(|source| Error::RenderObject {
        kind: "NetworkPolicy",
        source,
    })
}

fn service(
    config: &ClusterConfig,
    name: &str,
    service_type: &str,
    port: serde_json::Value,
) -> Result<Service> {
    let value = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": config.namespace,
            "labels": names::managed_labels("mesh-apiserver"),
        },
        "spec": {
            "type": service_type,
            "selector": names::apiserver_selector(),
            "ports": [port],
        },
    });
    serde_json::from_value(value).map_err(|source| Error::RenderObject {
        kind: "Service",
        source,
    })
}

fn security_context() -> serde_json::Value {
    json!({
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "capabilities": { "drop": ["ALL"] },
    })
}

/// The addresses a host-network agent on `node` may connect to etcd from:
/// the Node's InternalIP/ExternalIP addresses (a direct route via the
/// underlay), and the first two addresses of each IPv4 pod CIDR, which
/// tunnel and bridge CNIs put on the node (flannel's `flannel.1` has the
/// `.0`, a bridge's `cni0` the `.1`). Sorted, without duplicates.
pub fn node_sources(nodes: &[k8s_openapi::api::core::v1::Node]) -> Vec<IpAddr> {
    let mut out = std::collections::BTreeSet::new();
    for node in nodes {
        for a in node.status.iter().flat_map(|s| s.addresses.iter().flatten()) {
            if (a.type_ == "InternalIP" || a.type_ == "ExternalIP")
                && let Ok(ip) = a.address.parse::<IpAddr>()
            {
                out.insert(ip);
            }
        }
        let spec = node.spec.as_ref();
        let cidrs = spec
            .and_then(|s| s.pod_cidrs.clone())
            .or_else(|| spec.and_then(|s| s.pod_cidr.clone()).map(|c| vec![c]))
            .unwrap_or_default();
        for cidr in cidrs {
            if let Ok(ipnet::IpNet::V4(net)) = cidr.parse::<ipnet::IpNet>() {
                let first = u32::from(net.network());
                out.insert(IpAddr::V4(first.into()));
                out.insert(IpAddr::V4((first + 1).into()));
            }
        }
    }
    out.into_iter().collect()
}
