//! Encryption on this node: the key, the WireGuard interface, the rule, and
//! the peers and routes kept in step with the mesh's node records.
//!
//! [`NodeEncryption::start`] loads (or makes) the key, starts the userspace
//! interface at the underlay MTU less WireGuard's 60 bytes, sets it up and
//! adds the rule (in strict mode, after an `unreachable default` in the
//! rule's table, so nothing unkeyed leaves in plaintext). [`NodeEncryption::sync`] takes the index's plan
//! ([`super::peers::plan`]), sends WireGuard each peer that changed and
//! puts the routes in step: a route only to a peer WireGuard has taken.
//!
//! Rotation ([`NodeEncryption::rotate_if_due`]): on demand (the file
//! `<key>.rotate` appears) or when the key is older than its lifetime, the
//! node makes its next key, keeps it in `<key>.next`, and announces it in
//! its record with a moment [`ROTATION_NOTICE`] ahead. At that moment the
//! node takes the key and every peer, which planned the node with its next
//! key from then on ([`super::peers::plan`]), replaces the peer: both ends
//! switch together instead of one waiting for the other to learn the key.
//! A node restarted during the notice takes its next key at once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use knit_kvstore::records::{NextWireguardKey, NodeWireguard, WireguardKey, WireguardTunnel};

use super::device::{UserspaceDevice, WireguardDevice};
use super::kernel::KernelDevice;
use super::keys::{NodeKey, PublicKeyText};
use super::peers::{WireguardPlan, plan};
use super::uapi::{self, WireguardPeer};
use crate::index::MeshIndex;
use crate::netdev::NetDevices;
use crate::{Error, Result};

/// WireGuard's overhead over IPv4: outer IP (20), UDP (8) and its own
/// header and tag (32).
pub const WIREGUARD_OVERHEAD: u32 = 60;

/// How far ahead a node announces its next key: long enough for the record
/// to reach every peer of the mesh.
pub const ROTATION_NOTICE: Duration = Duration::from_secs(10);

/// A peer that has made no handshake this long after this node's own key
/// switch is set again. Both ends switch at the same moment give or take
/// their clocks; a handshake that reached the other end a moment before it
/// switched is lost, and WireGuard would retry only after 5 s. A peer set
/// again starts a handshake with its next packet. The node whose key
/// switched checks first, the peers (whose entry for it switched) later
/// ([`PEER_SWITCH_RECHECK`]), so the two ends never reset one handshake
/// together.
pub const SWITCH_RECHECK: Duration = Duration::from_millis(300);

/// When a peer's key switched, its entry is checked this long after.
pub const PEER_SWITCH_RECHECK: Duration = Duration::from_millis(700);

/// A handshake this long before a switch counts as after it: userspace
/// devices stamp handshakes on their timer tick (boringtun: 250 ms).
const HANDSHAKE_STAMP_SLACK_MS: i64 = 1_000;

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
    /// The key is rotated when it is this old; `None`: only on demand.
    pub key_lifetime: Option<Duration>,
}

/// The node's running encryption.
#[derive(Debug)]
pub struct NodeEncryption {
    key: NodeKey,
    key_path: PathBuf,
    key_lifetime: Option<Duration>,
    /// The announced next key and when it takes over (Unix ms).
    next: Option<(NodeKey, i64)>,
    /// The earliest peer key switch still to come (Unix ms).
    next_switch: Option<i64>,
    /// Peers whose key switched (theirs or this node's), and when each is
    /// to be checked for a handshake since (Unix ms).
    switched: BTreeMap<PublicKeyText, i64>,
    port: u16,
    interface: String,
    device: WireguardDevice,
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
        let next_path = with_suffix(&settings.key_path, "next");
        if next_path.exists() {
            std::fs::rename(&next_path, &settings.key_path).map_err(|e| Error::WireguardKey {
                action: format!("take the announced next key {}", next_path.display()),
                source: Some(e),
            })?;
            tracing::info!("a rotation was under way: the announced next WireGuard key is the key now");
        }
        let key = NodeKey::load_or_create(&settings.key_path)?;
        let device = match kernel_device(net, &settings.interface).await {
            Ok(device) => WireguardDevice::Kernel(device),
            Err(e) => {
                tracing::info!(error = %knit_telemetry::error_chain(&e), "no WireGuard in the kernel: userspace WireGuard");
                WireguardDevice::Userspace(UserspaceDevice::start(&settings.interface, 1)?)
            }
        };
        device.set(&uapi::set_interface(&key, settings.port))?;
        // A kernel interface outlives its agent, peers included: what the
        // last agent left is compared with the plan like any other change
        // (a peer still wanted is updated in place, its session kept).
        let left: BTreeMap<PublicKeyText, WireguardPeer> = device
            .state()?
            .peers
            .into_iter()
            .map(|p| {
                let stale = WireguardPeer {
                    public_key: p.public_key.clone(),
                    endpoint: SocketAddr::from(([0, 0, 0, 0], 0)),
                    allowed_ips: Vec::new(),
                };
                (p.public_key, stale)
            })
            .collect();
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
            path = device.path(),
            "WireGuard up"
        );
        Ok(Self {
            key,
            key_path: settings.key_path.clone(),
            key_lifetime: settings.key_lifetime,
            next: None,
            next_switch: None,
            switched: BTreeMap::new(),
            port: settings.port,
            interface: settings.interface.clone(),
            device,
            ifindex,
            peers: left,
            nodes: BTreeMap::new(),
        })
    }

    /// What the node's record says of it: its public key and port.
    pub fn report(&self) -> NodeWireguard {
        NodeWireguard {
            public_key: WireguardKey::try_from(self.key.public_key()).expect("a key made here is a key"),
            port: self.port,
            next: self.next.as_ref().map(|(key, at)| NextWireguardKey {
                public_key: WireguardKey::try_from(key.public_key()).expect("a key made here is a key"),
                from_unix_ms: *at,
            }),
        }
    }

    /// At `now_ms` (Unix ms): takes the announced next key once its moment
    /// has come, or starts a rotation when one is asked for or the key has
    /// outlived its lifetime. True when [`Self::report`] changed.
    pub fn rotate_if_due(&mut self, now_ms: i64) -> Result<bool> {
        let next_path = with_suffix(&self.key_path, "next");
        if let Some((key, at)) = &self.next {
            if *at > now_ms {
                return Ok(false);
            }
            self.device.set(&uapi::set_private_key(key))?;
            std::fs::rename(&next_path, &self.key_path).map_err(|e| Error::WireguardKey {
                action: format!("keep the new key in {}", self.key_path.display()),
                source: Some(e),
            })?;
            let (key, _) = self.next.take().expect("checked above");
            tracing::info!(public_key = %key.public_key(), "WireGuard key rotated");
            let check_at = now_ms + SWITCH_RECHECK.as_millis() as i64;
            for peer in self.peers.keys() {
                self.switched.insert(peer.clone(), check_at);
            }
            self.key = key;
            return Ok(true);
        }
        let asked = with_suffix(&self.key_path, "rotate");
        let on_demand = asked.exists();
        let aged = self.key_lifetime.is_some_and(|lifetime| {
            std::fs::metadata(&self.key_path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|at| at.elapsed().ok())
                .is_some_and(|age| age >= lifetime)
        });
        if !on_demand && !aged {
            return Ok(false);
        }
        let key = NodeKey::generate()?;
        key.write(&next_path)?;
        if on_demand {
            let _ = std::fs::remove_file(&asked);
        }
        let at = now_ms + ROTATION_NOTICE.as_millis() as i64;
        tracing::info!(next_public_key = %key.public_key(), from_unix_ms = at, on_demand, "WireGuard key rotation announced");
        self.next = Some((key, at));
        Ok(true)
    }

    /// Whether a peer's announced key switch has come (its plan is due).
    pub fn peer_switch_due(&self, now_ms: i64) -> bool {
        self.next_switch.is_some_and(|at| at <= now_ms)
    }

    /// The next moment (Unix ms) a rotation needs the agent: this node's
    /// switch, a peer's, or a switched peer's recheck.
    pub fn deadline(&self) -> Option<i64> {
        [
            self.next.as_ref().map(|(_, at)| *at),
            self.next_switch,
            self.switched.values().min().copied(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Sets again every switched peer whose check is due and that has made
    /// no handshake since its switch.
    pub fn recheck_switched(&mut self, now_ms: i64) -> Result<()> {
        let due: Vec<(PublicKeyText, i64)> = self
            .switched
            .iter()
            .filter(|(_, at)| **at <= now_ms)
            .map(|(k, at)| (k.clone(), *at))
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        let state = self.device.state()?;
        for (key, check_at) in due {
            self.switched.remove(&key);
            let since = check_at - PEER_SWITCH_RECHECK.as_millis() as i64 - HANDSHAKE_STAMP_SLACK_MS;
            let handshake = state
                .peers
                .iter()
                .find(|p| p.public_key == key)
                .and_then(|p| p.last_handshake)
                .map(|h| super::status::handshake_unix_ms(h, now_ms));
            if handshake.is_some_and(|h| h >= since) {
                continue;
            }
            let Some(peer) = self.peers.get(&key) else {
                continue;
            };
            tracing::info!(public_key = %key, "no handshake since the key switch: the peer is set again");
            for transaction in [uapi::remove_peer(&key), uapi::set_peer(peer)]
                .into_iter()
                .flatten()
            {
                self.device.set(&transaction)?;
            }
        }
        Ok(())
    }

    /// Puts peers and routes in step with `index` for node `own`; the plan
    /// applied (its conflicts are the caller's to report).
    pub async fn sync(
        &mut self,
        index: &MeshIndex,
        own: &str,
        net: &NetDevices,
        now_ms: i64,
    ) -> Result<WireguardPlan> {
        let wanted = plan(index, own, &self.key.public_key(), now_ms);
        let key_of: BTreeMap<&String, &PublicKeyText> = self.nodes.iter().map(|(k, n)| (n, k)).collect();
        for (key, node) in &wanted.nodes {
            if key_of.get(node).is_some_and(|old| *old != key) {
                self.switched
                    .insert(key.clone(), now_ms + PEER_SWITCH_RECHECK.as_millis() as i64);
            }
        }
        for transaction in uapi::changes(&self.peers, &wanted.peers) {
            self.device.set(&transaction)?;
        }
        self.peers = wanted.peers.clone();
        self.nodes = wanted.nodes.clone();
        self.next_switch = wanted.next_switch;
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

/// `path` with `.suffix` added to its file name.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".");
    name.push(suffix);
    PathBuf::from(name)
}

/// The kernel's WireGuard interface `name`, made or kept, and answering.
async fn kernel_device(net: &NetDevices, name: &str) -> Result<KernelDevice> {
    net.ensure_kernel_wireguard(name).await?;
    let device = KernelDevice::open(name)?;
    device.state()?;
    Ok(device)
}
