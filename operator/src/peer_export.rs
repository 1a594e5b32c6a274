//! `knitctl peer export`: the ClusterMeshPeer manifest that describes this
//! cluster, for the other cluster's git repository. It carries only public
//! data: name, ID, endpoints, pod CIDRs and the mesh CA certificate.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use knit_crds::{ClusterMeshPeer, ClusterMeshPeerSpec};

use crate::config::ClusterConfig;
use crate::{Error, Result, pki};

/// Builds the manifest. `endpoints` are the URLs peers use; an empty list is
/// an error saying how to provide them.
pub fn export_peer(config: &ClusterConfig, ca_pem: &str, endpoints: Vec<String>) -> Result<ClusterMeshPeer> {
    if endpoints.is_empty() {
        return Err(Error::Export(
            "no endpoint for peers to reach this cluster's mesh apiserver: set apiserver.externalAddresses in \
             the operator config, or pass --endpoint https://HOST:PORT"
                .into(),
        ));
    }
    if let Some(bad) = endpoints.iter().find(|e| !e.starts_with("https://")) {
        return Err(Error::Export(format!("endpoint {bad:?} must be an https:// URL")));
    }
    pki::check_pem_certificate(ca_pem)?;
    let mut peer = ClusterMeshPeer::new(
        &config.cluster_name,
        ClusterMeshPeerSpec {
            cluster_name: config.cluster_name.clone(),
            cluster_id: config.cluster_id,
            endpoints,
            ca_bundle: Some(ca_pem.to_owned()),
            ca_secret_ref: None,
            pod_cidrs: config.pod_cidrs.clone(),
            limits: None,
        },
    );
    peer.metadata = ObjectMeta {
        name: Some(config.cluster_name.clone()),
        ..ObjectMeta::default()
    };
    Ok(peer)
}

/// The manifest as YAML, with a header saying where it belongs.
pub fn export_peer_yaml(config: &ClusterConfig, ca_pem: &str, endpoints: Vec<String>) -> Result<String> {
    let peer = export_peer(config, ca_pem, endpoints)?;
    let body = serde_saphyr::to_string(&peer).map_err(|source| Error::Serialize {
        what: "ClusterMeshPeer",
        source,
    })?;
    Ok(format!(
        "# ClusterMeshPeer describing cluster {:?}. Apply it in every OTHER cluster of the mesh\n\
         # (commit it to their git repositories). It holds public data only.\n{body}",
        config.cluster_name
    ))
}
