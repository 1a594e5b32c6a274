//! The Multi-Cluster Services API (KEP-1645, `multicluster.x-k8s.io`):
//! `ServiceExport` marks a Service for export, `ServiceImport` is what a
//! consuming cluster gets. Knit implements it the way Cilium does: the
//! operator creates, in every cluster where the namespace exists, a
//! `ServiceImport` and a *derived* Service (a selector-less ClusterIP
//! Service labelled with the clusterset service's name) whose ClusterIP is
//! the clusterset VIP; the apiserver exports that VIP to the agents, which
//! balance it over every exporting cluster's backends.

/// Label of a derived Service: the clusterset service it stands for.
pub const SERVICE_NAME_LABEL: &str = "multicluster.kubernetes.io/service-name";
/// API group of the MCS API.
pub const GROUP: &str = "multicluster.x-k8s.io";
/// DNS zone CoreDNS's `multicluster` plugin serves ServiceImports under.
pub const CLUSTERSET_ZONE: &str = "clusterset.local";

mod service_export;
mod service_import;

pub use service_export::{ServiceExport, ServiceExportSpec, ServiceExportStatus};
pub use service_import::{
    ServiceImport, ServiceImportPorts, ServiceImportSpec, ServiceImportStatus, ServiceImportStatusClusters,
    ServiceImportType,
};
