//! A node's WireGuard facts on the wire: its public key and port, the next
//! key during a rotation, and the tunnels it reports.
//!
//! An agent with encryption on publishes them in its status record; the
//! exporter copies them into the node's record, which peers mirror. A key
//! is held only as [`WireguardKey`], which cannot hold anything but 32
//! bytes in base64, so a record with a malformed key fails to parse and
//! is counted and skipped like any other malformed record.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

/// A WireGuard public key: 32 bytes, base64 (44 characters), as `wg`
/// prints it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct WireguardKey(String);

impl WireguardKey {
    /// The key, base64.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for WireguardKey {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        match STANDARD.decode(&text) {
            Ok(bytes) if bytes.len() == 32 => Ok(Self(text)),
            Ok(bytes) => Err(format!(
                "a WireGuard key is 32 bytes, this one is {}",
                bytes.len()
            )),
            Err(e) => Err(format!("a WireGuard key is base64: {e}")),
        }
    }
}

impl From<WireguardKey> for String {
    fn from(key: WireguardKey) -> Self {
        key.0
    }
}

impl std::fmt::Display for WireguardKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where and how a node takes WireGuard traffic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeWireguard {
    /// The node's public key.
    pub public_key: WireguardKey,
    /// The UDP port its WireGuard listens on (at its tunnel endpoint).
    pub port: u16,
    /// The key the node switches to, and when: every peer switches at the
    /// same moment, so a rotation costs no request (absent from writers
    /// before rotation, and outside a rotation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<NextWireguardKey>,
}

/// A node's next WireGuard key, announced before the node uses it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NextWireguardKey {
    /// The next public key.
    pub public_key: WireguardKey,
    /// When the node and its peers switch to it (Unix milliseconds).
    pub from_unix_ms: i64,
}

/// One WireGuard tunnel as the node at one end sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireguardTunnel {
    /// A handshake within WireGuard's session lifetime (180 s): traffic
    /// flows both ways.
    pub up: bool,
    /// When the last handshake completed (Unix seconds); none yet when
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handshake: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_32_byte_base64_key_is_a_key() {
        let good = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=";
        let parsed: NodeWireguard =
            serde_json::from_str(&format!(r#"{{"publicKey":"{good}","port":51871}}"#)).expect("good");
        assert_eq!(parsed.public_key.as_str(), good);
        assert_eq!(
            serde_json::to_string(&parsed).expect("json"),
            format!(r#"{{"publicKey":"{good}","port":51871}}"#)
        );
        for bad in ["c2hvcnQ=", "not base64 at all!", ""] {
            let err = serde_json::from_str::<NodeWireguard>(&format!(r#"{{"publicKey":"{bad}","port":1}}"#))
                .expect_err(bad);
            assert!(err.to_string().contains("WireGuard key"), "{err}");
        }
    }
}
