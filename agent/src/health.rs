//! Data-path health: is each remote node reachable? Agents probe each
//! other over the underlay, on the path VXLAN takes (UDP between node
//! tunnel endpoints), as cilium-health does, so failover follows the data
//! plane rather than the control plane.
//!
//! - Every agent answers probes on UDP [`HEALTH_PORT`] (echo, to the
//!   prober's address and port).
//! - Every agent probes the tunnel endpoints of every other node it
//!   routes to, local cluster and peers, once per interval. To scale to
//!   hundreds of clusters, at most [`MAX_PROBES_PER_ROUND`] are sent per
//!   round, round-robin over the targets; a node unprobed so far counts as
//!   healthy.
//! - A node fails after [`FAILURES_TO_DOWN`] unanswered probes in a row and
//!   is healthy again at its next answer. A failing node is probed every
//!   [`FAILING_PROBE_EVERY`] rounds only.
//!
//! Nothing here ever waits for the network. A probe to a node that is gone
//! waits in the kernel's neighbour queue until ARP gives up (3 s), charged
//! to the sending socket: with dozens of dead nodes the send buffer fills.
//! Awaiting that buffer stalled the prober for seconds, so it neither
//! probed nor answered and live nodes on both sides were flagged failing.
//! So answers leave from their own socket (the one on [`HEALTH_PORT`]),
//! probes to healthy and to failing nodes from two others (ephemeral
//! ports), every send is `try_send_to`, and a probe the kernel cannot take
//! now is not sent this round rather than counted as missed.
//!
//! The [`Tracker`] is pure; [`run`] owns the sockets. Its output, the set
//! of failing tunnel endpoints, feeds the render, which drops backends on
//! failing nodes while others remain (`crate::render`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

/// UDP port of the health echo (next to VXLAN's 8472).
pub const HEALTH_PORT: u16 = 8471;
/// Unanswered probes in a row before a node counts as failing.
pub const FAILURES_TO_DOWN: u32 = 3;
/// Probes sent per round at most.
pub const MAX_PROBES_PER_ROUND: usize = 2000;
/// A failing node is probed in one round out of this many.
pub const FAILING_PROBE_EVERY: u64 = 4;

/// Probe outcomes per target.
#[derive(Debug, Default)]
pub struct Tracker {
    missed: BTreeMap<IpAddr, u32>,
    cursor: usize,
    round: u64,
}

impl Tracker {
    /// The targets to probe this round: at most `max`, continuing where
    /// the last round stopped; failing targets only every
    /// [`FAILING_PROBE_EVERY`] rounds. Forgets targets no longer listed.
    pub fn next_round(&mut self, targets: &BTreeSet<IpAddr>, max: usize) -> Vec<IpAddr> {
        self.missed.retain(|ip, _| targets.contains(ip));
        let failing_due = self.round.is_multiple_of(FAILING_PROBE_EVERY);
        self.round += 1;
        let all: Vec<IpAddr> = targets
            .iter()
            .copied()
            .filter(|ip| failing_due || !self.is_failing(ip))
            .collect();
        if all.is_empty() {
            return Vec::new();
        }
        let n = max.min(all.len());
        let start = self.cursor % all.len();
        self.cursor = (start + n) % all.len();
        (0..n).map(|i| all[(start + i) % all.len()]).collect()
    }

    /// Records a round: `probed` were sent, `answered` replied.
    pub fn record(&mut self, probed: &[IpAddr], answered: &BTreeSet<IpAddr>) {
        for ip in probed {
            let missed = self.missed.entry(*ip).or_default();
            if answered.contains(ip) {
                *missed = 0;
            } else {
                *missed = missed.saturating_add(1);
            }
        }
    }

    /// Whether `ip` is failing now.
    pub fn is_failing(&self, ip: &IpAddr) -> bool {
        self.missed.get(ip).is_some_and(|n| *n >= FAILURES_TO_DOWN)
    }

    /// Targets failing now.
    pub fn failing(&self) -> BTreeSet<IpAddr> {
        self.missed
            .iter()
            .filter(|(_, n)| **n >= FAILURES_TO_DOWN)
            .map(|(ip, _)| *ip)
            .collect()
    }
}

/// Tunnel endpoints of every node this node routes to, but its own: the
/// local cluster's other nodes and every configured peer's nodes.
pub fn targets(index: &crate::index::MeshIndex, node: &str) -> BTreeSet<IpAddr> {
    let own = index.local.nodes.get(node).map(|n| n.tunnel_endpoint);
    std::iter::once(&index.local)
        .chain(index.peers.values().filter(|p| p.config.is_some()))
        .flat_map(|view| view.nodes.values().map(|n| n.tunnel_endpoint))
        .filter(|ip| Some(*ip) != own)
        .collect()
}

/// Answers probes, and probes `targets` every `interval`, publishing the
/// failing set on `failing`. Runs until the process stops; socket errors
/// are logged and retried.
pub async fn run(
    port: u16,
    interval: Duration,
    targets: watch::Receiver<BTreeSet<IpAddr>>,
    failing: watch::Sender<BTreeSet<IpAddr>>,
) {
    loop {
        match Sockets::bind(port).await {
            Ok(sockets) => {
                if let Err(e) = serve(&sockets, port, interval, &targets, &failing).await {
                    tracing::warn!(error = %e, "health prober failed; restarting");
                }
            }
            Err(e) => tracing::warn!(error = %e, port, "cannot bind the health sockets; retrying"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

const PROBE: &[u8] = b"knit-health?";
const ANSWER: &[u8] = b"knit-health!";

/// The prober's sockets: answers, probes to healthy nodes, probes to
/// failing ones (see the module doc for why three).
struct Sockets {
    answers: UdpSocket,
    healthy: UdpSocket,
    failing: UdpSocket,
}

impl Sockets {
    async fn bind(port: u16) -> std::io::Result<Self> {
        Ok(Self {
            answers: UdpSocket::bind(("0.0.0.0", port)).await?,
            healthy: UdpSocket::bind(("0.0.0.0", 0)).await?,
            failing: UdpSocket::bind(("0.0.0.0", 0)).await?,
        })
    }
}

/// What a datagram asks of the prober.
fn received(datagram: &[u8], from: SocketAddr, answers: &UdpSocket, answered: &mut BTreeSet<IpAddr>) {
    match datagram {
        // An answer that cannot leave now is a miss for the prober.
        PROBE => {
            let _ = answers.try_send_to(ANSWER, from);
        }
        ANSWER => {
            answered.insert(from.ip());
        }
        _ => {}
    }
}

async fn serve(
    sockets: &Sockets,
    port: u16,
    interval: Duration,
    targets: &watch::Receiver<BTreeSet<IpAddr>>,
    failing: &watch::Sender<BTreeSet<IpAddr>>,
) -> std::io::Result<()> {
    let mut tracker = Tracker::default();
    let (mut a, mut h, mut f) = ([0u8; 64], [0u8; 64], [0u8; 64]);
    let mut tick = tokio::time::interval(interval);
    // After a stall, one round, not a burst of rounds that record probes
    // nobody had time to answer.
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut probed: Vec<IpAddr> = Vec::new();
    let mut answered: BTreeSet<IpAddr> = BTreeSet::new();
    loop {
        tokio::select! {
            r = sockets.answers.recv_from(&mut a) => {
                let (n, from) = r?;
                received(&a[..n], from, &sockets.answers, &mut answered);
            }
            r = sockets.healthy.recv_from(&mut h) => {
                let (n, from) = r?;
                received(&h[..n], from, &sockets.answers, &mut answered);
            }
            r = sockets.failing.recv_from(&mut f) => {
                let (n, from) = r?;
                received(&f[..n], from, &sockets.answers, &mut answered);
            }
            _ = tick.tick() => {
                tracker.record(&probed, &answered);
                failing.send_if_modified(|f| {
                    let now = tracker.failing();
                    let changed = *f != now;
                    *f = now;
                    changed
                });
                answered.clear();
                let current = targets.borrow().clone();
                probed.clear();
                for ip in tracker.next_round(&current, MAX_PROBES_PER_ROUND) {
                    let socket = if tracker.is_failing(&ip) { &sockets.failing } else { &sockets.healthy };
                    match socket.try_send_to(PROBE, SocketAddr::new(ip, port)) {
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        // Sent, or refused (no route): answered or missed.
                        _ => probed.push(ip),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_node_fails_after_three_missed_probes_and_recovers_at_one_answer() {
        let mut t = Tracker::default();
        let targets = BTreeSet::from([ip("192.168.50.11"), ip("192.168.50.12")]);
        for round in 1..=3 {
            let probed = t.next_round(&targets, 10);
            assert_eq!(probed.len(), 2);
            t.record(&probed, &BTreeSet::from([ip("192.168.50.11")]));
            let failing = t.failing();
            assert_eq!(
                failing.contains(&ip("192.168.50.12")),
                round == 3,
                "round {round}"
            );
        }
        // A failing node is left out of the next rounds but one in
        // FAILING_PROBE_EVERY (round 4 is not due, round 5 is).
        let probed = t.next_round(&targets, 10);
        assert_eq!(probed, vec![ip("192.168.50.11")]);
        t.record(&probed, &BTreeSet::new());
        let probed = t.next_round(&targets, 10);
        assert_eq!(probed.len(), 2, "every FAILING_PROBE_EVERY rounds");
        t.record(&probed, &BTreeSet::from([ip("192.168.50.12")]));
        assert_eq!(
            t.failing(),
            BTreeSet::new(),
            "one answer is enough; one miss is not"
        );
    }

    #[test]
    fn a_probe_never_sent_is_neither_an_answer_nor_a_miss() {
        let mut t = Tracker::default();
        let targets = BTreeSet::from([ip("192.168.50.11")]);
        for _ in 0..5 {
            t.next_round(&targets, 10);
            // The send buffer was full: nothing went out.
            t.record(&[], &BTreeSet::new());
        }
        assert!(t.failing().is_empty());
    }

    #[test]
    fn rounds_are_bounded_and_cover_every_target_in_turn() {
        let mut t = Tracker::default();
        let targets: BTreeSet<IpAddr> = (1..=5).map(|i| ip(&format!("10.0.0.{i}"))).collect();
        let mut seen = BTreeSet::new();
        for _ in 0..3 {
            let round = t.next_round(&targets, 2);
            assert_eq!(round.len(), 2);
            seen.extend(round);
        }
        assert_eq!(seen, targets, "three rounds of two cover five targets");
        t.record(&[ip("10.0.0.1")], &BTreeSet::new());
        t.next_round(&BTreeSet::from([ip("10.0.0.2")]), 2);
        assert!(t.failing().is_empty());
    }
}
