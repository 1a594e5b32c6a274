//! Which certificates to keep and which to issue.
//!
//! Input: the certificates already stored (Secret name → key → PEM), the
//! local config, the accepted peers and the time. Output: the full set of
//! certificates the cluster should have. A stored certificate is kept while
//! it is parsable, names what it should, is signed by the CA that should
//! sign it and has more than `renewWhenRemainingPercent` of its life left;
//! otherwise a new one is issued while the old one is still valid, so
//! connections never drop.
//!
//! Two CAs, so that peers and etcd never depend on the same one:
//! - the **local CA** signs what stays in the cluster: etcd's server
//!   certificate and the clients of etcd (`admin`, `local`, the peer
//!   front's per-peer users). Only etcd trusts it, and etcd reads its
//!   trusted CAs only at start, so it is never rolled by the steps below.
//! - the **mesh CA** signs what peers see: the peer front's server
//!   certificate and the client certificates presented to peers. Peers pin
//!   it through the `caBundle` in their git repositories, so it is rolled
//!   in steps (`certificates.meshCARotation`): `Prepare` issues the next CA
//!   and publishes both, `Switch` issues from the next CA, `Complete` drops
//!   the old one. Any step may be taken back: removing the setting before
//!   `Complete` drops the next CA and issues from the current one again.
//!
//! An installation from before the split has only the mesh CA; it is
//! copied as the local CA, so upgrading re-issues nothing.

use std::collections::BTreeMap;

use jiff::Timestamp;

use crate::Result;
use crate::config::{CaRotationStep, ClusterConfig};
use crate::names;
use crate::pki::{self, CertKeyPair, LeafSpec, Usage};

/// Stored Secrets of the operator: Secret name → data key → value.
pub type StoredSecrets = BTreeMap<String, BTreeMap<String, String>>;

/// The certificates the cluster should hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PkiPlan {
    /// The mesh CA (what peers trust).
    pub ca: CertKeyPair,
    /// The next mesh CA, while a roll is under way.
    pub next_ca: Option<CertKeyPair>,
    /// Whether certificates peers see are issued by `next_ca` (step `Switch`).
    pub issuing_from_next: bool,
    /// The local CA (what etcd trusts).
    pub local_ca: CertKeyPair,
    /// The etcd server certificate (local CA).
    pub server: CertKeyPair,
    /// The peer front's server certificate (mesh CA).
    pub front: CertKeyPair,
    /// Client certificate of the local writer (`admin`).
    pub admin: CertKeyPair,
    /// Client certificate of local readers (`local`).
    pub local: CertKeyPair,
    /// Client certificate used to reach each peer (by peer cluster name).
    pub peer_clients: BTreeMap<String, CertKeyPair>,
    /// Per peer, the local CA's certificate for that peer's read-only etcd
    /// user, with which the peer front reaches etcd on its behalf.
    pub peer_access: BTreeMap<String, CertKeyPair>,
    /// Where the mesh CA roll stands, for every ClusterMeshPeer's status.
    pub rotation: knit_crds::MeshCaStatus,
    /// What was issued this time, as sentences for Events.
    pub issued: Vec<String>,
    /// Problems a person must act on (e.g. the CA nearing expiry).
    pub warnings: Vec<String>,
}

impl PkiPlan {
    /// The mesh CAs peers must trust, as one PEM bundle: the current CA, and
    /// the next one while a roll is under way. `knitctl peer export`
    /// publishes exactly this.
    pub fn published_cas(&self) -> String {
        let mut bundle = ensure_newline(&self.ca.cert_pem);
        if let Some(next) = &self.next_ca {
            bundle.push_str(&ensure_newline(&next.cert_pem));
        }
        bundle
    }

    /// The CA issuing what peers see.
    fn issuing(&self) -> &CertKeyPair {
        match (&self.next_ca, self.issuing_from_next) {
            (Some(next), true) => next,
            _ => &self.ca,
        }
    }
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
/// ingress, named by the server certificates when no external address is
/// configured.
pub fn plan_pki(
    config: &ClusterConfig,
    stored: &StoredSecrets,
    peers: &[String],
    load_balancer_ingress: &[String],
    now: Timestamp,
) -> Result<PkiPlan> {
    let mut notes = Notes::default();
    let (local_ca, ca) = stored_or_new_cas(config, stored, now, &mut notes)?;
    let step = config.certificates.mesh_ca_rotation;
    let roll = roll_mesh_ca(config, stored, ca, now, &mut notes)?;
    let mut plan = PkiPlan {
        issuing_from_next: step == Some(CaRotationStep::Switch) && roll.next_ca.is_some(),
        ca: roll.ca,
        next_ca: roll.next_ca,
        local_ca: local_ca.clone(),
        server: local_ca.clone(),
        front: local_ca.clone(),
        admin: local_ca.clone(),
        local: local_ca,
        peer_clients: BTreeMap::new(),
        peer_access: BTreeMap::new(),
        rotation: knit_crds::MeshCaStatus::default(),
        issued: Vec::new(),
        warnings: Vec::new(),
    };
    let leaves = Leaves { config, stored, now };
    leaves.issue_all(&mut plan, peers, load_balancer_ingress, &mut notes)?;
    plan.rotation = rotation_status(&plan, step, roll.problem);
    plan.issued = notes.issued;
    plan.warnings = notes.warnings;
    Ok(plan)
}

/// What a plan says to people: what it issued, and what they must act on.
#[derive(Default)]
struct Notes {
    issued: Vec<String>,
    warnings: Vec<String>,
}

/// The local CA and the mesh CA as stored, or new ones where none is.
fn stored_or_new_cas(
    config: &ClusterConfig,
    stored: &StoredSecrets,
    now: Timestamp,
    notes: &mut Notes,
) -> Result<(CertKeyPair, CertKeyPair)> {
    let validity = config.certificates.ca_validity_days;
    let stored_ca = usable_ca(stored, names::CA_SECRET, "ca.crt", "ca.key");
    let local_ca = match usable_ca(stored, names::LOCAL_CA_SECRET, "ca.crt", "ca.key") {
        Some(ca) => ca,
        None => match &stored_ca {
            // An installation from before the split: keep every local certificate.
            Some(mesh) => mesh.clone(),
            None => {
                notes
                    .issued
                    .push(format!("created local CA for cluster {}", config.cluster_name));
                pki::new_named_ca(&format!("knit local CA {}", config.cluster_name), now, validity)?
            }
        },
    };
    let ca = match stored_ca {
        Some(ca) => ca,
        None => {
            notes
                .issued
                .push(format!("created mesh CA for cluster {}", config.cluster_name));
            pki::new_ca(&config.cluster_name, now, validity)?
        }
    };
    Ok((local_ca, ca))
}

/// The mesh CAs after this step of the roll.
struct MeshCaRoll {
    ca: CertKeyPair,
    next_ca: Option<CertKeyPair>,
    /// Why the step cannot be taken, if it cannot.
    problem: Option<String>,
}

/// Takes `certificates.meshCARotation`'s step from the stored CAs, and
/// warns when the mesh CA nears expiry.
fn roll_mesh_ca(
    config: &ClusterConfig,
    stored: &StoredSecrets,
    mut ca: CertKeyPair,
    now: Timestamp,
    notes: &mut Notes,
) -> Result<MeshCaRoll> {
    let policy = &config.certificates;
    let mut next_ca = usable_ca(stored, names::CA_SECRET, "next.crt", "next.key");
    let mut problem = None;
    match policy.mesh_ca_rotation {
        None => {
            if next_ca.take().is_some() {
                notes
                    .issued
                    .push("dropped the next mesh CA: certificates.meshCARotation is unset".into());
            }
        }
        Some(CaRotationStep::Prepare) => {
            if next_ca.is_none() {
                notes.issued.push(format!(
                    "issued the next mesh CA for cluster {}; publish it with `knitctl peer export`",
                    config.cluster_name
                ));
                next_ca = Some(pki::new_ca(&config.cluster_name, now, policy.ca_validity_days)?);
            }
        }
        Some(CaRotationStep::Switch) => {
            if next_ca.is_none() {
                let text = "certificates.meshCARotation is Switch but there is no next mesh CA: set it to Prepare \
                            first and apply the export in every peer";
                notes.warnings.push(text.to_owned());
                problem = Some(text.to_owned());
            }
        }
        Some(CaRotationStep::Complete) => {
            if let Some(next) = next_ca.take() {
                notes
                    .issued
                    .push("the next mesh CA is now the mesh CA; the old one is no longer published".into());
                ca = next;
            }
        }
    }
    if let Ok(info) = pki::inspect(&ca.cert_pem)
        && info.due_for_renewal(now, policy.renew_when_remaining_percent)
    {
        notes.warnings.push(format!(
            "the mesh CA expires at {}; roll it with certificates.meshCARotation (Prepare, Switch, Complete)",
            info.not_after
        ));
    }
    Ok(MeshCaRoll { ca, next_ca, problem })
}

/// Keeps or issues leaf certificates against what is stored.
struct Leaves<'a> {
    config: &'a ClusterConfig,
    stored: &'a StoredSecrets,
    now: Timestamp,
}

impl Leaves<'_> {
    /// The stored certificate at `secret`/`cert_key` if it is still good
    /// for `spec` under `signer`, else a new one.
    fn leaf(
        &self,
        signer: &CertKeyPair,
        (secret, cert_key, key_key): (&str, &str, &str),
        spec: LeafSpec,
        notes: &mut Notes,
    ) -> Result<CertKeyPair> {
        let policy = &self.config.certificates;
        if let Some(existing) = stored_pair(self.stored, secret, cert_key, key_key)
            && still_good(
                &existing,
                &spec,
                signer,
                self.now,
                policy.renew_when_remaining_percent,
            )
        {
            return Ok(existing);
        }
        notes
            .issued
            .push(format!("issued certificate {} ({secret})", spec.common_name));
        pki::issue(signer, &spec, self.now, policy.leaf_validity_days)
    }

    /// Every leaf of `plan`: etcd's server and clients from the local CA,
    /// the front's server and the peer clients from the issuing mesh CA.
    fn issue_all(
        &self,
        plan: &mut PkiPlan,
        peers: &[String],
        load_balancer_ingress: &[String],
        notes: &mut Notes,
    ) -> Result<()> {
        let local_ca = plan.local_ca.clone();
        let issuing = plan.issuing().clone();
        let sans = server_sans(self.config, load_balancer_ingress);
        let server_spec = || LeafSpec {
            common_name: names::APISERVER.to_owned(),
            sans: sans.clone(),
            usage: Usage::Server,
        };
        let tls = |secret| (secret, "tls.crt", "tls.key");
        plan.server = self.leaf(&local_ca, tls(names::SERVER_CERT_SECRET), server_spec(), notes)?;
        plan.front = self.leaf(&issuing, tls(names::FRONT_CERT_SECRET), server_spec(), notes)?;
        plan.admin = self.leaf(
            &local_ca,
            tls(names::ADMIN_CERT_SECRET),
            client(names::ADMIN_USER),
            notes,
        )?;
        plan.local = self.leaf(
            &local_ca,
            tls(names::LOCAL_CERT_SECRET),
            client(names::LOCAL_USER),
            notes,
        )?;
        for peer in peers {
            let (cert, key) = (format!("{peer}.crt"), format!("{peer}.key"));
            let own_user = client(&names::remote_user(&self.config.cluster_name));
            let pair = self.leaf(
                &issuing,
                (names::PEER_CONFIGS_SECRET, &cert, &key),
                own_user,
                notes,
            )?;
            plan.peer_clients.insert(peer.clone(), pair);
            let peer_user = client(&names::remote_user(peer));
            let access = self.leaf(
                &local_ca,
                (names::PEER_ACCESS_SECRET, &cert, &key),
                peer_user,
                notes,
            )?;
            plan.peer_access.insert(peer.clone(), access);
        }
        Ok(())
    }
}

/// What every ClusterMeshPeer shows of this cluster's mesh CA roll.
fn rotation_status(
    plan: &PkiPlan,
    step: Option<CaRotationStep>,
    problem: Option<String>,
) -> knit_crds::MeshCaStatus {
    let next_step = match (step, &problem) {
        (_, Some(problem)) => problem.clone(),
        (None, _) => "no roll under way; to roll the mesh CA set certificates.meshCARotation: Prepare".into(),
        (Some(CaRotationStep::Prepare), _) => {
            "the next CA is published: run `knitctl peer export`, apply it in \
             every peer, check that each peer's status.peerCAs lists the next CA, then set Switch"
                .into()
        }
        (Some(CaRotationStep::Switch), _) => "certificates for peers are issued by the next CA; once every \
             peer connects again, set Complete"
            .into(),
        (Some(CaRotationStep::Complete), _) => {
            "the roll is complete; peers may apply `knitctl peer export` again \
             to stop trusting the old CA"
                .into()
        }
    };
    knit_crds::MeshCaStatus {
        rotation: step.map(|s| s.to_string()),
        published: pki::fingerprints(&plan.published_cas()),
        issuing: pki::fingerprints(&plan.issuing().cert_pem).into_iter().next(),
        next_step,
    }
}

fn usable_ca(stored: &StoredSecrets, secret: &str, cert_key: &str, key_key: &str) -> Option<CertKeyPair> {
    stored_pair(stored, secret, cert_key, key_key).filter(|ca| pki::inspect(&ca.cert_pem).is_ok())
}

fn ensure_newline(pem: &str) -> String {
    if pem.ends_with('\n') {
        pem.to_owned()
    } else {
        format!("{pem}\n")
    }
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
