//! Whom the peer front trusts, and as whom: the CA bundles of the
//! configured peers ([`PeerTrust`]) and the decision on a client
//! certificate ([`authorize`]), values in, a peer name or a [`Refusal`]
//! out, no I/O but reading the peer-config directory.
//!
//! One peer's bundle never decides for another: a certificate unusable as
//! a trust anchor is left out of its own peer's bundle (that peer's other
//! CAs and every other peer stay trusted), and a client certificate is
//! checked against the bundle of the one peer its CN names, so a peer that
//! lists another peer's CA in its own bundle can neither lock that peer out
//! nor decide who it is.

use std::collections::BTreeMap;
use std::path::Path;

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The CA certificates of every configured peer, by peer cluster name: all
/// of a peer's bundle that can serve as a trust anchor, so a peer rolling
/// its CA can present either.
#[derive(Clone, Debug, Default)]
pub struct PeerTrust {
    cas: BTreeMap<String, Vec<Vec<u8>>>,
    /// Peers whose bundle held certificates that cannot be trust anchors,
    /// and how many.
    unusable: BTreeMap<String, usize>,
}

impl PeerTrust {
    /// Reads `<peer>.ca.crt` for every `<peer>.yaml` with a peer identity.
    pub fn load(dir: &Path) -> Self {
        let mut bundles = Vec::new();
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "yaml") {
                continue;
            }
            let Ok(config) = knit_kvstore::etcd::load_client_config(&path) else {
                continue;
            };
            let Some(peer) = config.peer else { continue };
            if let Ok(pem) = std::fs::read(&config.trusted_ca_file) {
                bundles.push((peer.cluster_name, pem));
            }
        }
        Self::from_bundles(bundles)
    }

    /// A trust set from `(peer, PEM bundle)` pairs, each certificate that
    /// cannot be a trust anchor left out (and counted) on its own.
    pub fn from_bundles(bundles: impl IntoIterator<Item = (String, Vec<u8>)>) -> Self {
        let mut trust = Self::default();
        for (peer, pem) in bundles {
            let all = all_der(&pem);
            let usable: Vec<Vec<u8>> = all.iter().filter(|der| is_anchor(der)).cloned().collect();
            let left_out = pem_blocks(&pem).saturating_sub(usable.len());
            if left_out > 0 {
                trust.unusable.insert(peer.clone(), left_out);
            }
            if !usable.is_empty() {
                trust.cas.insert(peer, usable);
            }
        }
        trust
    }

    /// A trust set from `(peer, CA DER)` pairs; a peer may appear more
    /// than once (current and next CA).
    pub fn from_cas(cas: impl IntoIterator<Item = (String, Vec<u8>)>) -> Self {
        let mut out: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
        for (peer, der) in cas {
            out.entry(peer).or_default().push(der);
        }
        Self {
            cas: out,
            unusable: BTreeMap::new(),
        }
    }

    /// Whether no peer is configured.
    pub fn is_empty(&self) -> bool {
        self.cas.is_empty()
    }

    /// The peers whose bundle held certificates that cannot be trust
    /// anchors, and how many each.
    pub fn unusable(&self) -> &BTreeMap<String, usize> {
        &self.unusable
    }

    /// Logs the peers whose bundles hold unusable certificates, when that
    /// changed since `before`.
    pub fn warn_unusable(&self, before: Option<&PeerTrust>) {
        if before.is_some_and(|b| b.unusable == self.unusable) {
            return;
        }
        for (peer, n) in &self.unusable {
            tracing::warn!(
                peer = %peer,
                certificates = n,
                "the peer's CA bundle holds certificates that cannot be trust anchors; left out (fix the ClusterMeshPeer's caBundle)"
            );
        }
    }

    /// Every usable peer CA, for the TLS handshake (who a certificate may
    /// act as is decided after it, by [`authorize`]).
    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        for ca in self.cas.values().flatten() {
            if let Err(e) = roots.add(CertificateDer::from(ca.clone())) {
                tracing::warn!(error = %e, "a peer CA is not usable; left out");
            }
        }
        roots
    }
}

fn is_anchor(der: &[u8]) -> bool {
    let der = CertificateDer::from(der);
    webpki::anchor_from_trusted_cert(&der).is_ok() && RootCertStore::empty().add(der.clone()).is_ok()
}

/// How many certificate blocks a PEM bundle has, readable or not.
fn pem_blocks(pem: &[u8]) -> usize {
    String::from_utf8_lossy(pem)
        .matches("-----BEGIN CERTIFICATE-----")
        .count()
}

fn all_der(pem: &[u8]) -> Vec<Vec<u8>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem)
        .filter_map(|c| c.ok().map(|c| c.to_vec()))
        .collect()
}

/// Why a client certificate was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not a certificate we can read.
    Unreadable,
    /// Not signed (validly, for client use, now) by any configured peer's CA.
    UnknownIssuer,
    /// Signed by peer `issuer`'s CA, but names someone else.
    WrongIdentity {
        /// The peer whose CA signed it.
        issuer: String,
        /// The CN it carries.
        common_name: String,
    },
}

impl Refusal {
    /// The metric label of this refusal.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Unreadable => "unreadable",
            Self::UnknownIssuer => "unknown_issuer",
            Self::WrongIdentity { .. } => "wrong_identity",
        }
    }
}

/// The peer a client certificate (DER) may act as: the peer its CN names
/// (`remote-<peer>`), if that peer's own bundle vouches for it.
pub fn authorize(trust: &PeerTrust, leaf: &[u8]) -> std::result::Result<String, Refusal> {
    // webpki parses strictly (DER) and verifies the chain, validity and
    // usage; x509-parser, lenient, only reads the CN of what webpki took.
    let der = CertificateDer::from(leaf.to_vec());
    let end_entity = webpki::EndEntityCert::try_from(&der).map_err(|_| Refusal::Unreadable)?;
    let (_, cert) = X509Certificate::from_der(leaf).map_err(|_| Refusal::Unreadable)?;
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_owned();
    let algorithms = rustls::crypto::ring::default_provider()
        .signature_verification_algorithms
        .all;
    let vouches = |bundle: &[Vec<u8>]| {
        let ders: Vec<CertificateDer<'_>> = bundle
            .iter()
            .map(|ca| CertificateDer::from(ca.as_slice()))
            .collect();
        let anchors: Vec<_> = ders
            .iter()
            .filter_map(|ca| webpki::anchor_from_trusted_cert(ca).ok())
            .collect();
        !anchors.is_empty()
            && end_entity
                .verify_for_usage(
                    algorithms,
                    &anchors,
                    &[],
                    rustls::pki_types::UnixTime::now(),
                    webpki::KeyUsage::client_auth(),
                    None,
                    None,
                )
                .is_ok()
    };
    let named = trust
        .cas
        .iter()
        .find(|(peer, _)| knit_kvstore::keys::remote_user(peer) == common_name);
    if let Some((peer, bundle)) = named
        && vouches(bundle)
    {
        return Ok(peer.clone());
    }
    match trust.cas.iter().find(|(_, bundle)| vouches(bundle)) {
        Some((issuer, _)) => Err(Refusal::WrongIdentity {
            issuer: issuer.clone(),
            common_name,
        }),
        None => Err(Refusal::UnknownIssuer),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Ca {
        pem: String,
        key_pem: String,
        der: Vec<u8>,
    }

    fn ca(name: &str) -> Ca {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} CA"));
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    fn leaf(ca: &Ca, cn: &str) -> Vec<u8> {
        let ca_key = rcgen::KeyPair::from_pem(&ca.key_pem).unwrap();
        let issuer = rcgen::Issuer::from_ca_cert_pem(&ca.pem, ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        params.signed_by(&key, &issuer).unwrap().der().to_vec()
    }

    #[test]
    fn a_peer_ca_can_act_as_that_peer_and_nothing_else() {
        let (b, c, stranger) = (ca("b"), ca("c"), ca("z"));
        let trust = PeerTrust::from_cas([("b".to_owned(), b.der.clone()), ("c".to_owned(), c.der.clone())]);
        assert_eq!(authorize(&trust, &leaf(&b, "remote-b")), Ok("b".to_owned()));
        // A peer rolling its CA: either of its CAs acts as that peer.
        let b_next = ca("b-next");
        let rolling = PeerTrust::from_cas([
            ("b".to_owned(), b.der.clone()),
            ("b".to_owned(), b_next.der.clone()),
        ]);
        assert_eq!(
            authorize(&rolling, &leaf(&b_next, "remote-b")),
            Ok("b".to_owned())
        );
        assert_eq!(authorize(&rolling, &leaf(&b, "remote-b")), Ok("b".to_owned()));
        assert_eq!(authorize(&trust, &leaf(&c, "remote-c")), Ok("c".to_owned()));
        for cn in ["admin", "local", "remote-c", "remote-b "] {
            assert!(
                matches!(
                    authorize(&trust, &leaf(&b, cn)),
                    Err(Refusal::WrongIdentity { .. })
                ),
                "b's CA minting {cn:?}"
            );
        }
        assert_eq!(
            authorize(&trust, &leaf(&stranger, "remote-b")),
            Err(Refusal::UnknownIssuer)
        );
        assert_eq!(authorize(&trust, b"not a certificate"), Err(Refusal::Unreadable));
    }

    proptest::proptest! {
        /// What the front reads from a peer before deciding: the client
        /// certificate (after rustls' handshake). Arbitrary bytes and
        /// corrupted genuine certificates never panic and never pass.
        #[test]
        fn arbitrary_certificates_are_refused_without_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048),
            flips in proptest::collection::vec((proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>()), 1..8),
        ) {
            let b = ca("b");
            let trust = PeerTrust::from_cas([("b".to_owned(), b.der.clone())]);
            proptest::prop_assert!(authorize(&trust, &bytes).is_err());
            let mut genuine = leaf(&b, "remote-b");
            for (at, xor) in flips {
                let i = at % genuine.len();
                genuine[i] ^= xor | 1;
            }
            // A corrupted certificate may still parse, but its signature no
            // longer verifies: never accepted.
            proptest::prop_assert!(authorize(&trust, &genuine).is_err());
        }
    }

    const GARBAGE_CERT: &str = "-----BEGIN CERTIFICATE-----\nMAMCAQA=\n-----END CERTIFICATE-----\n";

    #[test]
    fn a_bad_certificate_in_one_bundle_shuts_out_nobody_else() {
        let (b, c) = (ca("b"), ca("c"));
        let trust = PeerTrust::from_bundles([
            ("b".to_owned(), format!("{GARBAGE_CERT}{}", b.pem).into_bytes()),
            ("c".to_owned(), c.pem.clone().into_bytes()),
            ("d".to_owned(), GARBAGE_CERT.as_bytes().to_vec()),
        ]);
        // Before, one such certificate failed the whole TLS config: the
        // front served no peer at all.
        assert_eq!(trust.roots().len(), 2);
        assert_eq!(authorize(&trust, &leaf(&b, "remote-b")), Ok("b".to_owned()));
        assert_eq!(authorize(&trust, &leaf(&c, "remote-c")), Ok("c".to_owned()));
        assert_eq!(
            trust.unusable(),
            &BTreeMap::from([("b".to_owned(), 1), ("d".to_owned(), 1)])
        );
        assert!(
            !trust.cas.contains_key("d"),
            "a peer with no usable CA is not trusted"
        );
    }

    #[test]
    fn a_peer_listing_another_peers_ca_cannot_lock_it_out() {
        let (b, c) = (ca("b"), ca("c"));
        // b's bundle lists c's CA too.
        let trust = PeerTrust::from_cas([
            ("b".to_owned(), b.der.clone()),
            ("b".to_owned(), c.der.clone()),
            ("c".to_owned(), c.der.clone()),
        ]);
        // Before, c's certificate verified under both bundles and was
        // refused as a wrong identity: c was locked out.
        assert_eq!(authorize(&trust, &leaf(&c, "remote-c")), Ok("c".to_owned()));
        assert_eq!(authorize(&trust, &leaf(&b, "remote-b")), Ok("b".to_owned()));
        assert!(matches!(
            authorize(&trust, &leaf(&b, "remote-c")),
            Err(Refusal::WrongIdentity { .. })
        ));
    }
}
