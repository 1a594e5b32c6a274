//! Pure render of the whole mesh control plane of one cluster.
//!
//! [`render_mesh`] takes the local config, every ClusterMeshPeer (with its CA
//! resolved), the operator's stored Secrets and the time, and returns every
//! object the cluster should have, each peer's status and the Events worth
//! recording. No I/O: the Kubernetes layer (`crate::kube`) and `knitctl
//! render` both apply the same [`MeshPlan`].
//!
//! Objects that depend on all peers at once (peer configs, trusted CAs, etcd
//! users) are recomputed from the current peer list every time, so deleting
//! a ClusterMeshPeer removes its entries on the next render with no finalizer.

pub mod peers;
pub mod pki_plan;
pub mod workloads;

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use knit_crds::ClusterMeshPeerStatus;
use knit_kvstore::EtcdClientConfig;

use crate::conditions;
use crate::config::ClusterConfig;
use crate::pki::CertKeyPair;
use crate::{Result, names};
pub use peers::{AcceptedPeer, PeerInput, PeerSyncReport};
pub use pki_plan::{PkiPlan, StoredSecrets};

/// Everything the render reads.
#[derive(Clone, Debug)]
pub struct MeshInputs<'a> {
    /// Local cluster configuration.
    pub config: &'a ClusterConfig,
    /// Every ClusterMeshPeer.
    pub peers: &'a [PeerInput],
    /// The operator's Secrets as stored now.
    pub stored: &'a StoredSecrets,
    /// Addresses in the mesh apiserver Service's LoadBalancer status (host
    /// name or IP per ingress entry); empty when it has none.
    pub load_balancer_ingress: &'a [String],
    /// Where host-network agents reach etcd from
    /// ([`workloads::node_sources`]); admitted when
    /// `apiserver.etcdClientCIDRs` restricts etcd's port.
    pub node_sources: &'a [std::net::IpAddr],
    /// Current time.
    pub now: Timestamp,
}

/// Who an Event is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventTarget {
    /// A ClusterMeshPeer.
    Peer {
        /// `metadata.name`.
        name: String,
        /// `metadata.uid`, when known.
        uid: Option<String>,
    },
    /// The mesh apiserver Deployment (cluster-wide happenings).
    MeshApiserver,
}

/// An Event to record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanEvent {
    /// Subject.
    pub target: EventTarget,
    /// Warning (true) or Normal.
    pub warning: bool,
    /// CamelCase reason.
    pub reason: String,
    /// Sentence.
    pub note: String,
}

/// Everything the cluster should have.
#[derive(Clone, Debug)]
pub struct MeshPlan {
    /// Secrets, in apply order.
    pub secrets: Vec<Secret>,
    /// ConfigMaps, in apply order.
    pub config_maps: Vec<ConfigMap>,
    /// The mesh apiserver Deployment.
    pub deployment: Deployment,
    /// The mesh apiserver's ClusterIP Service (etcd, for local agents).
    pub service: Service,
    /// The headless Service naming every replica (agents' status writes).
    pub replicas_service: Service,
    /// The Service peers reach the peer front through (configured type).
    pub peer_service: Service,
    /// Which ports of the mesh apiserver pod are reachable, from where.
    pub network_policy: NetworkPolicy,
    /// The mesh apiserver's disruption budget.
    pub disruption_budget: k8s_openapi::api::policy::v1::PodDisruptionBudget,
    /// Desired status per ClusterMeshPeer name.
    pub peer_statuses: BTreeMap<String, ClusterMeshPeerStatus>,
    /// Peers configured, sorted by cluster name.
    pub accepted: Vec<AcceptedPeer>,
    /// Events to record.
    pub events: Vec<PlanEvent>,
}

/// Renders the mesh control plane.
pub fn render_mesh(inputs: &MeshInputs<'_>) -> Result<MeshPlan> {
    let config = inputs.config;
    let (accepted, problems) = peers::check_peers(config, inputs.peers);
    let cluster_names: Vec<String> = accepted.iter().map(|p| p.cluster_name.clone()).collect();
    let pki = pki_plan::plan_pki(
        config,
        inputs.stored,
        &cluster_names,
        inputs.load_balancer_ingress,
        inputs.now,
    )?;
    let mut events = pki_events(&pki);
    let secrets = mesh_secrets(config, &pki, &accepted)?;

    let trusted = peers::trusted_client_cas(config, &pki.local_ca.cert_pem);
    let users = peers::etcd_access(config, &accepted).to_yaml()?;
    let trust_hash = short_sha256(&format!("{trusted}\n{users}"));
    let config_maps = vec![
        config_map(config, names::PUBLIC_CA_CONFIGMAP, "ca.crt", pki.published_cas()),
        config_map(config, names::TRUSTED_CAS_CONFIGMAP, "ca.crt", trusted),
        config_map(config, names::ETCD_USERS_CONFIGMAP, "users.yaml", users),
    ];
    let peer_statuses = peer_statuses(inputs, &problems, &accepted, &pki, &mut events);

    Ok(MeshPlan {
        secrets,
        config_maps,
        deployment: workloads::apiserver_deployment(config, &trust_hash)?,
        service: workloads::apiserver_service(config)?,
        replicas_service: workloads::replicas_service(config)?,
        peer_service: workloads::peers_service(config)?,
        network_policy: workloads::apiserver_network_policy(config, inputs.node_sources)?,
        disruption_budget: workloads::apiserver_disruption_budget(config)?,
        peer_statuses,
        accepted,
        events,
    })
}

/// The apiserver's Events of a PKI plan: what was issued, and each warning.
fn pki_events(pki: &PkiPlan) -> Vec<PlanEvent> {
    let mut events = Vec::new();
    if !pki.issued.is_empty() {
        events.push(normal(
            EventTarget::MeshApiserver,
            "CertificateIssued",
            &pki.issued.join("; "),
        ));
    }
    events.extend(pki.warnings.iter().map(|note| PlanEvent {
        target: EventTarget::MeshApiserver,
        warning: true,
        reason: "CertificateExpiring".into(),
        note: note.clone(),
    }));
    events
}

/// Every Secret of the mesh: the CAs, the leaves with the CA that checks
/// them (and, for etcd's clients, the endpoint), and the peer configs.
fn mesh_secrets(config: &ClusterConfig, pki: &PkiPlan, accepted: &[AcceptedPeer]) -> Result<Vec<Secret>> {
    let port = config.apiserver.port;
    let local_endpoint = format!("https://{}.{}.svc:{port}", names::APISERVER, config.namespace);
    let local_ca = &pki.local_ca.cert_pem;
    let local_ca_data = [("ca.crt", local_ca), ("ca.key", &pki.local_ca.key_pem)];
    let admin_endpoint = Some(format!("https://127.0.0.1:{port}"));
    let tls = "kubernetes.io/tls";
    Ok(vec![
        secret(config, names::CA_SECRET, "Opaque", mesh_ca_data(pki)),
        secret(config, names::LOCAL_CA_SECRET, "Opaque", local_ca_data.into()),
        secret(
            config,
            names::SERVER_CERT_SECRET,
            tls,
            tls_data(&pki.server, local_ca, None)?,
        ),
        secret(
            config,
            names::FRONT_CERT_SECRET,
            tls,
            tls_data(&pki.front, &pki.published_cas(), None)?,
        ),
        secret(
            config,
            names::ADMIN_CERT_SECRET,
            "Opaque",
            tls_data(&pki.admin, local_ca, admin_endpoint)?,
        ),
        secret(
            config,
            names::LOCAL_CERT_SECRET,
            "Opaque",
            tls_data(&pki.local, local_ca, Some(local_endpoint))?,
        ),
        secret(config, names::PEER_ACCESS_SECRET, "Opaque", peer_access_data(pki)),
        secret(
            config,
            names::PEER_CONFIGS_SECRET,
            "Opaque",
            peers::peer_config_data(accepted, &pki.peer_clients)?,
        ),
    ])
}

/// Each ClusterMeshPeer's status, and an Event for each Ready flip and each
/// certificate turning not ready.
fn peer_statuses(
    inputs: &MeshInputs<'_>,
    problems: &BTreeMap<String, String>,
    accepted: &[AcceptedPeer],
    pki: &PkiPlan,
    events: &mut Vec<PlanEvent>,
) -> BTreeMap<String, ClusterMeshPeerStatus> {
    let mut statuses = BTreeMap::new();
    for peer in inputs.peers {
        let problem = problems.get(&peer.name).map(String::as_str);
        let client = accepted
            .iter()
            .find(|a| a.name == peer.name)
            .and_then(|a| pki.peer_clients.get(&a.cluster_name));
        let mut status = peers::peer_status(peer, problem, client, inputs.now);
        status.mesh_ca = Some(pki.rotation.clone());
        let before = peer
            .status
            .as_ref()
            .map(|s| s.conditions.as_slice())
            .unwrap_or_default();
        for flip in conditions::flipped(before, &status.conditions) {
            if flip.type_ == "Ready" || (flip.type_ == "CertificateReady" && flip.status == "False") {
                events.push(PlanEvent {
                    target: EventTarget::Peer {
                        name: peer.name.clone(),
                        uid: peer.uid.clone(),
                    },
                    warning: flip.status == "False",
                    reason: format!("{}{}", flip.type_, flip.status),
                    note: flip.message.clone(),
                });
            }
        }
        statuses.insert(peer.name.clone(), status);
    }
    statuses
}

/// When each certificate of the plan expires (Unix seconds), keyed
/// `<Secret>/<key>`: every CA, leaf and peer CA the cluster holds, each
/// once (the `ca.crt` copies beside leaf certificates are left out).
pub fn certificate_expiries(plan: &MeshPlan) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for secret in &plan.secrets {
        let name = secret.metadata.name.as_deref().unwrap_or_default();
        let is_ca_secret = name == names::CA_SECRET || name == names::LOCAL_CA_SECRET;
        for (key, value) in secret.data.iter().flatten() {
            if !key.ends_with(".crt") || (key == "ca.crt" && !is_ca_secret) {
                continue;
            }
            let Ok(info) = std::str::from_utf8(&value.0)
                .map_err(|_| ())
                .and_then(|pem| crate::pki::inspect(pem).map_err(|_| ()))
            else {
                continue;
            };
            out.insert(format!("{name}/{key}"), info.not_after.as_second());
        }
    }
    out
}

/// Decodes the operator's stored Secrets into the render's input form.
pub fn stored_from_secrets<'a>(secrets: impl IntoIterator<Item = &'a Secret>) -> StoredSecrets {
    secrets
        .into_iter()
        .filter_map(|s| {
            let name = s.metadata.name.clone()?;
            let data = s
                .data
                .iter()
                .flatten()
                .filter_map(|(k, v)| Some((k.clone(), String::from_utf8(v.0.clone()).ok()?)))
                .collect();
            Some((name, data))
        })
        .collect()
}

fn mesh_ca_data(pki: &PkiPlan) -> BTreeMap<String, String> {
    let mut data = BTreeMap::from([
        ("ca.crt".to_owned(), pki.ca.cert_pem.clone()),
        ("ca.key".to_owned(), pki.ca.key_pem.clone()),
    ]);
    if let Some(next) = &pki.next_ca {
        data.insert("next.crt".to_owned(), next.cert_pem.clone());
        data.insert("next.key".to_owned(), next.key_pem.clone());
    }
    data
}

fn peer_access_data(pki: &PkiPlan) -> BTreeMap<String, String> {
    let mut data = BTreeMap::from([("ca.crt".to_owned(), pki.local_ca.cert_pem.clone())]);
    for (peer, pair) in &pki.peer_access {
        data.insert(format!("{peer}.crt"), pair.cert_pem.clone());
        data.insert(format!("{peer}.key"), pair.key_pem.clone());
    }
    data
}

/// A certificate's Secret data; `ca` is the bundle that verifies it.
fn tls_data(pair: &CertKeyPair, ca: &str, endpoint: Option<String>) -> Result<BTreeMap<String, String>> {
    let mut data = BTreeMap::from([
        ("ca.crt".to_owned(), ca.to_owned()),
        ("tls.crt".to_owned(), pair.cert_pem.clone()),
        ("tls.key".to_owned(), pair.key_pem.clone()),
    ]);
    if let Some(endpoint) = endpoint {
        let client = EtcdClientConfig {
            endpoints: vec![endpoint],
            trusted_ca_file: "ca.crt".into(),
            cert_file: "tls.crt".into(),
            key_file: "tls.key".into(),
            peer: None,
        };
        data.insert("config.yaml".to_owned(), client.to_yaml()?);
    }
    Ok(data)
}

/// The longest Event note the API server accepts, in bytes.
pub const EVENT_NOTE_MAX: usize = 1024;

/// `note` with ` (trace <id>)` appended, cut (at a character boundary,
/// ending in `…`) so that the whole fits [`EVENT_NOTE_MAX`]: the API server
/// rejects a longer note, and with it the Event.
pub fn event_note(note: &str, trace_id: Option<&str>) -> String {
    let suffix = trace_id.map(|id| format!(" (trace {id})")).unwrap_or_default();
    if note.len() + suffix.len() <= EVENT_NOTE_MAX {
        return format!("{note}{suffix}");
    }
    let mut cut = EVENT_NOTE_MAX - suffix.len() - '…'.len_utf8();
    while !note.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…{suffix}", &note[..cut])
}

fn normal(target: EventTarget, reason: &str, note: &str) -> PlanEvent {
    PlanEvent {
        target,
        warning: false,
        reason: reason.into(),
        note: note.into(),
    }
}

fn meta(config: &ClusterConfig, name: &str, component: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(config.namespace.clone()),
        labels: Some(names::managed_labels(component)),
        ..ObjectMeta::default()
    }
}

fn secret<K: Into<String>>(
    config: &ClusterConfig,
    name: &str,
    type_: &str,
    data: BTreeMap<K, impl Into<String>>,
) -> Secret {
    Secret {
        metadata: meta(config, name, "mesh-pki"),
        type_: Some(type_.to_owned()),
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k.into(), ByteString(v.into().into_bytes())))
                .collect(),
        ),
        ..Secret::default()
    }
}

fn config_map(config: &ClusterConfig, name: &str, key: &str, value: String) -> ConfigMap {
    ConfigMap {
        metadata: meta(config, name, "mesh-apiserver"),
        data: Some(BTreeMap::from([(key.to_owned(), value)])),
        ..ConfigMap::default()
    }
}

fn short_sha256(text: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    digest.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_note_fits_the_api_servers_limit_with_its_trace() {
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert_eq!(event_note("short", Some(trace)), format!("short (trace {trace})"));
        // CertificateIssued at 12 peers: one line per certificate.
        let issued: Vec<String> = (0..12)
            .map(|i| format!("knit-peer-configs/c{i}.crt: client certificate CN remote-a for peer c{i}, valid until 2027-12-05T00:00:00Z (ééé)"))
            .collect();
        let long = issued.join("; ");
        assert!(long.len() > EVENT_NOTE_MAX);
        let note = event_note(&long, Some(trace));
        assert!(note.len() <= EVENT_NOTE_MAX, "{}", note.len());
        assert!(note.ends_with(&format!("… (trace {trace})")), "{note}");
        assert!(long.starts_with(note.split('…').next().unwrap()));
        assert!(event_note(&long, None).len() <= EVENT_NOTE_MAX);
    }
}
