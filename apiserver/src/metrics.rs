//! Prometheus metrics of the apiserver (registered once, shared by tasks).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels naming a peer.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabel {
    /// Peer cluster.
    pub peer: String,
}

/// Labels naming a peer and a record kind or reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerDetail {
    /// Peer cluster.
    pub peer: String,
    /// Kind of record, or rejection reason.
    pub detail: String,
}

/// Labels naming why the peer front refused a connection.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// `handshake`, `unreadable`, `unknown_issuer` or `wrong_identity`.
    pub reason: String,
}

/// Every metric of the apiserver.
#[derive(Clone, Default)]
pub struct Metrics {
    /// Records exported per kind.
    pub exported: Family<PeerDetail, Gauge>,
    /// Export passes that failed to write.
    pub export_failures: Counter,
    /// 1 while the KVStoreMesh is connected to a peer.
    pub peer_connected: Family<PeerLabel, Gauge>,
    /// 1 once every canary of a peer has been mirrored.
    pub peer_synced: Family<PeerLabel, Gauge>,
    /// 1 while a peer's services are withdrawn (grace period exceeded).
    pub peer_withdrawn: Family<PeerLabel, Gauge>,
    /// Mirrored records per peer and kind.
    pub peer_records: Family<PeerDetail, Gauge>,
    /// Records rejected per peer and reason.
    pub peer_rejected: Family<PeerDetail, Counter>,
    /// gRPC calls at the peer front, by peer and outcome (`relayed`, `denied`).
    pub front_calls: Family<PeerDetail, Counter>,
    /// Connections the peer front refused, by reason.
    pub front_refused: Family<ReasonLabel, Counter>,
    /// Size of the local etcd's database file.
    pub etcd_db_bytes: Gauge,
    /// Bytes of that file in use.
    pub etcd_db_in_use_bytes: Gauge,
    /// 1 while the local etcd has a NOSPACE alarm raised.
    pub etcd_nospace: Gauge,
    /// Defragmentations of the local etcd.
    pub etcd_defrags: Counter,
    /// NOSPACE alarms recovered from (compacted, defragmented, disarmed).
    pub etcd_nospace_recoveries: Counter,
}

impl Metrics {
    /// Registers every metric under `knit_apiserver_`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("knit_apiserver");
        r.register(
            "exported_records",
            "Records this cluster publishes, by kind (detail)",
            self.exported.clone(),
        );
        r.register(
            "export_failures",
            "Export passes that failed to write to etcd",
            self.export_failures.clone(),
        );
        r.register(
            "peer_connected",
            "KVStoreMesh connected to the peer",
            self.peer_connected.clone(),
        );
        r.register(
            "peer_synced",
            "Every canary of the peer mirrored",
            self.peer_synced.clone(),
        );
        r.register(
            "peer_withdrawn",
            "Peer services withdrawn after the grace period",
            self.peer_withdrawn.clone(),
        );
        r.register(
            "peer_records",
            "Mirrored records by peer and kind (detail)",
            self.peer_records.clone(),
        );
        r.register(
            "peer_rejected",
            "Records rejected by peer and reason (detail)",
            self.peer_rejected.clone(),
        );
        r.register(
            "front_calls",
            "gRPC calls at the peer front by peer and outcome (detail: relayed, denied)",
            self.front_calls.clone(),
        );
        r.register(
            "front_refused",
            "Connections the peer front refused, by reason",
            self.front_refused.clone(),
        );
        r.register(
            "etcd_db_bytes",
            "Size of the local etcd's database file",
            self.etcd_db_bytes.clone(),
        );
        r.register(
            "etcd_db_in_use_bytes",
            "Bytes of the local etcd's database file in use",
            self.etcd_db_in_use_bytes.clone(),
        );
        r.register(
            "etcd_nospace",
            "1 while the local etcd has a NOSPACE alarm raised (writes refused)",
            self.etcd_nospace.clone(),
        );
        r.register(
            "etcd_defrags",
            "Defragmentations of the local etcd",
            self.etcd_defrags.clone(),
        );
        r.register(
            "etcd_nospace_recoveries",
            "NOSPACE alarms of the local etcd recovered from",
            self.etcd_nospace_recoveries.clone(),
        );
    }
}
