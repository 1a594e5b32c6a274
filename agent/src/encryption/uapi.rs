//! WireGuard's configuration protocol (the cross-platform "UAPI" that
//! wireguard-go, boringtun and `wg` speak): a `set=1` or `get=1` line,
//! `key=value` lines, a blank line to end, and an `errno=N` answer.
//! Rendered and parsed here without I/O; [`super::device`] carries the text.
//!
//! Each peer change is its own `set=1` transaction: boringtun carries a
//! peer's `remove` and `replace_allowed_ips` flags over into the next peer
//! of the same transaction, so batching peers could remove the wrong one.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ipnet::IpNet;

use super::keys::{NodeKey, PublicKeyText, public_key_hex};

/// A peer as the node wants it: another node of the mesh.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireguardPeer {
    /// Its public key, base64.
    pub public_key: PublicKeyText,
    /// Where its WireGuard listens: its underlay address and port.
    pub endpoint: SocketAddr,
    /// The inner addresses it may send from and is sent to.
    pub allowed_ips: Vec<IpNet>,
}

/// The interface's own settings: the node's private key and the UDP port.
pub fn set_interface(key: &NodeKey, listen_port: u16) -> String {
    format!(
        "set=1\nprivate_key={}\nlisten_port={listen_port}\n\n",
        key.private_hex()
    )
}

/// Replaces the interface's private key; its sessions end and every peer
/// makes a new handshake.
pub fn set_private_key(key: &NodeKey) -> String {
    format!("set=1\nprivate_key={}\n\n", key.private_hex())
}

/// Seconds between keepalives to a peer with no traffic: every tunnel
/// keeps a fresh handshake, so its status says whether it works, not
/// whether it was used.
pub const PERSISTENT_KEEPALIVE_SECONDS: u16 = 25;

/// Adds `peer`, or updates it in place (its session survives): the
/// endpoint, the keepalive, and the allowed IPs replaced by `peer`'s.
/// `None` when the public key is not a key.
pub fn set_peer(peer: &WireguardPeer) -> Option<String> {
    let key = public_key_hex(&peer.public_key)?;
    let mut text = format!(
        "set=1\npublic_key={key}\nendpoint={}\npersistent_keepalive_interval={PERSISTENT_KEEPALIVE_SECONDS}\nreplace_allowed_ips=true\n",
        peer.endpoint
    );
    for net in &peer.allowed_ips {
        text.push_str(&format!("allowed_ip={net}\n"));
    }
    text.push('\n');
    Some(text)
}

/// Removes the peer with `public_key`.
pub fn remove_peer(public_key: &str) -> Option<String> {
    let key = public_key_hex(public_key)?;
    Some(format!("set=1\npublic_key={key}\nremove=true\n\n"))
}

/// The transactions that turn `current` into `desired` (both keyed by
/// public key): removals first, so an address moving between peers is never
/// claimed twice, then each new or changed peer. Peers whose key is not a
/// key are left out (and are the caller's to count).
pub fn changes(
    current: &BTreeMap<PublicKeyText, WireguardPeer>,
    desired: &BTreeMap<PublicKeyText, WireguardPeer>,
) -> Vec<String> {
    let removed = current
        .keys()
        .filter(|k| !desired.contains_key(*k))
        .filter_map(|k| remove_peer(k));
    let set = desired
        .iter()
        .filter(|(k, p)| current.get(*k) != Some(p))
        .filter_map(|(_, p)| set_peer(p));
    removed.chain(set).collect()
}

/// The answer to a transaction: `Ok` for `errno=0`, else the errno.
pub fn parse_errno(answer: &str) -> Result<(), i32> {
    let errno = answer
        .lines()
        .find_map(|l| l.strip_prefix("errno="))
        .and_then(|n| n.trim().parse::<i32>().ok())
        .unwrap_or(-1);
    if errno == 0 { Ok(()) } else { Err(errno) }
}

/// A peer as the device reports it (`get=1`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerState {
    /// Its public key, base64.
    pub public_key: PublicKeyText,
    /// Its endpoint, once known.
    pub endpoint: Option<SocketAddr>,
    /// `last_handshake_time_sec` and `_nsec` as the device gives them
    /// (the kernel and wireguard-go: Unix time; boringtun: time since).
    pub last_handshake: Option<Duration>,
    /// Bytes received from it.
    pub rx_bytes: u64,
    /// Bytes sent to it.
    pub tx_bytes: u64,
}

/// The device's answer to `get=1`: its public key and its peers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceState {
    /// The interface's public key, base64.
    pub public_key: Option<PublicKeyText>,
    /// The UDP port it listens on.
    pub listen_port: Option<u16>,
    /// Its peers, in the device's order.
    pub peers: Vec<PeerState>,
}

/// Reads a `get=1` answer; a line it does not know is skipped, a known
/// one with a bad value is an error naming it.
pub fn parse_get(answer: &str) -> Result<DeviceState, String> {
    let mut state = DeviceState::default();
    let mut seconds: Option<u64> = None;
    for line in answer.lines().take_while(|l| !l.is_empty()) {
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("line {line:?} is not key=value"));
        };
        let bad = || format!("{key}={value:?} is not valid");
        match key {
            "own_public_key" => state.public_key = Some(base64_of_hex(value).ok_or_else(bad)?),
            "listen_port" => state.listen_port = Some(value.parse().map_err(|_| bad())?),
            "public_key" => state.peers.push(PeerState {
                public_key: base64_of_hex(value).ok_or_else(bad)?,
                ..PeerState::default()
            }),
            "errno" => {
                if value != "0" {
                    return Err(format!("the device answered errno={value}"));
                }
            }
            _ => {
                let Some(peer) = state.peers.last_mut() else {
                    continue;
                };
                match key {
                    "endpoint" => peer.endpoint = Some(value.parse().map_err(|_| bad())?),
                    "rx_bytes" => peer.rx_bytes = value.parse().map_err(|_| bad())?,
                    "tx_bytes" => peer.tx_bytes = value.parse().map_err(|_| bad())?,
                    "last_handshake_time_sec" => seconds = Some(value.parse().map_err(|_| bad())?),
                    "last_handshake_time_nsec" => {
                        let nanos: u32 = value.parse().map_err(|_| bad())?;
                        let secs = seconds.take().unwrap_or_default();
                        // 0 and 0: never (the kernel's way of saying so).
                        peer.last_handshake = ((secs, nanos) != (0, 0)).then(|| Duration::new(secs, nanos));
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(state)
}

fn base64_of_hex(hex: &str) -> Option<String> {
    if hex.len() != 64 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..32)
        .map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
        .collect();
    Some(STANDARD.encode(bytes?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=";
    const HEX_A: &str = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a";
    const KEY_B: &str = "3p7bfXt9wbTTW2HC7OQ1Nz+DQ8hbeGdNrfx+FG+IK08=";
    const HEX_B: &str = "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f";

    fn peer(key: &str, endpoint: &str, ips: &[&str]) -> WireguardPeer {
        WireguardPeer {
            public_key: key.to_owned(),
            endpoint: endpoint.parse().expect("endpoint"),
            allowed_ips: ips.iter().map(|n| n.parse().expect("net")).collect(),
        }
    }

    #[test]
    fn the_messages_are_the_protocols_exact_text() {
        // RFC 7748 section 6.1's private key of Alice.
        let key = NodeKey::from_base64("dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=").expect("key");
        assert_eq!(
            set_interface(&key, 51871),
            "set=1\nprivate_key=77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a\nlisten_port=51871\n\n"
        );
        assert_eq!(
            set_private_key(&key),
            "set=1\nprivate_key=77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a\n\n"
        );
        assert_eq!(
            set_peer(&peer(KEY_A, "10.1.0.2:51871", &["10.1.0.2/32", "fd00::2/128"])).expect("key"),
            format!(
                "set=1\npublic_key={HEX_A}\nendpoint=10.1.0.2:51871\npersistent_keepalive_interval=25\nreplace_allowed_ips=true\nallowed_ip=10.1.0.2/32\nallowed_ip=fd00::2/128\n\n"
            )
        );
        assert_eq!(
            remove_peer(KEY_B).expect("key"),
            format!("set=1\npublic_key={HEX_B}\nremove=true\n\n")
        );
        assert_eq!(set_peer(&peer("c2hvcnQ=", "10.1.0.2:1", &[])), None);
    }

    #[test]
    fn changes_remove_first_then_set_only_what_differs_one_peer_per_transaction() {
        let a = peer(KEY_A, "10.1.0.2:51871", &["10.1.0.2/32"]);
        let b = peer(KEY_B, "10.1.0.3:51871", &["10.1.0.3/32"]);
        let current = BTreeMap::from([(KEY_A.to_owned(), a.clone()), (KEY_B.to_owned(), b.clone())]);
        assert!(changes(&current, &current).is_empty());

        let moved = peer(KEY_A, "10.1.0.9:51871", &["10.1.0.9/32"]);
        let desired = BTreeMap::from([(KEY_A.to_owned(), moved.clone())]);
        assert_eq!(
            changes(&current, &desired),
            vec![remove_peer(KEY_B).expect("b"), set_peer(&moved).expect("a")]
        );
        assert!(
            changes(&current, &desired)
                .iter()
                .all(|t| t.matches("set=1").count() == 1)
        );
    }

    #[test]
    fn a_get_answer_reads_into_the_devices_state() {
        let answer = format!(
            "own_public_key={HEX_A}\nlisten_port=51871\npublic_key={HEX_B}\nendpoint=10.1.0.3:51871\nallowed_ip=10.1.0.3/32\nlast_handshake_time_sec=3\nlast_handshake_time_nsec=500\nrx_bytes=92\ntx_bytes=148\nerrno=0\n\n"
        );
        let state = parse_get(&answer).expect("state");
        assert_eq!(state.public_key.as_deref(), Some(KEY_A));
        assert_eq!(state.listen_port, Some(51871));
        assert_eq!(
            state.peers,
            vec![PeerState {
                public_key: KEY_B.to_owned(),
                endpoint: Some("10.1.0.3:51871".parse().expect("addr")),
                last_handshake: Some(Duration::new(3, 500)),
                rx_bytes: 92,
                tx_bytes: 148,
            }]
        );
        let never = format!("public_key={HEX_B}\nlast_handshake_time_sec=0\nlast_handshake_time_nsec=0\n\n");
        assert_eq!(parse_get(&never).expect("never").peers[0].last_handshake, None);
        let err = parse_get("listen_port=many\n").expect_err("bad port");
        assert!(err.contains("listen_port"), "{err}");
        assert_eq!(parse_errno("errno=0\n\n"), Ok(()));
        assert_eq!(parse_errno("errno=22\n\n"), Err(22));
    }
}
