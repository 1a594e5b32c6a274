//! Userspace WireGuard (boringtun on TUN) carrying the tunnel, with real
//! packets between two namespaces joined by a veth "underlay".
//!
//! Each namespace has a VXLAN device on UDP 8472 (Knit's tunnel port) and a
//! WireGuard interface configured with the agent's own code
//! (`knit_agent::encryption`). A rule sends UDP to the tunnel port into the
//! table that routes the other node through WireGuard, so VXLAN travels
//! inside WireGuard. A capture on the underlay during a transfer must not
//! contain the marker the inner packets carry; the same transfer with the
//! rule removed (plaintext VXLAN) must contain it, so the check can fail.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use knit_agent::encryption::device::UserspaceDevice;
use knit_agent::encryption::keys::NodeKey;
use knit_agent::encryption::uapi::{self, WireguardPeer};
use knit_e2e::capture::{Capture, in_netns};
use knit_e2e::netns::Netns;
use knit_testkit::process::TempDir;

const WG_PORT: u16 = 51871;
const TABLE: &str = "201";

struct Node {
    ns: Netns,
    underlay: &'static str,
    inner: &'static str,
    key: NodeKey,
    wg: Option<UserspaceDevice>,
}

impl Node {
    fn new(tag: &str, underlay: &'static str, inner: &'static str) -> Self {
        Self {
            ns: Netns::new(tag),
            underlay,
            inner,
            key: NodeKey::generate().expect("key"),
            wg: None,
        }
    }

    /// VXLAN to `peer` on UDP 8472, with this node's inner address on it.
    /// Like Knit's own tunnel device, it is bound to no underlay device, so
    /// the route lookup (and with it the rule) decides where it goes.
    fn vxlan_to(&self, peer: &Node) {
        self.ns.ip(&[
            "link",
            "add",
            "vx",
            "type",
            "vxlan",
            "id",
            "7",
            "dstport",
            "8472",
            "local",
            self.underlay,
            "remote",
            peer.underlay,
        ]);
        self.ns
            .ip(&["addr", "add", &format!("{}/24", self.inner), "dev", "vx"]);
        self.ns.ip(&["link", "set", "vx", "up"]);
    }

    /// A userspace WireGuard interface with `peer` as its one peer, and the
    /// tunnel port's traffic to `peer` routed into it.
    fn encrypt_to(&mut self, peer: &Node) {
        let device = in_netns(self.ns.name(), || {
            UserspaceDevice::start("knit_wg", 1).expect("start")
        });
        device
            .set(&uapi::set_interface(&self.key, WG_PORT))
            .expect("interface");
        let wanted = WireguardPeer {
            public_key: peer.key.public_key(),
            endpoint: format!("{}:{WG_PORT}", peer.underlay).parse().expect("endpoint"),
            allowed_ips: vec![format!("{}/32", peer.underlay).parse().expect("net")],
        };
        device
            .set(&uapi::set_peer(&wanted).expect("peer"))
            .expect("set peer");
        self.ns.ip(&["link", "set", "knit_wg", "mtu", "1420", "up"]);
        self.ns
            .exec("sysctl", &["-qw", "net.ipv4.conf.knit_wg.rp_filter=0"]);
        self.ns.exec("sysctl", &["-qw", "net.ipv4.conf.all.rp_filter=0"]);
        self.ns.ip(&[
            "route",
            "add",
            &format!("{}/32", peer.underlay),
            "dev",
            "knit_wg",
            "table",
            TABLE,
        ]);
        self.route_tunnel_port(true);
        self.wg = Some(device);
    }

    fn route_tunnel_port(&self, into_wireguard: bool) {
        let verb = if into_wireguard { "add" } else { "del" };
        self.ns.ip(&[
            "rule", verb, "pref", "90", "ipproto", "udp", "dport", "8472", "lookup", TABLE,
        ]);
    }
}

/// Sends `marker` from `from` to `to`'s inner address until it arrives
/// (the first packets wait for WireGuard's handshake); the sender seen.
fn deliver(from: &Node, to: &Node, marker: &'static str) -> std::net::SocketAddr {
    let inner = to.inner;
    let receiver = in_netns(to.ns.name(), move || {
        UdpSocket::bind((inner, 9000)).expect("bind")
    });
    receiver
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let sender = in_netns(from.ns.name(), || UdpSocket::bind("0.0.0.0:0").expect("bind"));
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut buf = [0u8; 256];
    loop {
        assert!(
            Instant::now() < deadline,
            "{marker} never arrived at {inner}:9000"
        );
        sender.send_to(marker.as_bytes(), (inner, 9000)).expect("send");
        if let Ok((n, source)) = receiver.recv_from(&mut buf) {
            assert_eq!(&buf[..n], marker.as_bytes());
            return source;
        }
    }
}

#[test]
fn the_tunnel_travels_inside_wireguard_and_the_underlay_sees_no_plaintext() {
    let dir = TempDir::new("wg");
    let mut a = Node::new("wga", "10.231.0.1", "192.168.231.1");
    let mut b = Node::new("wgb", "10.231.0.2", "192.168.231.2");
    a.ns.veth_to("ul", &b.ns, "ul");
    a.ns.ip(&["addr", "add", "10.231.0.1/24", "dev", "ul"]);
    b.ns.ip(&["addr", "add", "10.231.0.2/24", "dev", "ul"]);
    a.vxlan_to(&b);
    b.vxlan_to(&a);
    a.encrypt_to(&b);
    b.encrypt_to(&a);

    let capture = Capture::start(&a.ns, "ul", &dir.path().join("encrypted.pcap"));
    let source = deliver(&a, &b, "KNIT-MARKER-ENCRYPTED");
    assert_eq!(source.ip().to_string(), a.inner);
    deliver(&b, &a, "KNIT-MARKER-ENCRYPTED-BACK");
    let encrypted = capture.stop(a.ns.name(), b.underlay);
    assert!(
        !encrypted.contains("KNIT-MARKER-ENCRYPTED"),
        "plaintext on the underlay"
    );
    // Both transfers crossed the underlay as WireGuard (handshake and
    // data), and no VXLAN did.
    assert!(encrypted.packets(&format!("udp port {WG_PORT}")) >= 4);
    assert_eq!(encrypted.packets("udp port 8472"), 0);

    let state = a.wg.as_ref().expect("wg").state().expect("state");
    assert_eq!(state.public_key.as_deref(), Some(a.key.public_key().as_str()));
    assert_eq!(state.listen_port, Some(WG_PORT));
    let peer = &state.peers[0];
    assert_eq!(peer.public_key, b.key.public_key());
    assert!(peer.last_handshake.is_some(), "no handshake: {state:?}");
    assert!(peer.rx_bytes > 0 && peer.tx_bytes > 0, "{state:?}");

    // The control: the same transfer with the rule gone is plaintext VXLAN.
    a.route_tunnel_port(false);
    b.route_tunnel_port(false);
    let capture = Capture::start(&a.ns, "ul", &dir.path().join("plain.pcap"));
    deliver(&a, &b, "KNIT-MARKER-PLAIN");
    let plain = capture.stop(a.ns.name(), b.underlay);
    assert!(
        plain.contains("KNIT-MARKER-PLAIN"),
        "the capture check cannot see plaintext"
    );
    assert!(plain.packets("udp port 8472") >= 1);
}
