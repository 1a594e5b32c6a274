//! The etcd client configuration file.
//!
//! One file per etcd a component talks to. File paths inside it are relative
//! to the directory holding the file, so a Secret mounted anywhere (or a
//! directory written by `knitctl render`) works unchanged. A config for a
//! peer also carries what the peer is allowed to publish ([`PeerIdentity`]),
//! which the KVStoreMesh enforces on every record it mirrors.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// How to reach one etcd over mTLS.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct EtcdClientConfig {
    /// `https://host:port` URLs.
    pub endpoints: Vec<String>,
    /// CA bundle that signs the server's certificate.
    pub trusted_ca_file: PathBuf,
    /// Our client certificate.
    pub cert_file: PathBuf,
    /// Key of our client certificate.
    pub key_file: PathBuf,
    /// Set when the etcd belongs to a peer cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<PeerIdentity>,
}

/// What a peer cluster may publish.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct PeerIdentity {
    /// The peer's cluster name; records naming another cluster are rejected.
    pub cluster_name: String,
    /// The peer's cluster ID; identities outside its range are rejected.
    pub cluster_id: u16,
    /// Pod CIDRs the peer may announce; empty means its own config decides.
    #[serde(default)]
    pub pod_cidrs: Vec<String>,
    /// Caps on the records it may publish, per kind.
    #[serde(default)]
    pub limits: crate::PeerLimits,
}

impl EtcdClientConfig {
    /// Parses a config and checks it is usable.
    pub fn from_yaml(text: &str) -> Result<Self> {
        let config: Self = serde_saphyr::from_str(text).map_err(Error::ParseClientConfig)?;
        config.validate()?;
        Ok(config)
    }

    /// Serialises the config.
    pub fn to_yaml(&self) -> Result<String> {
        serde_saphyr::to_string(self).map_err(Error::WriteClientConfig)
    }

    /// The same config with relative file paths resolved against `dir`.
    pub fn resolved_in(&self, dir: &Path) -> Self {
        let resolve = |p: &PathBuf| if p.is_absolute() { p.clone() } else { dir.join(p) };
        Self {
            trusted_ca_file: resolve(&self.trusted_ca_file),
            cert_file: resolve(&self.cert_file),
            key_file: resolve(&self.key_file),
            ..self.clone()
        }
    }

    fn validate(&self) -> Result<()> {
        if self.endpoints.is_empty() {
            return Err(Error::InvalidClientConfig {
                field: "endpoints",
                problem: "is empty; list at least one https:// URL of the etcd".into(),
            });
        }
        if let Some(bad) = self.endpoints.iter().find(|e| !e.starts_with("https://")) {
            return Err(Error::InvalidClientConfig {
                field: "endpoints",
                problem: format!("{bad:?} is not an https:// URL; Knit only talks to etcd over mTLS"),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: &str = "\
endpoints:
- https://mesh.b.example.com:2379
trusted-ca-file: b.ca.crt
cert-file: b.crt
key-file: b.key
peer:
  cluster-name: b
  cluster-id: 2
  pod-cidrs:
  - 10.2.0.0/16
";

    #[test]
    fn round_trips_and_resolves_relative_paths() {
        let config = EtcdClientConfig::from_yaml(PEER).unwrap();
        assert_eq!(config.peer.as_ref().unwrap().cluster_id, 2);
        assert_eq!(
            EtcdClientConfig::from_yaml(&config.to_yaml().unwrap()).unwrap(),
            config
        );
        let resolved = config.resolved_in(Path::new("/etc/knit/peers"));
        assert_eq!(resolved.cert_file, PathBuf::from("/etc/knit/peers/b.crt"));
    }

    #[test]
    fn rejects_plaintext_endpoints_and_unknown_fields_by_name() {
        let err = EtcdClientConfig::from_yaml(&PEER.replace("https://", "http://")).unwrap_err();
        assert!(
            err.to_string().contains("endpoints") && err.to_string().contains("https://"),
            "{err}"
        );
        let err = EtcdClientConfig::from_yaml(&format!("{PEER}cert: x\n")).unwrap_err();
        assert!(err.to_string().contains("cert"), "{err}");
    }
}
