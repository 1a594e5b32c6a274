//! What the peer front lets one source or one peer take: a bounded share of
//! handshakes, connections, streams and requests, so a slow or flooding
//! client (a slowloris before the handshake, an authenticated peer after
//! it) is refused and counted without affecting other peers or the local
//! agents.
//!
//! [`Admission`] counts handshakes in progress (in all and per source
//! address) and authenticated connections per peer; each admitted one
//! holds a guard that gives its slot back when dropped. [`RequestRate`] is
//! a token bucket per peer. Both are values with no I/O, driven by the
//! front ([`crate::front`]), and take the time as an argument where they
//! need it, so they have plain unit tests.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The front's limits (command-line flags, with these defaults).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FrontLimits {
    /// How long a client may take to complete the TLS handshake.
    pub handshake_timeout: Duration,
    /// Handshakes in progress at once, from all sources.
    pub max_handshakes: usize,
    /// Handshakes in progress at once from one source address.
    pub max_handshakes_per_source: usize,
    /// Authenticated connections of one peer at once.
    pub max_connections_per_peer: usize,
    /// Concurrent HTTP/2 streams (calls, watches) on one connection.
    pub max_streams_per_connection: u32,
    /// Watch streams of one peer at once, over all its connections (a
    /// KVStoreMesh needs one; each costs etcd a fan-out of every change).
    pub max_watches_per_peer: usize,
    /// Calls a peer may start per second, on average.
    pub requests_per_second: f64,
    /// Calls a peer may start in a burst.
    pub request_burst: f64,
    /// Bytes of read answers (`KV/Range`) a peer may take per second, on
    /// average.
    pub read_bytes_per_second: f64,
    /// Bytes of read answers a peer may take in a burst (a KVStoreMesh's
    /// first list of a whole cluster).
    pub read_burst_bytes: f64,
    /// Keys one read (`KV/Range` over a range) may ask etcd for; a read
    /// for more gets this many and pages on ([`crate::front::read`]).
    pub max_read_keys: i64,
    /// A call beyond the rate waits for its turn up to this long (so a
    /// client that loops on calls is paced, not answered at once and
    /// free to call again); past that it is refused. Every refusal (rate,
    /// watches, method) is answered only after this long too, so a client
    /// spinning on refusals gets at most one per stream slot per delay,
    /// not thousands a second of the front's CPU.
    pub max_request_delay: Duration,
    /// An HTTP/2 ping every so often; a connection that does not answer
    /// one within as long is closed (dead or stalled peers).
    pub keepalive: Duration,
}

impl Default for FrontLimits {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            max_handshakes: 256,
            max_handshakes_per_source: 16,
            max_connections_per_peer: 8,
            max_streams_per_connection: 64,
            max_watches_per_peer: 4,
            requests_per_second: 200.0,
            request_burst: 400.0,
            read_bytes_per_second: f64::from(1u32 << 20),
            read_burst_bytes: f64::from(16u32 << 20),
            max_read_keys: 1000,
            max_request_delay: Duration::from_secs(1),
            keepalive: Duration::from_secs(30),
        }
    }
}

/// Why the front turned a connection away before relaying anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Busy {
    /// As many handshakes as the front takes are in progress.
    Handshakes,
    /// As many handshakes as one source may have are in progress.
    SourceHandshakes,
    /// The peer holds as many connections as it may.
    PeerConnections,
    /// The peer holds as many watch streams as it may.
    PeerWatches,
}

impl Busy {
    /// The metric label (`knit_apiserver_front_refused{reason}`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Handshakes => "too_many_handshakes",
            Self::SourceHandshakes => "too_many_handshakes_from_source",
            Self::PeerConnections => "too_many_connections",
            Self::PeerWatches => "too_many_watches",
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    handshakes: usize,
    by_source: BTreeMap<IpAddr, usize>,
    by_peer: BTreeMap<String, usize>,
    watches: BTreeMap<String, usize>,
}

/// Handshakes and connections in progress, shared by the front's tasks.
#[derive(Clone, Debug)]
pub struct Admission {
    limits: FrontLimits,
    counts: Arc<Mutex<Counts>>,
}

/// A handshake slot; given back when dropped.
#[derive(Debug)]
pub struct HandshakeSlot {
    counts: Arc<Mutex<Counts>>,
    source: IpAddr,
}

/// An authenticated connection's slot; given back when dropped.
#[derive(Debug)]
pub struct ConnectionSlot {
    counts: Arc<Mutex<Counts>>,
    peer: String,
}

/// A watch stream's slot; given back when dropped (when the stream ends).
#[derive(Debug)]
pub struct WatchSlot {
    counts: Arc<Mutex<Counts>>,
    peer: String,
}

impl Admission {
    /// No handshake or connection in progress yet.
    pub fn new(limits: FrontLimits) -> Self {
        Self {
            limits,
            counts: Arc::default(),
        }
    }

    /// A slot for a handshake from `source`, if one is free.
    pub fn handshake(&self, source: IpAddr) -> Result<HandshakeSlot, Busy> {
        let mut c = lock(&self.counts);
        if c.handshakes >= self.limits.max_handshakes {
            return Err(Busy::Handshakes);
        }
        let from_source = c.by_source.entry(source).or_default();
        if *from_source >= self.limits.max_handshakes_per_source {
            return Err(Busy::SourceHandshakes);
        }
        *from_source += 1;
        c.handshakes += 1;
        Ok(HandshakeSlot {
            counts: self.counts.clone(),
            source,
        })
    }

    /// A slot for an authenticated connection of `peer`, if it may have
    /// one more.
    pub fn connection(&self, peer: &str) -> Result<ConnectionSlot, Busy> {
        let mut c = lock(&self.counts);
        let n = c.by_peer.entry(peer.to_owned()).or_default();
        if *n >= self.limits.max_connections_per_peer {
            return Err(Busy::PeerConnections);
        }
        *n += 1;
        Ok(ConnectionSlot {
            counts: self.counts.clone(),
            peer: peer.to_owned(),
        })
    }
}

impl Admission {
    /// A slot for a watch stream of `peer`, if it may have one more.
    pub fn watch(&self, peer: &str) -> Result<WatchSlot, Busy> {
        let mut c = lock(&self.counts);
        let n = c.watches.entry(peer.to_owned()).or_default();
        if *n >= self.limits.max_watches_per_peer {
            return Err(Busy::PeerWatches);
        }
        *n += 1;
        Ok(WatchSlot {
            counts: self.counts.clone(),
            peer: peer.to_owned(),
        })
    }
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        let mut c = lock(&self.counts);
        if let Some(n) = c.watches.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.watches.remove(&self.peer);
            }
        }
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut c = lock(&self.counts);
        c.handshakes = c.handshakes.saturating_sub(1);
        if let Some(n) = c.by_source.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.by_source.remove(&self.source);
            }
        }
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut c = lock(&self.counts);
        if let Some(n) = c.by_peer.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.by_peer.remove(&self.peer);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Two token buckets per peer: calls (`requests_per_second` on average,
/// up to `request_burst` at once) and the bytes of the read answers it
/// took (`read_bytes_per_second`, up to `read_burst_bytes`), since one
/// list of a whole cluster costs etcd and the front what thousands of
/// small reads do.
#[derive(Clone, Debug)]
pub struct RequestRate {
    rate: f64,
    burst: f64,
    byte_rate: f64,
    byte_burst: f64,
    max_delay: Duration,
    buckets: Arc<Mutex<BTreeMap<String, Buckets>>>,
}

/// One peer's tokens: calls, bytes, and when they were last refilled.
#[derive(Clone, Copy, Debug)]
struct Buckets {
    calls: f64,
    bytes: f64,
    at: Instant,
}

impl RequestRate {
    /// Full buckets for every peer.
    pub fn new(limits: &FrontLimits) -> Self {
        Self {
            rate: limits.requests_per_second,
            burst: limits.request_burst,
            byte_rate: limits.read_bytes_per_second,
            byte_burst: limits.read_burst_bytes,
            max_delay: limits.max_request_delay,
            buckets: Arc::default(),
        }
    }

    fn refill<'a>(
        &self,
        buckets: &'a mut BTreeMap<String, Buckets>,
        peer: &str,
        now: Instant,
    ) -> &'a mut Buckets {
        let b = buckets.entry(peer.to_owned()).or_insert(Buckets {
            calls: self.burst,
            bytes: self.byte_burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.calls = (b.calls + elapsed * self.rate).min(self.burst);
        b.bytes = (b.bytes + elapsed * self.byte_rate).min(self.byte_burst);
        b.at = now;
        b
    }

    /// When `peer` may start a call asked for at `now`: at once, after the
    /// returned delay (its token is taken now, ahead of time, so waiting
    /// calls go one every `1/rate` seconds, and none before the bytes it
    /// read beyond its budget are paid back), or `None`, refused, when that
    /// would be more than the largest delay.
    pub fn reserve(&self, peer: &str, now: Instant) -> Option<Duration> {
        let mut buckets = lock(&self.buckets);
        let b = self.refill(&mut buckets, peer, now);
        let calls = ((1.0 - b.calls) / self.rate).max(0.0);
        let bytes = (-b.bytes / self.byte_rate).max(0.0);
        let wait = Duration::from_secs_f64(calls.max(bytes));
        if wait > self.max_delay {
            return None;
        }
        b.calls -= 1.0;
        Some(wait)
    }

    /// How long a refused call is held before its refusal is answered.
    pub fn refusal_delay(&self) -> Duration {
        self.max_delay
    }

    /// Charges `peer` for `bytes` of read answers taken at `now` (it may go
    /// into debt: the answer is already on its way).
    pub fn charge(&self, peer: &str, bytes: usize, now: Instant) {
        let mut buckets = lock(&self.buckets);
        self.refill(&mut buckets, peer, now).bytes -= bytes as f64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> FrontLimits {
        FrontLimits {
            max_handshakes: 3,
            max_handshakes_per_source: 2,
            max_connections_per_peer: 2,
            requests_per_second: 10.0,
            request_burst: 5.0,
            ..FrontLimits::default()
        }
    }

    #[test]
    fn one_source_cannot_take_every_handshake_and_slots_come_back() {
        let a = Admission::new(limits());
        let (evil, other, third): (IpAddr, IpAddr, IpAddr) = (
            "192.0.2.66".parse().unwrap(),
            "192.0.2.7".parse().unwrap(),
            "192.0.2.8".parse().unwrap(),
        );
        let held: Vec<_> = (0..2).map(|_| a.handshake(evil).unwrap()).collect();
        assert_eq!(a.handshake(evil).unwrap_err(), Busy::SourceHandshakes);
        let other_slot = a.handshake(other).expect("another source still gets in");
        assert_eq!(a.handshake(third).unwrap_err(), Busy::Handshakes);
        drop(held);
        drop(other_slot);
        assert!(a.handshake(evil).is_ok(), "slots are given back");
    }

    #[test]
    fn a_peer_may_hold_only_so_many_connections() {
        let a = Admission::new(limits());
        let held: Vec<_> = (0..2).map(|_| a.connection("b").unwrap()).collect();
        assert_eq!(a.connection("b").unwrap_err(), Busy::PeerConnections);
        assert!(a.connection("c").is_ok(), "other peers are unaffected");
        drop(held);
        assert!(a.connection("b").is_ok());
    }

    #[test]
    fn a_peer_may_hold_only_so_many_watches() {
        let a = Admission::new(FrontLimits {
            max_watches_per_peer: 2,
            ..limits()
        });
        let held: Vec<_> = (0..2).map(|_| a.watch("b").unwrap()).collect();
        assert_eq!(a.watch("b").unwrap_err(), Busy::PeerWatches);
        assert!(a.watch("c").is_ok(), "other peers are unaffected");
        drop(held);
        assert!(a.watch("b").is_ok(), "an ended watch gives its slot back");
    }

    #[test]
    fn requests_beyond_the_rate_wait_their_turn_and_past_the_delay_are_refused_per_peer() {
        let r = RequestRate::new(&limits());
        let t0 = Instant::now();
        let ms = |n| Some(Duration::from_millis(n));
        let at_once: Vec<Option<Duration>> = (0..5).map(|_| r.reserve("b", t0)).collect();
        assert_eq!(at_once, [ms(0); 5], "the burst goes at once");
        // 10/s: the next ones wait 100 ms more each, up to the 1 s delay.
        let paced: Vec<Option<Duration>> = (0..10).map(|_| r.reserve("b", t0)).collect();
        let want: Vec<Option<Duration>> = (1..=10).map(|i| ms(i * 100)).collect();
        for (got, want) in paced.iter().zip(&want) {
            let (got, want) = (got.unwrap().as_millis(), want.unwrap().as_millis());
            assert!(got.abs_diff(want) <= 1, "{paced:?}");
        }
        assert_eq!(r.reserve("b", t0), None, "past the largest delay: refused");
        assert_eq!(r.reserve("c", t0), ms(0), "another peer has its own bucket");
        let later = r.reserve("b", t0 + Duration::from_millis(1100)).unwrap();
        assert!(later.as_millis() <= 1, "{later:?}: the queue has drained");
    }

    #[test]
    fn bytes_read_beyond_the_budget_hold_the_next_call_until_paid_back() {
        let r = RequestRate::new(&FrontLimits {
            read_bytes_per_second: 1000.0,
            read_burst_bytes: 5000.0,
            ..limits()
        });
        let t0 = Instant::now();
        assert_eq!(r.reserve("b", t0), Some(Duration::ZERO));
        r.charge("b", 4000, t0);
        assert_eq!(r.reserve("b", t0), Some(Duration::ZERO), "within the burst");
        r.charge("b", 1500, t0);
        let wait = r.reserve("b", t0).unwrap();
        assert!(
            wait.as_millis().abs_diff(500) <= 1,
            "500 bytes of debt at 1000/s: {wait:?}"
        );
        r.charge("b", 2000, t0);
        assert_eq!(r.reserve("b", t0), None, "2.5 s of debt: past the largest delay");
        assert_eq!(
            r.reserve("c", t0),
            Some(Duration::ZERO),
            "another peer has its own budget"
        );
        let paid = r.reserve("b", t0 + Duration::from_millis(2500)).unwrap();
        assert!(paid.as_millis() <= 1, "{paid:?}");
    }
}
