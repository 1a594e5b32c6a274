//! Who may do what in a cluster's etcd: the users and roles the mesh
//! apiserver bootstraps, in the file the operator writes
//! (`knit-etcd-users` ConfigMap, `users.yaml`).

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The etcd users of one cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EtcdAccess {
    /// The cluster whose etcd this is.
    pub cluster_name: String,
    /// Users, sorted by name.
    pub users: Vec<EtcdUser>,
}

/// One etcd user; the name is the CN of its client certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EtcdUser {
    /// User name (certificate CN).
    pub name: String,
    /// What it may do.
    pub access: Access,
}

/// Permission sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Access {
    /// Read and write everything under `knit/v1/` (the local apiserver).
    ReadWrite,
    /// Read everything under `knit/v1/`, own cluster and mirrored peers (agents).
    ReadAll,
    /// Read only this cluster's own prefix and the heartbeat (peer clusters).
    ReadOwnCluster,
}

impl EtcdAccess {
    /// Parses the file.
    pub fn from_yaml(text: &str) -> Result<Self> {
        serde_saphyr::from_str(text).map_err(Error::ParseAccess)
    }

    /// Serialises the file.
    pub fn to_yaml(&self) -> Result<String> {
        serde_saphyr::to_string(self).map_err(Error::WriteClientConfig)
    }
}
