//! The CNI wire protocol as far as a chained plugin needs it: the `CNI_*`
//! environment, the network config on stdin (with the previous plugin's
//! result), the result and error JSON, and the well-known error codes.
//!
//! Every version a runtime may send since results got interfaces is
//! accepted: 0.3.0 and 0.3.1 (kindnet, flannel, Calico, older Cilium),
//! 0.4.0 (adds CHECK), 1.0.0 (drops `ips[].version`) and 1.1.0 (adds STATUS
//! and GC). Knit reads only what every one of them shares (`interfaces`,
//! `ips[].address`, `ips[].interface`) and passes the previous result
//! through in the config's own version, so it never converts a result.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The CNI version this plugin speaks natively.
pub const CNI_VERSION: &str = "1.1.0";
/// Every version this plugin accepts in a network config.
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// Versions that know `CHECK` (from 0.4.0).
pub const VERSIONS_WITH_CHECK: [&str; 3] = ["0.4.0", "1.0.0", "1.1.0"];
/// Versions that know `STATUS` and `GC`.
pub const VERSIONS_WITH_STATUS_AND_GC: [&str; 1] = ["1.1.0"];

/// Error codes reserved by the spec (and the ones Knit adds, ≥ 100).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// 1: incompatible CNI version.
    IncompatibleVersion = 1,
    /// 2: unsupported field in the network configuration.
    UnsupportedField = 2,
    /// 3: container unknown or does not exist.
    UnknownContainer = 3,
    /// 4: invalid necessary environment variables.
    InvalidEnvironment = 4,
    /// 5: I/O failure.
    Io = 5,
    /// 6: failed to decode content.
    Decode = 6,
    /// 7: invalid network config.
    InvalidConfig = 7,
    /// 11: try again later.
    TryAgainLater = 11,
    /// 50: the plugin is not available (STATUS).
    NotAvailable = 50,
    /// 100: Knit's record of the attachment disagrees with the runtime's
    /// (CHECK).
    AttachmentMismatch = 100,
}

/// A CNI error, printed as JSON on stdout with a non-zero exit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniError {
    /// The version of the config (or ours).
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// [`ErrorCode`] as a number.
    pub code: u32,
    /// What failed and what to do about it.
    pub msg: String,
    /// More detail (a cause chain).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    /// An error with `code` and a message naming the cause and the fix.
    pub fn new(code: ErrorCode, msg: impl Into<String>) -> Self {
        Self {
            cni_version: CNI_VERSION.into(),
            code: code as u32,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// Adds the detail.
    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// Answers in the config's version.
    pub fn in_version(mut self, version: &str) -> Self {
        self.cni_version = version.to_owned();
        self
    }
}

/// The `CNI_*` variables of one invocation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Invocation {
    /// `CNI_COMMAND`.
    pub command: String,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS`.
    pub netns: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS`, split into `KEY=VALUE` pairs.
    pub args: BTreeMap<String, String>,
}

impl Invocation {
    /// Reads the invocation from environment variables.
    pub fn from_env(env: &BTreeMap<String, String>) -> Self {
        let get = |k: &str| env.get(k).cloned().unwrap_or_default();
        let args = get("CNI_ARGS")
            .split(';')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Self {
            command: get("CNI_COMMAND"),
            container_id: get("CNI_CONTAINERID"),
            netns: get("CNI_NETNS"),
            ifname: get("CNI_IFNAME"),
            args,
        }
    }

    /// The Kubernetes pod namespace and name (`K8S_POD_NAMESPACE`,
    /// `K8S_POD_NAME` in `CNI_ARGS`), when the runtime is kubelet's.
    pub fn pod(&self) -> (Option<String>, Option<String>) {
        (
            self.args.get("K8S_POD_NAMESPACE").cloned(),
            self.args.get("K8S_POD_NAME").cloned(),
        )
    }
}

/// One attachment the runtime still has (GC's `cni.dev/valid-attachments`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentRef {
    /// Container ID.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// Interface name in the container.
    pub ifname: String,
}

/// The network configuration Knit receives on stdin.
#[derive(Clone, Debug, Deserialize)]
pub struct NetConf {
    /// Version the runtime speaks.
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    /// The network's name.
    #[serde(default)]
    pub name: String,
    /// `knit`.
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    /// Where attachments are recorded for the agent (default
    /// [`crate::attachment::DEFAULT_STATE_DIR`]).
    #[serde(rename = "stateDir", default)]
    pub state_dir: Option<std::path::PathBuf>,
    /// How long ADD waits for the agent to put the pod's datapath in place
    /// (default [`crate::plugin::DEFAULT_ATTACH_TIMEOUT_SECONDS`]).
    #[serde(rename = "attachTimeoutSeconds", default)]
    pub attach_timeout_seconds: Option<u64>,
    /// The previous plugin's result (ADD, CHECK; optional on DEL).
    #[serde(rename = "prevResult", default)]
    pub prev_result: Option<Value>,
    /// Attachments the runtime still has (GC).
    #[serde(rename = "cni.dev/valid-attachments", default)]
    pub valid_attachments: Option<Vec<AttachmentRef>>,
}

/// An interface of a result.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct ResultInterface {
    /// Name.
    pub name: String,
    /// MAC address.
    #[serde(default)]
    pub mac: Option<String>,
    /// Path of the network namespace it lives in; absent on the host.
    #[serde(default)]
    pub sandbox: Option<String>,
}

/// An address of a result.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct ResultIp {
    /// Address with prefix length (`10.1.1.5/24`).
    pub address: String,
    /// Gateway.
    #[serde(default)]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    #[serde(default)]
    pub interface: Option<usize>,
}

/// The parts of a result Knit reads (the rest passes through untouched).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct ResultView {
    /// Interfaces.
    #[serde(default)]
    pub interfaces: Vec<ResultInterface>,
    /// Addresses.
    #[serde(default)]
    pub ips: Vec<ResultIp>,
}

impl ResultIp {
    /// The address without its prefix length.
    pub fn ip(&self) -> Option<IpAddr> {
        self.address.split('/').next()?.parse().ok()
    }
}
