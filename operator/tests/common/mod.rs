//! Fixtures shared by the operator's tests.
#![allow(dead_code)]

pub mod kube_mock;

use jiff::Timestamp;
use knit_crds::ClusterMeshPeerSpec;
use knit_operator::config::ClusterConfig;
use knit_operator::pki;
use knit_operator::render::{
    MeshInputs, MeshPlan, PeerInput, StoredSecrets, render_mesh, stored_from_secrets,
};

pub fn t0() -> Timestamp {
    "2026-01-01T00:00:00Z".parse().unwrap()
}

pub fn config_a() -> ClusterConfig {
    ClusterConfig::from_yaml(
        "clusterName: a\nclusterID: 1\npodCIDRs: [10.1.0.0/16]\napiserver:\n  externalAddresses: [mesh.a.example.com]\n",
    )
    .unwrap()
}

/// A peer input whose CA is a fresh CA of `cluster`.
pub fn peer(name: &str, cluster: &str, id: u16, created: &str) -> PeerInput {
    let ca = pki::new_ca(cluster, t0(), 3650).unwrap();
    PeerInput {
        name: name.into(),
        uid: None,
        generation: Some(1),
        created: Some(created.parse().unwrap()),
        spec: ClusterMeshPeerSpec {
            cluster_name: cluster.into(),
            cluster_id: id,
            endpoints: vec![format!("https://mesh.{cluster}.example.com:2379")],
            ca_bundle: Some(ca.cert_pem.clone()),
            ca_secret_ref: None,
            pod_cidrs: vec![format!("10.{id}.0.0/16")],
            limits: None,
        },
        ca: Ok(ca.cert_pem),
        status: None,
        sync: None,
    }
}

pub fn render(
    config: &ClusterConfig,
    peers: &[PeerInput],
    stored: &StoredSecrets,
    now: Timestamp,
) -> MeshPlan {
    render_mesh(&MeshInputs {
        node_sources: &[],
        config,
        peers,
        stored,
        load_balancer_ingress: &[],
        now,
    })
    .unwrap()
}

pub fn stored(plan: &MeshPlan) -> StoredSecrets {
    stored_from_secrets(&plan.secrets)
}

pub fn secret_text(plan: &MeshPlan, secret: &str, key: &str) -> Option<String> {
    let s = plan
        .secrets
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(secret))?;
    let v = s.data.as_ref()?.get(key)?;
    Some(String::from_utf8(v.0.clone()).unwrap())
}

pub fn cm_text(plan: &MeshPlan, cm: &str, key: &str) -> Option<String> {
    let c = plan
        .config_maps
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some(cm))?;
    c.data.as_ref()?.get(key).cloned()
}

/// The trust-hash annotation of the apiserver pod template (it changes when
/// etcd's trust does, which restarts etcd).
pub fn trust_hash(plan: &MeshPlan) -> String {
    plan.deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .annotations
        .as_ref()
        .unwrap()[knit_operator::names::TRUST_HASH_ANNOTATION]
        .clone()
}
