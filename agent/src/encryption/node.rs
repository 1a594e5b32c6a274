//! Encryption on this node: the key, the WireGuard interface, the rule, and
//! the peers and routes kept in step with the mesh's node records.
//!
//! [`NodeEncryption::start`] loads (or makes) the key, starts the userspace
//! interface at the underlay MTU less WireGuard's 60 bytes, sets it up and
//! adds the rule (in strict mode, after an `unreachable default` in the
//! rule's table, so nothing unkeyed leaves in plaintext). [`NodeEncryption::sync`] takes the index's plan
//! ([`super::peers::plan`]), sends WireGuard each peer that changed and
//! puts the routes in step: a route only to a peer WireGuard has taken.

use std::collections::BTreeMap;
use std::path::PathBuf;

use knit_kvstore::records::{NodeWireguard, WireguardKey, WireguardTunnel};

use super::device::UserspaceDevice;
use super::keys::{NodeKey, PublicKeyText};
use super::peers::{WireguardPlan, plan};
use super::uapi::{self, WireguardPeer};
use crate::index::MeshIndex;
use crate::netdev::NetDevices;
use crate::{Error, Result};

/// WireGuard's overhead over IPv4: outer IP (20), UDP (8) and its own
/// header and tag (32).
pub const WIREGUARD_OVERHEAD: u32 = 60;

/// How the node encrypts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncryptionSettings {
    /// The private key's file (made at first start, mode 0600).
    pub key_path: PathBuf,
    /// UDP port WireGuard listens on.
    pub port: u16,
    /// The WireGuard interface's name.
    pub interface: String,
    /// Pod traffic to a node without a key is dropped, never sent in
    /// plaintext (also while the agent is down).
    pub strict: bool,
}

/// The node's running encryption.
#[derive(Debug)]
pub struct NodeEncryption {
    key: NodeKey,
    port: u16,
    interface: String,
    device: UserspaceDevice,
    ifindex: u32,
    peers: BTreeMap<PublicKeyText, WireguardPeer>,
    nodes: BTreeMap<PublicKeyText, String>,
}

impl NodeEncryption {
    /// Starts the interface and routes the tunnel port (`tunnel_port`) into
    /// it; `underlay_mtu` is the node's underlay MTU.
    pub async fn start(
        settings: &EncryptionSettings,
        net: &NetDevices,
        tunnel_port: u16,
        underlay_mtu: u32,
    ) -> Result<Self> {
        let key = NodeKey::load_or_create(&settings.key_path)?;
        let device = UserspaceDevice::start(&settings.interface, 1)?;
        device.set(&uapi::set_interface(&key, settings.port))?;
        let ifindex = net
            .set_up(&settings.interface, underlay_mtu - WIREGUARD_OVERHEAD)
            .await?;
        // Decrypted packets come in on the interface from addresses the
        // main table routes elsewhere: a strict reverse-path check would
        // drop them.
        let rp_filter = format!("/proc/sys/net/ipv4/conf/{}/rp_filter", settings.interface);
        std::fs::write(&rp_filter, "0").map_err(|e| Error::Wireguard {
            action: format!("turn off the reverse-path filter of {}", settings.interface),
            source: Box::new(e),
        })?;
        if settings.strict {
            net.ensure_strict_default().await?;
        }
        net.ensure_tunnel_rule(tunnel_port).await?;
        tracing::info!(
            interface = %settings.interface,
            port = settings.port,
            strict = settings.strict,
            public_key = %key.public_key(),
            "WireGuard up (userspace)"
        );
        Ok(Self {
            key,
            port: settings.port,
            interface: settings.interface.clone(),
            device,
            ifindex,
            peers: BTreeMap::new(),
            nodes: BTreeMap::new(),
        })
    }

    /// What the node's record says of it: its public key and port.
    pub fn report(&self) -> NodeWireguard {
        NodeWireguard {
            public_key: WireguardKey::try_from(self.key.public_key()).expect("a key made here is a key"),
            port: self.port,
        }
    }

    /// Puts peers and routes in step with `index` for node `own`; the plan
    /// applied (its conflicts are the caller's to report).
    pub async fn sync(&mut self, index: &MeshIndex, own: &str, net: &NetDevices) -> Result<WireguardPlan> {
        let wanted = plan(index, own, &self.key.public_key());
        for transaction in uapi::changes(&self.peers, &wanted.peers) {
            self.device.set(&transaction)?;
        }
        self.peers = wanted.peers.clone();
        self.nodes = wanted.nodes.clone();
        let routed = net.wireguard_routes().await?;
        for dst in wanted.routes.difference(&routed) {
            net.replace_wireguard_route(*dst, self.ifindex).await?;
        }
        for dst in routed.difference(&wanted.routes) {
            net.delete_wireguard_route(*dst, self.ifindex).await?;
        }
        Ok(wanted)
    }

    /// The WireGuard interface's name.
    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// The interface's state (handshakes, bytes per peer).
    pub fn state(&self) -> Result<uapi::DeviceState> {
        self.device.state()
    }

    /// Per peer node, the tunnel up or down and its last handshake, at
    /// `now` (Unix seconds); `previous` is the last report.
    pub fn tunnels(
        &self,
        now: i64,
        previous: &BTreeMap<String, WireguardTunnel>,
    ) -> Result<BTreeMap<String, WireguardTunnel>> {
        Ok(super::status::tunnels(&self.nodes, &self.state()?, now, previous))
    }
}
