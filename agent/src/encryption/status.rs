//! Per remote node, whether the WireGuard tunnel is up and when its last
//! handshake was: the device's state and the applied plan in, the report's
//! `wireguardTunnels` out (pure).
//!
//! Devices give the last handshake two ways: the kernel and wireguard-go as
//! Unix time, boringtun as the time since. A value before 2001 is read as
//! an age. A tunnel is up while its last handshake is within WireGuard's
//! session lifetime (180 s); with the 25 s keepalive every working tunnel
//! renews it every two minutes.

use std::collections::BTreeMap;
use std::time::Duration;

use knit_kvstore::records::WireguardTunnel;

use super::keys::PublicKeyText;
use super::uapi::DeviceState;

/// WireGuard's `REJECT_AFTER_TIME`: a session older than this carries
/// nothing.
pub const SESSION_LIFETIME_SECONDS: i64 = 180;

/// A handshake time within this many seconds of the reported one is the
/// same handshake (an age read a moment later), so the report stays still.
const SAME_HANDSHAKE_SECONDS: i64 = 2;

/// Below this a last-handshake value is an age, not a Unix time.
const UNIX_TIME_FLOOR: u64 = 1_000_000_000;

/// The tunnels of every node in `nodes` (peer key → `cluster/node`), read
/// from `state` at `now` (Unix seconds); `previous` is the last report.
pub fn tunnels(
    nodes: &BTreeMap<PublicKeyText, String>,
    state: &DeviceState,
    now: i64,
    previous: &BTreeMap<String, WireguardTunnel>,
) -> BTreeMap<String, WireguardTunnel> {
    let handshakes: BTreeMap<&PublicKeyText, Option<Duration>> = state
        .peers
        .iter()
        .map(|p| (&p.public_key, p.last_handshake))
        .collect();
    nodes
        .iter()
        .map(|(key, node)| {
            let at = handshakes
                .get(key)
                .copied()
                .flatten()
                .map(|h| handshake_time(h, now))
                .map(|at| match previous.get(node).and_then(|t| t.last_handshake) {
                    Some(before) if (before - at).abs() <= SAME_HANDSHAKE_SECONDS => before,
                    _ => at,
                });
            let up = at.is_some_and(|at| now - at <= SESSION_LIFETIME_SECONDS);
            (
                node.clone(),
                WireguardTunnel {
                    up,
                    last_handshake: at,
                },
            )
        })
        .collect()
}

/// Tunnelled packets that left the node outside WireGuard, from two
/// counters: the tunnel device's `tx_packets` (every VXLAN packet sent) and
/// what the WireGuard interface took (its `tx_packets` plus `tx_dropped`).
/// Only VXLAN is routed into WireGuard, so the first less the second is
/// plaintext. The WireGuard side counts a packet when the userspace device
/// reads it, a moment after the tunnel sent it: each reading compares the
/// tunnel's count of the reading before with WireGuard's of this one.
#[derive(Clone, Debug, Default)]
pub struct PlaintextCount {
    base: Option<(u64, u64)>,
    tunnel_before: Option<u64>,
    wireguard_before: Option<u64>,
    counted: u64,
}

impl PlaintextCount {
    /// One reading of both counters; the plaintext packets it adds.
    /// A counter that went back (its interface made again) starts the
    /// count over from this reading.
    pub fn observe(&mut self, tunnel_sent: u64, wireguard_took: u64) -> u64 {
        let went_back = self.tunnel_before.is_some_and(|t| tunnel_sent < t)
            || self.wireguard_before.is_some_and(|w| wireguard_took < w);
        if went_back {
            *self = Self::default();
        }
        self.wireguard_before = Some(wireguard_took);
        let (tunnel0, wireguard0) = *self.base.get_or_insert((tunnel_sent, wireguard_took));
        let Some(tunnel) = self.tunnel_before.replace(tunnel_sent) else {
            return 0;
        };
        let plaintext = tunnel
            .saturating_sub(tunnel0)
            .saturating_sub(wireguard_took.saturating_sub(wireguard0));
        let added = plaintext.saturating_sub(self.counted);
        self.counted = self.counted.max(plaintext);
        added
    }
}

/// When a handshake was (Unix ms), from the device's value at `now_ms`.
pub fn handshake_unix_ms(value: Duration, now_ms: i64) -> i64 {
    if value.as_secs() >= UNIX_TIME_FLOOR {
        value.as_millis() as i64
    } else {
        now_ms - value.as_millis() as i64
    }
}

fn handshake_time(value: Duration, now: i64) -> i64 {
    let secs = value.as_secs();
    if secs >= UNIX_TIME_FLOOR {
        secs as i64
    } else {
        now - secs as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encryption::uapi::PeerState;

    const NOW: i64 = 1_800_000_000;

    fn nodes() -> BTreeMap<PublicKeyText, String> {
        [
            ("KA".to_owned(), "a/n1".to_owned()),
            ("KB".to_owned(), "b/n0".to_owned()),
        ]
        .into_iter()
        .collect()
    }

    fn state(peers: &[(&str, Option<Duration>)]) -> DeviceState {
        DeviceState {
            peers: peers
                .iter()
                .map(|(k, h)| PeerState {
                    public_key: (*k).to_owned(),
                    last_handshake: *h,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn tunnel(up: bool, at: Option<i64>) -> WireguardTunnel {
        WireguardTunnel {
            up,
            last_handshake: at,
        }
    }

    #[test]
    fn an_age_and_a_unix_time_both_become_the_handshakes_time() {
        let s = state(&[
            ("KA", Some(Duration::from_secs(7))),
            ("KB", Some(Duration::from_secs(NOW as u64 - 30))),
        ]);
        let t = tunnels(&nodes(), &s, NOW, &BTreeMap::new());
        assert_eq!(t["a/n1"], tunnel(true, Some(NOW - 7)));
        assert_eq!(t["b/n0"], tunnel(true, Some(NOW - 30)));
    }

    #[test]
    fn a_peer_without_a_handshake_or_past_the_session_lifetime_is_down() {
        let s = state(&[("KA", None), ("KB", Some(Duration::from_secs(181)))]);
        let t = tunnels(&nodes(), &s, NOW, &BTreeMap::new());
        assert_eq!(t["a/n1"], tunnel(false, None));
        assert_eq!(t["b/n0"], tunnel(false, Some(NOW - 181)));
        let only_a = state(&[("KA", Some(Duration::from_secs(180)))]);
        let t = tunnels(&nodes(), &only_a, NOW, &BTreeMap::new());
        assert_eq!(t["a/n1"], tunnel(true, Some(NOW - 180)));
        assert_eq!(
            t["b/n0"],
            tunnel(false, None),
            "planned but not on the device yet"
        );
    }

    #[test]
    fn a_handshakes_moment_in_milliseconds_from_an_age_or_a_unix_time() {
        let now_ms = NOW * 1000 + 500;
        assert_eq!(
            handshake_unix_ms(Duration::from_millis(1_250), now_ms),
            now_ms - 1_250
        );
        assert_eq!(
            handshake_unix_ms(Duration::from_millis(NOW as u64 * 1000 - 40), now_ms),
            NOW * 1000 - 40
        );
    }

    #[test]
    fn the_same_handshake_read_a_second_later_keeps_its_reported_time() {
        let s = state(&[("KA", Some(Duration::from_secs(10)))]);
        let first = tunnels(&nodes(), &s, NOW, &BTreeMap::new());
        let later = state(&[("KA", Some(Duration::from_secs(11)))]);
        assert_eq!(tunnels(&nodes(), &later, NOW + 2, &first)["a/n1"], first["a/n1"]);
        let renewed = state(&[("KA", Some(Duration::from_secs(1)))]);
        assert_eq!(
            tunnels(&nodes(), &renewed, NOW + 120, &first)["a/n1"],
            tunnel(true, Some(NOW + 119))
        );
    }

    #[test]
    fn tunnel_packets_wireguard_took_a_moment_later_are_not_plaintext() {
        let mut count = PlaintextCount::default();
        assert_eq!(count.observe(100, 40), 0, "the first reading is the base");
        // 10 sent, WireGuard has read 6 of them so far.
        assert_eq!(count.observe(110, 46), 0);
        // It reads the other 4, and 5 more that were sent since.
        assert_eq!(count.observe(115, 55), 0);
        assert_eq!(count.observe(115, 55), 0);
    }

    #[test]
    fn tunnel_packets_wireguard_never_took_are_counted_once() {
        let mut count = PlaintextCount::default();
        count.observe(0, 0);
        assert_eq!(
            count.observe(10, 2),
            0,
            "the tunnel's count of the reading before"
        );
        assert_eq!(count.observe(10, 2), 8);
        assert_eq!(count.observe(10, 2), 0, "already counted");
        assert_eq!(count.observe(13, 2), 0);
        assert_eq!(count.observe(13, 2), 3);
        // WireGuard's interface made again (counters from 0): the count
        // starts over.
        assert_eq!(count.observe(13, 0), 0);
        assert_eq!(count.observe(20, 7), 0);
        assert_eq!(count.observe(20, 7), 0);
        assert_eq!(count.observe(21, 7), 0);
        assert_eq!(count.observe(21, 7), 1);
    }

    #[test]
    fn a_device_peer_outside_the_plan_is_not_reported() {
        let s = state(&[("KX", Some(Duration::from_secs(1)))]);
        let t = tunnels(&nodes(), &s, NOW, &BTreeMap::new());
        assert_eq!(t.keys().collect::<Vec<_>>(), ["a/n1", "b/n0"]);
        assert!(t.values().all(|t| !t.up));
    }
}
