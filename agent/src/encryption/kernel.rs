//! The kernel's WireGuard, configured over generic netlink. The agent
//! speaks one configuration protocol, the UAPI text of [`super::uapi`];
//! here each `set=1` transaction becomes a `WG_CMD_SET_DEVICE` message, and
//! a `WG_CMD_GET_DEVICE` answer becomes the same [`DeviceState`] the
//! userspace device gives. The translation and the framing are pure and
//! unit-tested against the exact bytes; [`KernelDevice`] sends them.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_generic::GenlMessage;
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_wireguard::{
    WireguardAddressFamily, WireguardAllowedIp, WireguardAllowedIpAttr, WireguardAttribute, WireguardCmd,
    WireguardMessage, WireguardPeer, WireguardPeerAttribute,
};
use netlink_sys::{Socket, SocketAddr as NetlinkAddr, protocols::NETLINK_GENERIC};

use super::uapi::{DeviceState, PeerState};
use crate::{Error, Result};

const WGPEER_F_REMOVE_ME: u32 = 1;
const WGPEER_F_REPLACE_ALLOWEDIPS: u32 = 1 << 1;

/// A 64-character hex key (as UAPI writes keys) as bytes.
fn key_bytes(hex: &str) -> std::result::Result<[u8; 32], String> {
    if hex.len() != 64 {
        return Err(format!("a key is 64 hex digits, not {}", hex.len()));
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| format!("{hex:?} is not hex"))?;
    }
    Ok(out)
}

fn allowed_ip(text: &str) -> std::result::Result<WireguardAllowedIp, String> {
    let net: ipnet::IpNet = text.parse().map_err(|_| format!("{text:?} is not a network"))?;
    let family = match net.addr() {
        IpAddr::V4(_) => WireguardAddressFamily::Ipv4,
        IpAddr::V6(_) => WireguardAddressFamily::Ipv6,
    };
    Ok(WireguardAllowedIp(vec![
        WireguardAllowedIpAttr::Family(family),
        WireguardAllowedIpAttr::IpAddr(net.addr()),
        WireguardAllowedIpAttr::Cidr(net.prefix_len()),
    ]))
}

/// A peer being built from its UAPI lines.
#[derive(Default)]
struct PeerBuild {
    attributes: Vec<WireguardPeerAttribute>,
    flags: u32,
    allowed: Vec<WireguardAllowedIp>,
}

impl PeerBuild {
    fn finish(self) -> WireguardPeer {
        let mut attributes = self.attributes;
        if self.flags != 0 {
            attributes.push(WireguardPeerAttribute::Flags(self.flags));
        }
        if !self.allowed.is_empty() {
            attributes.push(WireguardPeerAttribute::AllowedIps(self.allowed));
        }
        WireguardPeer(attributes)
    }
}

/// The `WG_CMD_SET_DEVICE` message of one UAPI `set=1` transaction for
/// interface `ifname`; an error names the line it cannot carry.
pub fn set_message(ifname: &str, transaction: &str) -> std::result::Result<WireguardMessage, String> {
    let mut attributes = vec![WireguardAttribute::IfName(ifname.to_owned())];
    let mut peers: Vec<WireguardPeer> = Vec::new();
    let mut peer: Option<PeerBuild> = None;
    for line in transaction.lines().filter(|l| !l.is_empty()) {
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| format!("{line:?} is not key=value"))?;
        let in_peer = |peer: &mut Option<PeerBuild>| -> std::result::Result<(), String> {
            peer.as_ref()
                .map(|_| ())
                .ok_or_else(|| format!("{key} before any public_key"))
        };
        match key {
            "set" => {}
            "private_key" => attributes.push(WireguardAttribute::PrivateKey(key_bytes(value)?)),
            "listen_port" => attributes.push(WireguardAttribute::ListenPort(
                value.parse().map_err(|_| format!("listen_port {value:?}"))?,
            )),
            "public_key" => {
                if let Some(done) = peer.take() {
                    peers.push(done.finish());
                }
                peer = Some(PeerBuild {
                    attributes: vec![WireguardPeerAttribute::PublicKey(key_bytes(value)?)],
                    ..PeerBuild::default()
                });
            }
            "endpoint" => {
                in_peer(&mut peer)?;
                let addr: SocketAddr = value.parse().map_err(|_| format!("endpoint {value:?}"))?;
                peer.as_mut()
                    .expect("checked")
                    .attributes
                    .push(WireguardPeerAttribute::Endpoint(addr));
            }
            "persistent_keepalive_interval" => {
                in_peer(&mut peer)?;
                let seconds = value
                    .parse()
                    .map_err(|_| format!("persistent_keepalive_interval {value:?}"))?;
                peer.as_mut()
                    .expect("checked")
                    .attributes
                    .push(WireguardPeerAttribute::PersistentKeepalive(seconds));
            }
            "replace_allowed_ips" if value == "true" => {
                in_peer(&mut peer)?;
                peer.as_mut().expect("checked").flags |= WGPEER_F_REPLACE_ALLOWEDIPS;
            }
            "remove" if value == "true" => {
                in_peer(&mut peer)?;
                peer.as_mut().expect("checked").flags |= WGPEER_F_REMOVE_ME;
            }
            "allowed_ip" => {
                in_peer(&mut peer)?;
                peer.as_mut().expect("checked").allowed.push(allowed_ip(value)?);
            }
            other => return Err(format!("{other}={value} has no netlink form here")),
        }
    }
    if let Some(done) = peer.take() {
        peers.push(done.finish());
    }
    if !peers.is_empty() {
        attributes.push(WireguardAttribute::Peers(peers));
    }
    Ok(WireguardMessage {
        cmd: WireguardCmd::SetDevice,
        attributes,
    })
}

/// The device's state from a `WG_CMD_GET_DEVICE` answer (the kernel gives
/// the last handshake as Unix time).
pub fn state_of(answer: &WireguardMessage) -> DeviceState {
    let b64 = |k: &[u8; 32]| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, k);
    let mut state = DeviceState::default();
    for attribute in &answer.attributes {
        match attribute {
            WireguardAttribute::PublicKey(k) => state.public_key = Some(b64(k)),
            WireguardAttribute::ListenPort(p) => state.listen_port = Some(*p),
            WireguardAttribute::Peers(peers) => {
                for WireguardPeer(attributes) in peers {
                    let mut peer = PeerState::default();
                    for a in attributes {
                        match a {
                            WireguardPeerAttribute::PublicKey(k) => peer.public_key = b64(k),
                            WireguardPeerAttribute::Endpoint(e) => peer.endpoint = Some(*e),
                            WireguardPeerAttribute::LastHandshake(t) => {
                                let at = Duration::new(
                                    t.seconds.max(0) as u64,
                                    t.nano_seconds.clamp(0, 999_999_999) as u32,
                                );
                                peer.last_handshake = (!at.is_zero()).then_some(at);
                            }
                            WireguardPeerAttribute::RxBytes(n) => peer.rx_bytes = *n,
                            WireguardPeerAttribute::TxBytes(n) => peer.tx_bytes = *n,
                            _ => {}
                        }
                    }
                    state.peers.push(peer);
                }
            }
            _ => {}
        }
    }
    state
}

/// `message` framed for the kernel: netlink header (family `family`,
/// sequence `seq`, `flags`), generic netlink header, attributes.
pub fn frame<F>(message: F, family: u16, seq: u32, flags: u16) -> Vec<u8>
where
    F: netlink_packet_generic::GenlFamily + netlink_packet_core::Emitable + std::fmt::Debug,
{
    let mut genl = GenlMessage::from_payload(message);
    genl.set_resolved_family_id(family);
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let mut nl = NetlinkMessage::new(header, NetlinkPayload::from(genl));
    nl.finalize();
    let mut buf = vec![0; netlink_packet_core::Emitable::buffer_len(&nl)];
    nl.serialize(&mut buf);
    buf
}

/// A kernel WireGuard interface, configured over generic netlink.
#[derive(Debug)]
pub struct KernelDevice {
    name: String,
    family: u16,
    socket: Socket,
    seq: std::sync::atomic::AtomicU32,
}

fn netlink_failed(action: String) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::Wireguard {
        action,
        source: Box::new(e),
    }
}

impl KernelDevice {
    /// Opens generic netlink and resolves the `wireguard` family; an error
    /// when the kernel has no WireGuard (the caller falls back to
    /// userspace).
    pub fn open(name: &str) -> Result<Self> {
        let mut socket =
            Socket::new(NETLINK_GENERIC).map_err(netlink_failed("open generic netlink".into()))?;
        socket
            .bind_auto()
            .map_err(netlink_failed("bind generic netlink".into()))?;
        socket
            .connect(&NetlinkAddr::new(0, 0))
            .map_err(netlink_failed("connect generic netlink".into()))?;
        let mut device = Self {
            name: name.to_owned(),
            family: netlink_packet_generic::constants::GENL_ID_CTRL,
            socket,
            seq: std::sync::atomic::AtomicU32::new(1),
        };
        let ask = GenlCtrl {
            cmd: GenlCtrlCmd::GetFamily,
            nlas: vec![GenlCtrlAttrs::FamilyName("wireguard".to_owned())],
        };
        let answers = device.request(ask, NLM_F_REQUEST | NLM_F_ACK)?;
        let family = answers
            .iter()
            .flat_map(|a: &GenlCtrl| a.nlas.iter())
            .find_map(|n| match n {
                GenlCtrlAttrs::FamilyId(id) => Some(*id),
                _ => None,
            })
            .ok_or_else(|| Error::Wireguard {
                action: "find the kernel's wireguard netlink family".into(),
                source: "no family id in the answer".into(),
            })?;
        device.family = family;
        Ok(device)
    }

    fn request<F>(&self, message: F, flags: u16) -> Result<Vec<F>>
    where
        F: netlink_packet_generic::GenlFamily
            + netlink_packet_core::Emitable
            + netlink_packet_core::ParseableParametrized<[u8], netlink_packet_generic::GenlHeader>
            + std::fmt::Debug,
    {
        let seq = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let failed = || format!("talk to the kernel's WireGuard about {}", self.name);
        self.socket
            .send(&frame(message, self.family, seq, flags), 0)
            .map_err(netlink_failed(failed()))?;
        let mut out = Vec::new();
        loop {
            let (buf, _) = self.socket.recv_from_full().map_err(netlink_failed(failed()))?;
            let mut offset = 0;
            while offset < buf.len() {
                let message = NetlinkMessage::<GenlMessage<F>>::deserialize(&buf[offset..]).map_err(|e| {
                    Error::Wireguard {
                        action: failed(),
                        source: e.to_string().into(),
                    }
                })?;
                let length = message.header.length as usize;
                match message.payload {
                    NetlinkPayload::InnerMessage(genl) => out.push(genl.payload),
                    NetlinkPayload::Error(e) if e.code.is_some() => {
                        return Err(Error::Wireguard {
                            action: failed(),
                            source: Box::new(e.to_io()),
                        });
                    }
                    NetlinkPayload::Error(_) | NetlinkPayload::Done(_) => return Ok(out),
                    _ => {}
                }
                if length == 0 {
                    break;
                }
                offset += length;
            }
            if flags & NLM_F_DUMP == 0 && flags & NLM_F_ACK == 0 {
                return Ok(out);
            }
        }
    }

    /// Runs one UAPI `set=1` transaction.
    pub fn set(&self, transaction: &str) -> Result<()> {
        let message = set_message(&self.name, transaction).map_err(|why| Error::Wireguard {
            action: format!("configure WireGuard interface {}", self.name),
            source: why.into(),
        })?;
        self.request(message, NLM_F_REQUEST | NLM_F_ACK).map(|_| ())
    }

    /// The interface's state.
    pub fn state(&self) -> Result<DeviceState> {
        let get = WireguardMessage {
            cmd: WireguardCmd::GetDevice,
            attributes: vec![WireguardAttribute::IfName(self.name.clone())],
        };
        let answers = self.request(get, NLM_F_REQUEST | NLM_F_DUMP)?;
        let mut state = DeviceState::default();
        for answer in &answers {
            let part = state_of(answer);
            state.public_key = state.public_key.or(part.public_key);
            state.listen_port = state.listen_port.or(part.listen_port);
            state.peers.extend(part.peers);
        }
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use netlink_packet_wireguard::WireguardTimeSpec;

    use super::*;
    use crate::encryption::keys::NodeKey;
    use crate::encryption::uapi::{self, WireguardPeer as Peer};

    // RFC 7748 section 6.1's keys.
    const ALICE: &str = "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=";
    const BOB_PUBLIC: &str = "3p7bfXt9wbTTW2HC7OQ1Nz+DQ8hbeGdNrfx+FG+IK08=";

    fn attr(kind: u16, value: &[u8]) -> Vec<u8> {
        let len = 4 + value.len();
        let mut out = Vec::new();
        out.extend_from_slice(&(len as u16).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(value);
        out.resize(out.len().next_multiple_of(4), 0);
        out
    }

    fn nested(kind: u16, parts: &[Vec<u8>]) -> Vec<u8> {
        attr(kind | 0x8000, &parts.concat())
    }

    fn message(cmd: u8, family: u16, seq: u32, flags: u16, attrs: &[Vec<u8>]) -> Vec<u8> {
        let body = attrs.concat();
        let len = 16 + 4 + body.len();
        let mut out = Vec::new();
        out.extend_from_slice(&(len as u32).to_ne_bytes());
        out.extend_from_slice(&family.to_ne_bytes());
        out.extend_from_slice(&flags.to_ne_bytes());
        out.extend_from_slice(&seq.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        out.extend_from_slice(&[cmd, 1, 0, 0]);
        out.extend_from_slice(&body);
        out
    }

    /// `WG_CMD_SET_DEVICE` for `knit_wg` (family 0x1d, request with ack)
    /// carrying one peer of attributes `peer`.
    fn one_peer_message(seq: u32, peer: &[Vec<u8>]) -> Vec<u8> {
        message(
            1,
            0x1d,
            seq,
            NLM_F_REQUEST | NLM_F_ACK,
            &[attr(2, b"knit_wg\0"), nested(8, &[nested(0, peer)])],
        )
    }

    #[test]
    fn the_interfaces_key_and_port_are_the_exact_netlink_message() {
        let key = NodeKey::from_base64(ALICE).unwrap();
        let m = set_message("knit_wg", &uapi::set_interface(&key, 51871)).unwrap();
        let bytes = frame(m, 0x1d, 7, NLM_F_REQUEST | NLM_F_ACK);
        let private = key_bytes("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a").unwrap();
        let expected = message(
            1,
            0x1d,
            7,
            NLM_F_REQUEST | NLM_F_ACK,
            &[
                attr(2, b"knit_wg\0"),
                attr(3, &private),
                attr(6, &51871u16.to_ne_bytes()),
            ],
        );
        assert_eq!(bytes, expected);
    }

    #[test]
    fn a_peer_and_its_removal_are_the_exact_netlink_messages() {
        let peer = Peer {
            public_key: BOB_PUBLIC.into(),
            endpoint: "10.1.0.2:51871".parse().unwrap(),
            allowed_ips: vec!["10.1.0.2/32".parse().unwrap()],
        };
        let bob = key_bytes(&crate::encryption::keys::public_key_hex(BOB_PUBLIC).unwrap()).unwrap();
        let m = set_message("knit_wg", &uapi::set_peer(&peer).unwrap()).unwrap();
        let mut endpoint = Vec::new();
        endpoint.extend_from_slice(&2u16.to_ne_bytes()); // AF_INET
        endpoint.extend_from_slice(&51871u16.to_be_bytes());
        endpoint.extend_from_slice(&[10, 1, 0, 2]);
        endpoint.extend_from_slice(&[0; 8]);
        let allowed = nested(
            0,
            &[
                attr(1, &2u16.to_ne_bytes()),
                attr(2, &[10, 1, 0, 2]),
                attr(3, &[32]),
            ],
        );
        let expected = one_peer_message(
            3,
            &[
                attr(1, &bob),
                attr(4, &endpoint),
                attr(5, &25u16.to_ne_bytes()),
                attr(3, &WGPEER_F_REPLACE_ALLOWEDIPS.to_ne_bytes()),
                nested(9, &[allowed]),
            ],
        );
        assert_eq!(frame(m, 0x1d, 3, NLM_F_REQUEST | NLM_F_ACK), expected);

        let removal = set_message("knit_wg", &uapi::remove_peer(BOB_PUBLIC).unwrap()).unwrap();
        let expected = one_peer_message(4, &[attr(1, &bob), attr(3, &WGPEER_F_REMOVE_ME.to_ne_bytes())]);
        assert_eq!(frame(removal, 0x1d, 4, NLM_F_REQUEST | NLM_F_ACK), expected);
    }

    #[test]
    fn a_line_with_no_netlink_form_is_an_error_naming_it() {
        let err = set_message("knit_wg", "set=1\nfwmark=7\n\n").unwrap_err();
        assert!(err.contains("fwmark=7"), "{err}");
        let err = set_message("knit_wg", "set=1\nendpoint=10.0.0.1:1\n\n").unwrap_err();
        assert!(err.contains("before any public_key"), "{err}");
    }

    #[test]
    fn a_get_answer_reads_into_the_same_state_as_userspaces() {
        let bob = key_bytes(&crate::encryption::keys::public_key_hex(BOB_PUBLIC).unwrap()).unwrap();
        let answer = WireguardMessage {
            cmd: WireguardCmd::GetDevice,
            attributes: vec![
                WireguardAttribute::ListenPort(51871),
                WireguardAttribute::Peers(vec![WireguardPeer(vec![
                    WireguardPeerAttribute::PublicKey(bob),
                    WireguardPeerAttribute::LastHandshake(WireguardTimeSpec {
                        seconds: 1_800_000_000,
                        nano_seconds: 5,
                    }),
                    WireguardPeerAttribute::RxBytes(92),
                    WireguardPeerAttribute::TxBytes(148),
                ])]),
            ],
        };
        let state = state_of(&answer);
        assert_eq!(state.listen_port, Some(51871));
        assert_eq!(
            state.peers,
            vec![PeerState {
                public_key: BOB_PUBLIC.into(),
                endpoint: None,
                last_handshake: Some(Duration::new(1_800_000_000, 5)),
                rx_bytes: 92,
                tx_bytes: 148,
            }]
        );
    }
}
