//! Peers: which ClusterMeshPeers are usable, the files that let the
//! KVStoreMesh reach them, what etcd must trust and allow for them, and the
//! status each ClusterMeshPeer reports.
//!
//! A peer with a problem (unreadable CA, a name or ID clashing with this
//! cluster or an older peer) is left out and says why in its status; the
//! other peers are unaffected.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use knit_crds::{ClusterMeshPeer, ClusterMeshPeerSpec, ClusterMeshPeerStatus};
use knit_kvstore::keys::Kind;
use knit_kvstore::records::PeerStatusRecord;
use knit_kvstore::{Access, EtcdAccess, EtcdClientConfig, EtcdUser, PeerIdentity};

use crate::conditions::{self, Desired};
use crate::config::{ClusterConfig, parse_cidr};
use crate::pki::{self, CertKeyPair};
use crate::{Result, names};

/// One ClusterMeshPeer with everything the render needs resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerInput {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.uid`: Events about the peer name it, or `kubectl describe`
    /// does not show them.
    pub uid: Option<String>,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// `metadata.creationTimestamp`; the older of two clashing peers wins.
    pub created: Option<Timestamp>,
    /// The spec.
    pub spec: ClusterMeshPeerSpec,
    /// The peer's CA PEM, or why it could not be read (e.g. a missing Secret).
    pub ca: Result<String, String>,
    /// The status currently stored.
    pub status: Option<ClusterMeshPeerStatus>,
    /// What the mesh apiserver last reported about this peer, if anything.
    pub sync: Option<PeerSyncReport>,
}

impl PeerInput {
    /// The render input for a ClusterMeshPeer whose CA was resolved to `ca`.
    pub fn from_peer(peer: &ClusterMeshPeer, ca: Result<String, String>) -> Self {
        Self {
            name: peer
                .metadata
                .name
                .clone()
                .unwrap_or_else(|| peer.spec.cluster_name.clone()),
            uid: peer.metadata.uid.clone(),
            generation: peer.metadata.generation,
            created: peer.metadata.creation_timestamp.as_ref().map(|t| t.0),
            spec: peer.spec.clone(),
            ca,
            status: peer.status.clone(),
            sync: None,
        }
    }
}

/// The mesh apiserver's view of one peer (connection and mirror state).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerSyncReport {
    /// The KVStoreMesh holds a connection to the peer's etcd.
    pub connected: bool,
    /// Every canary of the peer has been seen.
    pub synced: bool,
    /// Local agents reading this peer's data, and all local agents, once
    /// agents report it.
    pub agents: Option<(u32, u32)>,
    /// Counts of mirrored records.
    pub nodes: u64,
    /// Endpoints mirrored.
    pub endpoints: u64,
    /// Services mirrored.
    pub services: u64,
    /// Identities mirrored.
    pub identities: u64,
    /// Records rejected for exceeding the peer's limits.
    pub over_limit: u64,
    /// Nodes whose agent does not reach the peer, each as `node: why`.
    pub nodes_not_connected: Vec<String>,
    /// The peer's tunnel port, when agents report it differs from theirs.
    pub tunnel_port_mismatch: Option<u16>,
    /// The peer's encryption (`wireguard` or `none`), when agents report
    /// it differs from theirs.
    pub encryption_mismatch: Option<String>,
    /// Last completed sync.
    pub last_sync: Option<Timestamp>,
    /// Last problem, in words.
    pub last_error: Option<String>,
}

impl From<&PeerStatusRecord> for PeerSyncReport {
    fn from(r: &PeerStatusRecord) -> Self {
        let count = |k: Kind| r.counts.get(&k).copied().unwrap_or_default();
        Self {
            connected: r.connected,
            synced: r.synced,
            agents: None,
            nodes_not_connected: Vec::new(),
            tunnel_port_mismatch: None,
            encryption_mismatch: None,
            nodes: count(Kind::Nodes),
            endpoints: count(Kind::Endpoints),
            services: count(Kind::Services),
            identities: count(Kind::Identities),
            over_limit: [
                knit_kvstore::validate::Rejection::OverLimit,
                knit_kvstore::validate::Rejection::OverByteBudget,
            ]
            .iter()
            .filter_map(|reason| r.rejected.get(reason.as_str()))
            .sum(),
            last_sync: r.last_sync_unix.and_then(|t| Timestamp::from_second(t).ok()),
            last_error: match (&r.last_error, r.withdrawn) {
                (Some(e), true) => Some(format!("{e}; its services are withdrawn (grace period exceeded)")),
                (e, _) => e.clone(),
            },
        }
    }
}

/// A peer the render builds configuration for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcceptedPeer {
    /// `metadata.name` of its ClusterMeshPeer.
    pub name: String,
    /// Its cluster name (keys of the peer-config Secret).
    pub cluster_name: String,
    /// Its cluster ID.
    pub cluster_id: u16,
    /// Its apiserver URLs.
    pub endpoints: Vec<String>,
    /// Its CA certificate.
    pub ca_pem: String,
    /// CIDRs it may announce.
    pub pod_cidrs: Vec<String>,
    /// Caps on what it may publish.
    pub limits: knit_kvstore::PeerLimits,
}

/// Splits peers into usable ones and problems (by `metadata.name`).
pub fn check_peers(
    config: &ClusterConfig,
    peers: &[PeerInput],
) -> (Vec<AcceptedPeer>, BTreeMap<String, String>) {
    let mut ordered: Vec<&PeerInput> = peers.iter().collect();
    ordered.sort_by_key(|p| knit_crds::Seniority::new(p.created, &p.name));
    let mut accepted: Vec<AcceptedPeer> = Vec::new();
    let mut problems = BTreeMap::new();
    for peer in ordered {
        match check_peer(config, peer, &accepted) {
            Ok(ok) => accepted.push(ok),
            Err(problem) => {
                problems.insert(peer.name.clone(), problem);
            }
        }
    }
    accepted.sort_by(|a, b| a.cluster_name.cmp(&b.cluster_name));
    (accepted, problems)
}

fn check_peer(
    config: &ClusterConfig,
    peer: &PeerInput,
    earlier: &[AcceptedPeer],
) -> Result<AcceptedPeer, String> {
    let spec = &peer.spec;
    if spec.cluster_name == config.cluster_name {
        return Err(format!(
            "spec.clusterName {:?} is this cluster's own name; a ClusterMeshPeer describes another cluster",
            spec.cluster_name
        ));
    }
    if spec.cluster_id == config.cluster_id {
        return Err(format!(
            "spec.clusterID {} is this cluster's own ID; every cluster in the mesh needs a different ID",
            spec.cluster_id
        ));
    }
    if let Some(other) = earlier.iter().find(|p| p.cluster_name == spec.cluster_name) {
        return Err(format!(
            "spec.clusterName {:?} is already used by ClusterMeshPeer {:?}; delete one of the two",
            spec.cluster_name, other.name
        ));
    }
    if let Some(other) = earlier.iter().find(|p| p.cluster_id == spec.cluster_id) {
        return Err(format!(
            "spec.clusterID {} is already used by ClusterMeshPeer {:?}; cluster IDs must be unique in the mesh",
            spec.cluster_id, other.name
        ));
    }
    check_pod_cidrs(config, &spec.pod_cidrs, earlier)?;
    let ca_pem = peer.ca.clone()?;
    let field = if spec.ca_bundle.is_some() {
        "spec.caBundle"
    } else {
        "spec.caSecretRef"
    };
    pki::check_pem_certificate(&ca_pem).map_err(|e| {
        format!("{field} does not hold a PEM certificate ({e}); paste the CA printed by `knitctl peer export` in the peer cluster")
    })?;
    check_ca_bundle(field, &ca_pem, earlier)?;
    Ok(AcceptedPeer {
        name: peer.name.clone(),
        cluster_name: spec.cluster_name.clone(),
        cluster_id: spec.cluster_id,
        endpoints: spec.endpoints.clone(),
        ca_pem,
        pod_cidrs: spec.pod_cidrs.clone(),
        limits: spec.limits.unwrap_or_default().into(),
    })
}

/// Every certificate of a peer's CA bundle is a readable certificate (one
/// that is not would be left out by every front, silently), and none is
/// the CA of a peer accepted before it (the older peer keeps it): a peer's
/// bundle may vouch only for that peer.
fn check_ca_bundle(field: &str, ca_pem: &str, earlier: &[AcceptedPeer]) -> Result<(), String> {
    let certificates = pki::bundle_certificates(ca_pem).map_err(|e| {
        format!("{field}: {e}; every certificate in the bundle must be one of the peer's CAs, as `knitctl peer export` prints them")
    })?;
    for other in earlier {
        let theirs = pki::bundle_certificates(&other.ca_pem).unwrap_or_default();
        if certificates.iter().any(|c| theirs.contains(c)) {
            return Err(format!(
                "{field} holds the CA of ClusterMeshPeer {:?} (cluster {:?}); a peer's bundle may hold only that peer's own CAs",
                other.name, other.cluster_name
            ));
        }
    }
    Ok(())
}

/// The shortest prefix a peer may declare: anything wider is a claim on
/// address space no cluster's pods need.
const MIN_PREFIX_V4: u8 = 8;
const MIN_PREFIX_V6: u8 = 32;

/// A peer's declared pod CIDRs: present, well-formed, no wider than
/// [`MIN_PREFIX_V4`] / [`MIN_PREFIX_V6`], and overlapping neither this
/// cluster's pod CIDRs nor those of a peer accepted before it (the older
/// peer keeps them). They bound everything the peer may announce, so a peer
/// can never route this cluster's, or another peer's, pods into its tunnel.
fn check_pod_cidrs(config: &ClusterConfig, cidrs: &[String], earlier: &[AcceptedPeer]) -> Result<(), String> {
    if cidrs.is_empty() {
        return Err(
            "spec.podCIDRs is required: the pod CIDRs of the peer cluster (its `knitctl peer export` \
                    writes them); without them it could announce any address"
                .into(),
        );
    }
    let overlaps = |a: &ipnet::IpNet, b: &ipnet::IpNet| a.contains(b) || b.contains(a);
    let net_of = |text: &str| {
        parse_cidr(text).and_then(|(addr, len)| ipnet::IpNet::new(addr, len).ok().map(|n| n.trunc()))
    };
    for (i, text) in cidrs.iter().enumerate() {
        let Some(net) = net_of(text) else {
            return Err(format!(
                "spec.podCIDRs[{i}] {text:?} is not a CIDR such as 10.2.0.0/16"
            ));
        };
        let min = if net.addr().is_ipv4() {
            MIN_PREFIX_V4
        } else {
            MIN_PREFIX_V6
        };
        if net.prefix_len() < min {
            return Err(format!(
                "spec.podCIDRs[{i}] {text} is wider than /{min}: declare the peer's pod CIDRs themselves"
            ));
        }
        if let Some(local) = config
            .pod_cidrs
            .iter()
            .filter_map(|c| net_of(c))
            .find(|l| overlaps(l, &net))
        {
            return Err(format!(
                "spec.podCIDRs[{i}] {text} overlaps this cluster's pod CIDR {local}: clusters of a mesh need \
                 disjoint pod CIDRs"
            ));
        }
        if let Some(services) = config
            .service_cidrs
            .iter()
            .filter_map(|c| net_of(c))
            .find(|s| overlaps(s, &net))
        {
            return Err(format!(
                "spec.podCIDRs[{i}] {text} overlaps this cluster's Service CIDR {services}: a peer's pods \
                 would shadow this cluster's ClusterIPs"
            ));
        }
        for other in earlier {
            if let Some(theirs) = other
                .pod_cidrs
                .iter()
                .filter_map(|c| net_of(c))
                .find(|o| overlaps(o, &net))
            {
                return Err(format!(
                    "spec.podCIDRs[{i}] {text} overlaps {theirs} of ClusterMeshPeer {:?}: clusters of a mesh need \
                     disjoint pod CIDRs",
                    other.name
                ));
            }
        }
    }
    Ok(())
}

/// Data of the peer-config Secret: per peer `<cluster>.yaml` (etcd client
/// config), `<cluster>.ca.crt`, `<cluster>.crt`, `<cluster>.key`.
pub fn peer_config_data(
    peers: &[AcceptedPeer],
    clients: &BTreeMap<String, CertKeyPair>,
) -> Result<BTreeMap<String, String>> {
    let mut data = BTreeMap::new();
    for peer in peers {
        let Some(client) = clients.get(&peer.cluster_name) else {
            continue;
        };
        let c = &peer.cluster_name;
        let config = EtcdClientConfig {
            endpoints: peer.endpoints.clone(),
            trusted_ca_file: format!("{c}.ca.crt").into(),
            cert_file: format!("{c}.crt").into(),
            key_file: format!("{c}.key").into(),
            peer: Some(PeerIdentity {
                cluster_name: c.clone(),
                cluster_id: peer.cluster_id,
                pod_cidrs: peer.pod_cidrs.clone(),
                limits: peer.limits,
            }),
        };
        data.insert(format!("{c}.yaml"), config.to_yaml()?);
        data.insert(format!("{c}.ca.crt"), peer.ca_pem.clone());
        data.insert(format!("{c}.crt"), client.cert_pem.clone());
        data.insert(format!("{c}.key"), client.key_pem.clone());
    }
    Ok(data)
}

/// The CA bundle etcd trusts for client certificates: our CA, then each
/// accepted peer's, each under a comment naming it.
pub fn trusted_client_cas(config: &ClusterConfig, own_ca: &str) -> String {
    // Only the local CA: etcd maps a certificate's CN to a user whatever CA
    // signed it, so a peer's CA must never be trusted by etcd itself. Peers
    // come in through the peer front (knit-apiserver), which binds each
    // peer's CA to that peer's read-only user.
    format!(
        "# local CA of this cluster ({})\n{}",
        config.cluster_name,
        ensure_newline(own_ca)
    )
}

/// The etcd users: the local writer, local readers and one read-only user
/// per accepted peer.
pub fn etcd_access(config: &ClusterConfig, peers: &[AcceptedPeer]) -> EtcdAccess {
    let mut users = vec![
        EtcdUser {
            name: names::ADMIN_USER.into(),
            access: Access::ReadWrite,
        },
        EtcdUser {
            name: names::LOCAL_USER.into(),
            access: Access::ReadAll,
        },
    ];
    let remote: BTreeSet<String> = peers
        .iter()
        .map(|p| names::remote_user(&p.cluster_name))
        .collect();
    users.extend(remote.into_iter().map(|name| EtcdUser {
        name,
        access: Access::ReadOwnCluster,
    }));
    users.sort_by(|a, b| a.name.cmp(&b.name));
    EtcdAccess {
        cluster_name: config.cluster_name.clone(),
        users,
    }
}

/// The status one ClusterMeshPeer should show.
pub fn peer_status(
    peer: &PeerInput,
    problem: Option<&str>,
    client_cert: Option<&CertKeyPair>,
    now: Timestamp,
) -> ClusterMeshPeerStatus {
    let old = peer.status.clone().unwrap_or_default();
    let expiry = client_cert
        .and_then(|c| pki::inspect(&c.cert_pem).ok())
        .map(|i| i.not_after);
    let certificate = certificate_condition(problem, expiry);
    let (connected, synced) = match problem {
        Some(_) => {
            let invalid = |t| Desired::new(t, "False", "InvalidPeer", "not configured; see CertificateReady");
            (invalid("Connected"), invalid("Synced"))
        }
        None => sync_conditions(peer.sync.as_ref()),
    };
    let parts = [&certificate, &connected, &synced];
    let ready = match parts.iter().find(|d| !d.is_true()) {
        None => Desired::new("Ready", "True", "Ready", "peer is connected and synced"),
        Some(d) => Desired::new("Ready", "False", &d.reason, format!("{}: {}", d.type_, d.message)),
    };
    let conditions = conditions::settle(
        &old.conditions,
        vec![certificate, connected, synced, ready],
        peer.generation,
        now,
    );
    let sync = peer.sync.as_ref();
    ClusterMeshPeerStatus {
        conditions,
        observed_generation: peer.generation,
        connected: sync.and_then(|s| s.agents).map(|(n, m)| format!("{n}/{m}")),
        nodes_not_connected: sync
            .map(|s| cap(&s.nodes_not_connected, MAX_NODES_LISTED))
            .unwrap_or_default(),
        remote_nodes: sync.map(|s| s.nodes),
        remote_endpoints: sync.map(|s| s.endpoints),
        remote_services: sync.map(|s| s.services),
        remote_identities: sync.map(|s| s.identities),
        last_sync_time: sync.and_then(|s| s.last_sync).map(Time),
        client_certificate_expiry: if problem.is_none() { expiry.map(Time) } else { None },
        records_over_limit: sync.map(|s| s.over_limit).filter(|n| *n > 0),
        peer_cas: match &peer.ca {
            Ok(bundle) if problem.is_none() => pki::fingerprints(bundle),
            _ => Vec::new(),
        },
        mesh_ca: None,
        last_error: problem
            .map(str::to_owned)
            .or_else(|| sync.and_then(|s| s.last_error.clone())),
    }
}

/// `CertificateReady`: the peer's problem, else whether the client
/// certificate for it is issued and until when.
fn certificate_condition(problem: Option<&str>, expiry: Option<Timestamp>) -> Desired {
    match (problem, expiry) {
        (Some(p), _) => Desired::new("CertificateReady", "False", "InvalidPeer", p),
        (None, Some(until)) => Desired::new(
            "CertificateReady",
            "True",
            "Issued",
            format!("client certificate for this peer is valid until {until}"),
        ),
        (None, None) => Desired::new(
            "CertificateReady",
            "False",
            "Pending",
            "client certificate not issued yet",
        ),
    }
}

/// `Connected` and `Synced` of a valid peer, from the mesh apiserver's
/// report on it (none yet: both unknown).
fn sync_conditions(sync: Option<&PeerSyncReport>) -> (Desired, Desired) {
    let Some(s) = sync else {
        let waiting = |t| {
            Desired::new(
                t,
                "Unknown",
                "AwaitingMeshApiserver",
                "the mesh apiserver has not reported on this peer yet",
            )
        };
        return (waiting("Connected"), waiting("Synced"));
    };
    let connected = if let Some(port) = s.tunnel_port_mismatch {
        Desired::new(
            "Connected",
            "False",
            "TunnelPortMismatch",
            format!(
                "the peer's tunnel is on UDP {port} and this cluster's agents use another port; set the same tunnelPort (ConfigMap knit-agent-config) in every cluster of the mesh"
            ),
        )
    } else if let Some(theirs) = &s.encryption_mismatch {
        let ours = if theirs == "none" { "wireguard" } else { "none" };
        Desired::new(
            "Connected",
            "False",
            "EncryptionMismatch",
            format!(
                "the peer's nodes' encryption is {theirs} and this cluster's agents' is {ours}: its pod traffic is dropped (encryptionStrict) or crosses in plaintext; set the same encryption (ConfigMap knit-agent-config) in every cluster of the mesh"
            ),
        )
    } else if s.connected {
        Desired::new(
            "Connected",
            "True",
            "Connected",
            "connected to the peer's mesh apiserver",
        )
    } else {
        let why = s.last_error.clone().unwrap_or_else(|| "no connection yet".into());
        Desired::new("Connected", "False", "Unreachable", why)
    };
    let synced = if s.synced {
        Desired::new(
            "Synced",
            "True",
            "Synced",
            "every kind of record has completed its initial sync",
        )
    } else {
        Desired::new(
            "Synced",
            "False",
            "Syncing",
            "waiting for the peer's sync canaries",
        )
    };
    (connected, synced)
}

/// Most nodes a ClusterMeshPeer's status names individually.
const MAX_NODES_LISTED: usize = 20;

fn cap(items: &[String], max: usize) -> Vec<String> {
    let mut out: Vec<String> = items.iter().take(max).cloned().collect();
    if items.len() > max {
        out.push(format!(
            "… and {} more (knitctl status --nodes)",
            items.len() - max
        ));
    }
    out
}

fn ensure_newline(pem: &str) -> String {
    if pem.ends_with('\n') {
        pem.to_owned()
    } else {
        format!("{pem}\n")
    }
}
