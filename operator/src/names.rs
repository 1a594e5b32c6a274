//! Names of every object the operator creates, and the labels it puts on
//! them. One place, so the closing list in the docs and the code agree.

use std::collections::BTreeMap;

/// Deployment of the mesh apiserver (knit-apiserver + etcd), and its
/// ClusterIP Service for local agents (port `etcd`).
pub const APISERVER: &str = "knit-apiserver";
/// The agents' ConfigMap (`config/agent/agent-config.yaml`): `tunnelPort`,
/// `tcAttach`, `routingMode`, … The apiserver reads `tunnelPort` and
/// `routingMode` from it to announce them.
pub const AGENT_CONFIG: &str = "knit-agent-config";
/// Service peers reach (port `peers`, the peer front): the one exposed as
/// NodePort or LoadBalancer. etcd itself is never exposed outside.
pub const PEERS_SERVICE: &str = "knit-apiserver-peers";
/// Headless Service whose name resolves to every ready mesh apiserver
/// replica: agents write their status into each replica's etcd.
pub const REPLICAS_SERVICE: &str = "knit-apiserver-replicas";
/// Secret: the mesh CA, which signs what peers see (`ca.crt`, `ca.key`;
/// `next.crt`, `next.key` while it is being rolled).
pub const CA_SECRET: &str = "knit-ca";
/// Secret: the local CA, which signs what only etcd and its local clients
/// see (`ca.crt`, `ca.key`).
pub const LOCAL_CA_SECRET: &str = "knit-local-ca";
/// ConfigMap: the mesh CAs peers must trust (`ca.crt`: the current one, and
/// the next one during a roll), public, so that `knitctl peer export` needs
/// no access to a CA's private key.
pub const PUBLIC_CA_CONFIGMAP: &str = "knit-mesh-ca";
/// Secret: the etcd server certificate of the mesh apiserver (local CA).
pub const SERVER_CERT_SECRET: &str = "knit-apiserver-server-cert";
/// Secret: the peer front's server certificate (mesh CA), what peers verify.
pub const FRONT_CERT_SECRET: &str = "knit-peer-front-cert";
/// Secret: read-write client certificate of the local apiserver (etcd user `admin`).
pub const ADMIN_CERT_SECRET: &str = "knit-admin-client-cert";
/// Secret: read-only client certificate of local agents (etcd user `local`).
pub const LOCAL_CERT_SECRET: &str = "knit-local-client-cert";
/// Secret: per peer, the certificate the local CA issued for its read-only
/// etcd user (`<peer>.crt`, `<peer>.key`, CN `remote-<peer>`), used by the
/// peer front to reach etcd on the peer's behalf, and the local CA (`ca.crt`).
pub const PEER_ACCESS_SECRET: &str = "knit-peer-access";
/// Secret: one etcd client config per peer, read by the KVStoreMesh.
pub const PEER_CONFIGS_SECRET: &str = "knit-peer-configs";
/// ConfigMap: the CA etcd trusts for client certificates (the local CA).
pub const TRUSTED_CAS_CONFIGMAP: &str = "knit-trusted-client-cas";
/// ConfigMap: etcd users and roles the apiserver bootstraps.
pub const ETCD_USERS_CONFIGMAP: &str = "knit-etcd-users";
/// Field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "knit-operator";
/// etcd user of the local writer.
pub const ADMIN_USER: &str = "admin";
/// etcd user of local readers (agents).
pub const LOCAL_USER: &str = "local";
/// Label selecting everything the operator manages (used to prune leftovers).
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Pod template annotation that rolls the apiserver when etcd's trust changes.
pub const TRUST_HASH_ANNOTATION: &str = "knit.dev/trust-hash";
/// Port of the apiserver's metrics and health endpoints.
pub const APISERVER_METRICS_PORT: i32 = 9962;

/// etcd user a peer cluster authenticates as: its client certificate's CN.
pub use knit_kvstore::keys::remote_user;

/// Labels on every object the operator creates.
pub fn managed_labels(component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY_LABEL.to_owned(), FIELD_MANAGER.to_owned()),
        ("app.kubernetes.io/part-of".to_owned(), "knit".to_owned()),
        ("app.kubernetes.io/component".to_owned(), component.to_owned()),
    ])
}

/// Pod labels of the mesh apiserver (also its Service selector).
pub fn apiserver_selector() -> BTreeMap<String, String> {
    BTreeMap::from([("app.kubernetes.io/name".to_owned(), APISERVER.to_owned())])
}
