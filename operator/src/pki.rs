//! Certificates of the mesh: the CA, the apiserver's server certificate and
//! client certificates, issued with rcgen and inspected with x509-parser.
//!
//! Everything here is a function of its inputs plus fresh key material; no
//! I/O. [`crate::render::pki_plan`] decides which certificates to keep and
//! which to issue.

use jiff::{SignedDuration, Timestamp};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose,
};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::{Error, Result};

/// A certificate and its private key, both PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertKeyPair {
    /// PEM of the certificate.
    pub cert_pem: String,
    /// PEM (PKCS#8) of the private key.
    pub key_pem: String,
}

/// What a certificate is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    /// TLS server (the etcd endpoint).
    Server,
    /// TLS client (etcd users).
    Client,
}

/// The subject and names a leaf certificate must carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeafSpec {
    /// Common name; for clients it is the etcd user name.
    pub common_name: String,
    /// DNS names and IP addresses (servers only).
    pub sans: Vec<String>,
    /// Server or client.
    pub usage: Usage,
}

/// The parts of a certificate the operator decides on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// Subject common name.
    pub common_name: String,
    /// DNS names and IPs of the subjectAltName extension, as strings.
    pub sans: Vec<String>,
    /// Start of validity.
    pub not_before: Timestamp,
    /// End of validity.
    pub not_after: Timestamp,
}

impl CertInfo {
    /// Whether less than `percent` of the lifetime remains at `now`.
    pub fn due_for_renewal(&self, now: Timestamp, percent: u8) -> bool {
        let lifetime = self.not_after.duration_since(self.not_before);
        let remaining = self.not_after.duration_since(now);
        remaining <= lifetime * i32::from(percent) / 100
    }
}

/// Creates a self-signed mesh CA for `cluster`, valid from `now`.
pub fn new_ca(cluster: &str, now: Timestamp, validity_days: u32) -> Result<CertKeyPair> {
    new_named_ca(&format!("knit mesh CA {cluster}"), now, validity_days)
}

/// Creates a self-signed CA with common name `common_name`, valid from `now`.
pub fn new_named_ca(common_name: &str, now: Timestamp, validity_days: u32) -> Result<CertKeyPair> {
    let key = KeyPair::generate().map_err(Error::IssueCertificate)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(Error::IssueCertificate)?;
    params.distinguished_name = name(common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, now, validity_days)?;
    let cert = params.self_signed(&key).map_err(Error::IssueCertificate)?;
    Ok(CertKeyPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Issues a leaf certificate signed by `ca`, valid from `now`.
pub fn issue(ca: &CertKeyPair, spec: &LeafSpec, now: Timestamp, validity_days: u32) -> Result<CertKeyPair> {
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(Error::LoadCa)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).map_err(Error::LoadCa)?;
    let key = KeyPair::generate().map_err(Error::IssueCertificate)?;
    let mut params = CertificateParams::new(spec.sans.clone()).map_err(Error::IssueCertificate)?;
    params.distinguished_name = name(&spec.common_name);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![match spec.usage {
        Usage::Server => ExtendedKeyUsagePurpose::ServerAuth,
        Usage::Client => ExtendedKeyUsagePurpose::ClientAuth,
    }];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, now, validity_days)?;
    let cert = params.signed_by(&key, &issuer).map_err(Error::IssueCertificate)?;
    Ok(CertKeyPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Reads the subject, names and validity of the first certificate in `pem`.
pub fn inspect(pem: &str) -> Result<CertInfo> {
    let der = first_der(pem)?;
    let (_, cert) = X509Certificate::from_der(&der).map_err(|e| Error::ParseCertificate(e.to_string()))?;
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_owned();
    let mut sans = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for name in &ext.value.general_names {
            match name {
                GeneralName::DNSName(d) => sans.push((*d).to_owned()),
                GeneralName::IPAddress(bytes) => {
                    if let Ok(v4) = <[u8; 4]>::try_from(*bytes) {
                        sans.push(std::net::Ipv4Addr::from(v4).to_string());
                    } else if let Ok(v6) = <[u8; 16]>::try_from(*bytes) {
                        sans.push(std::net::Ipv6Addr::from(v6).to_string());
                    }
                }
                _ => {}
            }
        }
    }
    let ts = |t: x509_parser::time::ASN1Time| {
        Timestamp::from_second(t.timestamp()).map_err(|e| Error::ParseCertificate(e.to_string()))
    };
    Ok(CertInfo {
        common_name,
        sans,
        not_before: ts(cert.validity().not_before)?,
        not_after: ts(cert.validity().not_after)?,
    })
}

/// Whether the first certificate of `leaf_pem` carries a valid signature of
/// the first certificate of `ca_pem`.
pub fn is_signed_by(leaf_pem: &str, ca_pem: &str) -> bool {
    let (Ok(leaf_der), Ok(ca_der)) = (first_der(leaf_pem), first_der(ca_pem)) else {
        return false;
    };
    let (Ok((_, leaf)), Ok((_, ca))) = (
        X509Certificate::from_der(&leaf_der),
        X509Certificate::from_der(&ca_der),
    ) else {
        return false;
    };
    leaf.verify_signature(Some(ca.public_key())).is_ok()
}

/// Short SHA-256 fingerprints (`sha256:` + 16 hex digits of the DER) of
/// every certificate in a PEM bundle, in bundle order. What a person
/// compares across clusters to see which CAs a peer trusts.
pub fn fingerprints(bundle: &str) -> Vec<String> {
    x509_parser::pem::Pem::iter_from_buffer(bundle.as_bytes())
        .map_while(|p| p.ok())
        .filter(|p| p.label == "CERTIFICATE")
        .map(|p| {
            let digest = ring::digest::digest(&ring::digest::SHA256, &p.contents);
            let hex: String = digest.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect();
            format!("sha256:{hex}")
        })
        .collect()
}

/// Checks that `pem` holds at least one parsable certificate.
pub fn check_pem_certificate(pem: &str) -> Result<CertInfo> {
    inspect(pem)
}

/// Every certificate of a PEM bundle (DER), or which block is not one.
pub fn bundle_certificates(pem: &str) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for (i, block) in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()).enumerate() {
        let n = i + 1;
        let block =
            block.map_err(|e| Error::ParseCertificate(format!("PEM block {n} is unreadable: {e}")))?;
        if block.label != "CERTIFICATE" {
            return Err(Error::ParseCertificate(format!(
                "PEM block {n} is {:?}, not CERTIFICATE",
                block.label
            )));
        }
        x509_parser::parse_x509_certificate(&block.contents)
            .map_err(|e| Error::ParseCertificate(format!("certificate {n} is not X.509: {e}")))?;
        out.push(block.contents);
    }
    if out.is_empty() {
        return Err(Error::ParseCertificate("no certificate".into()));
    }
    Ok(out)
}

fn first_der(pem: &str) -> Result<Vec<u8>> {
    let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.trim_start().as_bytes())
        .map_err(|e| Error::ParseCertificate(format!("not PEM: {e}")))?;
    if parsed.label != "CERTIFICATE" {
        return Err(Error::ParseCertificate(format!(
            "PEM block is {:?}, not CERTIFICATE",
            parsed.label
        )));
    }
    Ok(parsed.contents)
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "knit");
    dn.push(DnType::CommonName, common_name);
    dn
}

fn set_validity(params: &mut CertificateParams, now: Timestamp, days: u32) -> Result<()> {
    let to_odt = |t: Timestamp| {
        time::OffsetDateTime::from_unix_timestamp(t.as_second())
            .map_err(|e| Error::ParseCertificate(format!("time out of range: {e}")))
    };
    // Backdate a little so peers with a slightly slow clock accept the certificate.
    params.not_before = to_odt(now - SignedDuration::from_mins(5))?;
    params.not_after = to_odt(now + SignedDuration::from_hours(24 * i64::from(days)))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        "2026-01-01T00:00:00Z".parse().unwrap()
    }

    #[test]
    fn issues_server_and_client_certificates_chained_to_the_ca() {
        let ca = new_ca("a", now(), 3650).unwrap();
        let other_ca = new_ca("b", now(), 3650).unwrap();
        let server = issue(
            &ca,
            &LeafSpec {
                common_name: "knit-apiserver".into(),
                sans: vec!["knit-apiserver.knit-system.svc".into(), "192.0.2.10".into()],
                usage: Usage::Server,
            },
            now(),
            365,
        )
        .unwrap();
        let info = inspect(&server.cert_pem).unwrap();
        assert_eq!(info.common_name, "knit-apiserver");
        assert_eq!(info.sans, vec!["knit-apiserver.knit-system.svc", "192.0.2.10"]);
        assert_eq!(
            info.not_after.duration_since(now()),
            SignedDuration::from_hours(24 * 365)
        );
        assert!(is_signed_by(&server.cert_pem, &ca.cert_pem));
        assert!(!is_signed_by(&server.cert_pem, &other_ca.cert_pem));
        assert!(server.key_pem.contains("PRIVATE KEY"));
    }

    #[test]
    fn renewal_is_due_once_the_remaining_fraction_is_reached() {
        let info = CertInfo {
            common_name: String::new(),
            sans: vec![],
            not_before: now(),
            not_after: now() + SignedDuration::from_hours(24 * 300),
        };
        assert!(!info.due_for_renewal(now() + SignedDuration::from_hours(24 * 199), 33));
        assert!(info.due_for_renewal(now() + SignedDuration::from_hours(24 * 201), 33));
    }

    #[test]
    fn a_bundle_has_one_fingerprint_per_certificate() {
        let (a, b) = (new_ca("a", now(), 10).unwrap(), new_ca("b", now(), 10).unwrap());
        let one = fingerprints(&a.cert_pem);
        assert_eq!(one.len(), 1);
        assert!(one[0].starts_with("sha256:") && one[0].len() == 23);
        let both = fingerprints(&format!("# a\n{}{}", a.cert_pem, b.cert_pem));
        assert_eq!(both, [one[0].clone(), fingerprints(&b.cert_pem)[0].clone()]);
        assert!(fingerprints("not pem").is_empty());
    }

    #[test]
    fn garbage_is_reported_not_panicked_on() {
        assert!(inspect("hello").is_err());
        assert!(inspect("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").is_err());
        assert!(!is_signed_by("x", "y"));
    }
}
