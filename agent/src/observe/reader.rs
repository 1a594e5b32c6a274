//! Drains the datapath's ring buffer (`knit_events`) every
//! [`DRAIN_EVERY`]: every event goes into the [`FlowLog`] with its
//! wall-clock time and is counted in `knit_agent_flow_events` by verdict,
//! reason and peer cluster; the ring's lost count is copied to
//! `knit_agent_flow_events_lost`. The programs never wake the reader (a
//! wakeup per event cost a busy node 16 % of its connections per second
//! in `make bench`); the ring holds about 21,000 events, a period's worth
//! at 200,000 events a second.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aya::maps::{Array, MapData, RingBuf};
use knit_datapath_common::FlowEvent;
use tokio::sync::watch;

use super::describe::{drop_reason_name, verdict_of};
use super::log::FlowLog;
use crate::metrics::{FlowLabels, Metrics};

/// How often the ring is drained.
pub const DRAIN_EVERY: Duration = Duration::from_millis(100);

/// Nanoseconds to add to a `CLOCK_MONOTONIC` time for the wall clock.
fn monotonic_to_wall() -> u128 {
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let mono = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u128 * 1_000_000_000 + t.tv_nsec() as u128)
        .unwrap_or_default();
    wall.saturating_sub(mono)
}

/// The labels an event is counted under.
pub fn labels(event: &FlowEvent, clusters: &BTreeMap<u32, String>) -> FlowLabels {
    let verdict = verdict_of(event).name();
    let remote = [event.src_identity, event.dst_identity]
        .into_iter()
        .find(|id| *id != 0)
        .map(knit_kvstore::records::identity_cluster);
    FlowLabels {
        verdict,
        reason: match event.kind {
            knit_datapath_common::EVENT_DROP => drop_reason_name(event.reason),
            _ => verdict.to_owned(),
        },
        cluster: remote
            .and_then(|id| clusters.get(&id).cloned())
            .unwrap_or_default(),
    }
}

/// Drains `ring` into `log` until the task is dropped. `clusters` names
/// cluster IDs for the metric labels.
pub async fn run(
    mut ring: RingBuf<MapData>,
    lost: Array<MapData, u64>,
    log: Arc<Mutex<FlowLog>>,
    clusters: watch::Receiver<BTreeMap<u32, String>>,
    metrics: Metrics,
) {
    let mut tick = tokio::time::interval(DRAIN_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch = Vec::new();
    loop {
        tick.tick().await;
        while let Some(item) = ring.next() {
            batch.extend(FlowEvent::from_bytes(&item));
        }
        if let Ok(n) = lost.get(&0, 0) {
            metrics.flow_events_lost.set(n as i64);
        }
        if batch.is_empty() {
            continue;
        }
        // Counted before served: whoever sees an event sees it counted.
        let names = clusters.borrow().clone();
        let mut counts: HashMap<FlowLabels, u64> = HashMap::new();
        for e in &batch {
            *counts.entry(labels(e, &names)).or_default() += 1;
        }
        for (labels, n) in counts {
            metrics.flow_events.get_or_create(&labels).inc_by(n);
        }
        let offset = monotonic_to_wall();
        {
            let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
            for e in batch.drain(..) {
                log.push(offset + u128::from(e.timestamp), e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use knit_datapath_common::{DropReason, EVENT_DROP, EVENT_POLICY, EVENT_TRANSLATION};

    use super::*;

    #[test]
    fn events_are_counted_by_verdict_reason_and_the_remote_cluster() {
        let clusters = BTreeMap::from([(2, "cluster-b".to_owned())]);
        let denied = FlowEvent {
            kind: EVENT_DROP,
            reason: DropReason::Policy as u8,
            src_identity: (2 << 15) | 9,
            dst_identity: (1 << 15) | 4,
            ..Default::default()
        };
        assert_eq!(
            labels(&denied, &clusters),
            FlowLabels {
                verdict: "denied",
                reason: "policy_denied".into(),
                cluster: "cluster-b".into()
            }
        );
        let allowed = FlowEvent {
            kind: EVENT_POLICY,
            dst_identity: (2 << 15) | 9,
            ..Default::default()
        };
        assert_eq!(
            (
                labels(&allowed, &clusters).reason,
                labels(&allowed, &clusters).cluster
            ),
            ("allowed".to_owned(), "cluster-b".to_owned())
        );
        let translated = FlowEvent {
            kind: EVENT_TRANSLATION,
            ..Default::default()
        };
        assert_eq!(labels(&translated, &clusters).cluster, "");
    }

    #[test]
    fn the_wall_clock_offset_is_the_boot_time() {
        let boot = monotonic_to_wall();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
        assert!(boot > 0 && boot < now);
    }
}
