//! Which certificates to keep and which to issue.
//!
//! Input: the certificates already stored (Secret name → key → PEM), the
//! local config, the accepted peers and the time. Output: the full set of
//! certificates the cluster should have. A stored certificate is kept while
//! it is parsable, names what it should, is signed by the current CA and has
//! more than `renewWhenRemainingPercent` of its life left; otherwise a new one
//! is issued while the old one is still valid, so connections never drop.
//!
//! The mesh CA itself is never replaced automatically: peers pin it through
//! the `caBundle` committed in their git repositories. When it nears expiry
//! the plan carries a warning telling the operator's user what to do.

use std::collections::BTreeMap;

use jiff::Timestamp;

use crate::Result;
use crate::config::ClusterConfig;
use crate::names;
use crate::pki::{self, CertKeyPair, LeafSpec, Usage};

/// Stored Secrets of the operator: Secret name → data key → value.
pub type StoredSecrets = BTreeMap<String, BTreeMap<String, String>>;

/// The certificates the cluster should hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PkiPlan {
    /// The mesh CA.
    pub ca: CertKeyPair,
    /// The etcd server certificate.
    pub server: CertKeyPair,
    /// Client certificate of the local writer (`admin`).
    pub admin: CertKeyPair,
    /// Client certificate of local readers (`local`).
    pub local: CertKeyPair,
    /// Client certificate used to reach each peer (by peer cluster name).
    pub peer_clients: BTreeMap<String, CertKeyPair>,
    /// Per peer, the local CA's certificate for that peer's read-only etcd
    /// user, with which the peer front reaches etcd on its behalf.
    pub peer_access: BTreeMap<String, CertKeyPair>,
    /// What was issued this time, as sentences for Events.
    pub issued: Vec<String>,
    /// Problems a person must act on (e.g. the CA nearing expiry).
    pub warnings: Vec<String>,
}

/// Server certificate SANs: the Service DNS names, loopback (for the sidecar
/// apiserver) and every address peers are given
/// ([`ClusterConfig::exported_addresses`]).
pub fn server_sans(config: &ClusterConfig, load_balancer_ingress: &[String]) -> Vec<String> {
    let mut sans = config.service_dns_names();
    sans.extend(["localhost".to_owned(), "127.0.0.1".to_owned()]);
    for addr in config.exported_addresses(load_balancer_ingress) {
        if !sans.contains(&addr) {
            sans.push(addr);
        }
    }
    sans
}

/// Decides the certificate set for `peers` (peer cluster names) at `now`.
/// `load_balancer_ingress` is the mesh apiserver Service's LoadBalancer
/// ingress, named by the server certificate when no external address is
/// configured.
pub fn plan_pki(
    config: &ClusterConfig,
    stored: &StoredSecrets,
    peers: &[String],
    load_balancer_ingress: &[String],
    now: Timestamp,
) -> Result<PkiPlan> {
    let policy = &config.certificates;
    let mut issued = Vec::new();
    let mut warnings = Vec::new();

    let ca = match stored_pair(stored, names::CA_SECRET, "ca.crt", "ca.key") {
        Some(ca) if pki::inspect(&ca.cert_pem).is_ok() => {
            let info = pki::inspect(&ca.cert_pem)?;
            if info.due_for_renewal(now, policy.renew_when_remaining_percent) {
                warnings.push(format!(
                    "the mesh CA expires at {}; create a new CA (delete Secret {} in a maintenance window) and \
                     update caBundle in every peer's ClusterMeshPeer for this cluster",
                    info.not_after,
                    names::CA_SECRET
                ));
            }
            ca
        }
        _ => {
            issued.push(format!("created mesh CA for cluster {}", config.cluster_name));
            pki::new_ca(&config.cluster_name, now, policy.ca_validity_days)?
        }
    };

    let mut leaf = |secret: &str, cert_key: &str, key_key: &str, spec: LeafSpec| -> Result<CertKeyPair> {
        if let Some(existing) = stored_pair(stored, secret, cert_key, key_key)
            && still_good(&existing, &spec, &ca, now, policy.renew_when_remaining_percent)
        {
            return Ok(existing);
        }
        issued.push(format!("issued certificate {} ({secret})", spec.common_name));
        pki::issue(&ca, &spec, now, policy.leaf_validity_days)
    };

    let server = leaf(
        names::SERVER_CERT_SECRET,
        "tls.crt",
        "tls.key",
        LeafSpec {
            common_name: names::APISERVER.to_owned(),
            sans: server_sans(config, load_balancer_ingress),
            usage: Usage::Server,
        },
    )?;
    let admin = leaf(
        names::ADMIN_CERT_SECRET,
        "tls.crt",
        "tls.key",
        client(names::ADMIN_USER),
    )?;
    let local = leaf(
        names::LOCAL_CERT_SECRET,
        "tls.crt",
        "tls.key",
        client(names::LOCAL_USER),
    )?;
    let mut peer_clients = BTreeMap::new();
    for peer in peers {
        let spec = client(&names::remote_user(&config.cluster_name));
        let pair = leaf(
            names::PEER_CONFIGS_SECRET,
            &format!("{peer}.crt"),
            &format!("{peer}.key"),
            spec,
        )?;
        peer_clients.insert(peer.clone(), pair);
    }
    let mut peer_access = BTreeMap::new();
    for peer in peers {
        let pair = leaf(
            names::PEER_ACCESS_SECRET,
            &format!("{peer}.crt"),
            &format!("{peer}.key"),
            client(&names::remote_user(peer)),
        )?;
        peer_access.insert(peer.clone(), pair);
    }
    Ok(PkiPlan {
        ca,
        server,
        admin,
        local,
        peer_clients,
        peer_access,
        issued,
        warnings,
    })
}

fn client(user: &str) -> LeafSpec {
    LeafSpec {
        common_name: user.to_owned(),
        sans: Vec::new(),
        usage: Usage::Client,
    }
}

fn stored_pair(stored: &StoredSecrets, secret: &str, cert_key: &str, key_key: &str) -> Option<CertKeyPair> {
    let data = stored.get(secret)?;
    Some(CertKeyPair {
        cert_pem: data.get(cert_key)?.clone(),
        key_pem: data.get(key_key)?.clone(),
    })
}

fn still_good(
    existing: &CertKeyPair,
    spec: &LeafSpec,
    ca: &CertKeyPair,
    now: Timestamp,
    percent: u8,
) -> bool {
    let Ok(info) = pki::inspect(&existing.cert_pem) else {
        return false;
    };
    let mut want = spec.sans.clone();
    let mut have = info.sans.clone();
    want.sort();
    have.sort();
    info.common_name == spec.common_name
        && want == have
        && !info.due_for_renewal(now, percent)
        && now < info.not_after
        && pki::is_signed_by(&existing.cert_pem, &ca.cert_pem)
}
