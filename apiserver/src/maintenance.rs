//! Keeps the local etcd writable. etcd compacts its history by itself
//! (`--auto-compaction-retention`), but never returns the freed pages to
//! the file system, and once the file reaches `--quota-backend-bytes` it
//! raises a NOSPACE alarm and refuses every write until someone disarms
//! it: agents and peers would then read a cluster frozen for good.
//!
//! Every `interval`, [`run_maintenance`] reads the member's status and
//! alarms into a [`DbState`], [`plan`] (pure) turns it into [`Step`]s, and
//! the loop carries them out:
//!
//! - NOSPACE raised: compact to the current revision, defragment, disarm
//!   (etcd's documented recovery). When the live data alone still fills
//!   the quota, the alarm comes back on the next write; the log says so.
//! - Mostly free pages: defragment before the file reaches the quota.
//!   Defragmenting blocks the member for a moment, so it is done only when
//!   at least half of the file (and `min_free_bytes`) is free.

use std::time::Duration;

use etcd_client::{AlarmAction, AlarmOptions, AlarmType, Client, CompactionOptions};

use crate::metrics::Metrics;
use crate::{Error, Result};

/// When to defragment.
#[derive(Clone, Debug)]
pub struct MaintenanceSettings {
    /// How often the member's status is read.
    pub interval: Duration,
    /// Free bytes in the file below which it is never defragmented.
    pub min_free_bytes: u64,
}

impl Default for MaintenanceSettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(60),
            min_free_bytes: 64 << 20,
        }
    }
}

/// What the member reported.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DbState {
    /// Size of the database file.
    pub size: u64,
    /// Bytes of it in use (the rest is free pages).
    pub in_use: u64,
    /// The store's current revision.
    pub revision: i64,
    /// Members with a NOSPACE alarm raised.
    pub nospace: Vec<u64>,
}

/// One maintenance action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Drop the history up to this revision.
    Compact(i64),
    /// Give the free pages back.
    Defragment,
    /// Lower the NOSPACE alarm of this member.
    Disarm(u64),
}

/// The steps that keep the member writable, in order.
pub fn plan(state: &DbState, settings: &MaintenanceSettings) -> Vec<Step> {
    if !state.nospace.is_empty() {
        let mut steps = vec![Step::Compact(state.revision), Step::Defragment];
        steps.extend(state.nospace.iter().map(|m| Step::Disarm(*m)));
        return steps;
    }
    let free = state.size.saturating_sub(state.in_use);
    if free >= settings.min_free_bytes && free * 2 >= state.size {
        return vec![Step::Defragment];
    }
    Vec::new()
}

fn etcd(action: &str) -> impl FnOnce(etcd_client::Error) -> Error + '_ {
    move |source| Error::Etcd {
        action: action.to_owned(),
        source,
    }
}

/// Reads the member's status and raised alarms.
pub async fn observe(client: &mut Client) -> Result<DbState> {
    let status = client.status().await.map_err(etcd("reading etcd's status"))?;
    let alarms = client
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .map_err(etcd("listing etcd's alarms"))?;
    Ok(DbState {
        size: u64::try_from(status.db_size()).unwrap_or_default(),
        in_use: u64::try_from(status.raft_used_db_size()).unwrap_or_default(),
        revision: status.header().map(|h| h.revision()).unwrap_or_default(),
        nospace: alarms
            .alarms()
            .iter()
            .filter(|a| a.alarm() == AlarmType::Nospace)
            .map(|a| a.member_id())
            .collect(),
    })
}

/// Carries out `steps` in order; the first failure stops the rest.
pub async fn carry_out(client: &mut Client, steps: &[Step], metrics: &Metrics) -> Result<()> {
    for step in steps {
        match step {
            Step::Compact(revision) => {
                // An already compacted revision is no failure.
                if let Err(e) = client
                    .compact(*revision, Some(CompactionOptions::new().with_physical()))
                    .await
                    && !e.to_string().contains("compacted")
                {
                    return Err(etcd("compacting etcd")(e));
                }
            }
            Step::Defragment => {
                client.defragment().await.map_err(etcd("defragmenting etcd"))?;
                metrics.etcd_defrags.inc();
            }
            Step::Disarm(member) => {
                let mut options = AlarmOptions::new();
                options.with_member(*member);
                client
                    .alarm(AlarmAction::Deactivate, AlarmType::Nospace, Some(options))
                    .await
                    .map_err(etcd("disarming etcd's NOSPACE alarm"))?;
                metrics.etcd_nospace_recoveries.inc();
            }
        }
    }
    Ok(())
}

/// Observes, plans and carries out every `interval`, forever. Failures are
/// logged and tried again on the next round.
pub async fn run_maintenance(mut client: Client, settings: MaintenanceSettings, metrics: Metrics) {
    let mut tick = tokio::time::interval(settings.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let state = match observe(&mut client).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %knit_telemetry::error_chain(&e), "reading etcd's status failed");
                continue;
            }
        };
        metrics.etcd_db_bytes.set(state.size as i64);
        metrics.etcd_db_in_use_bytes.set(state.in_use as i64);
        metrics.etcd_nospace.set(i64::from(!state.nospace.is_empty()));
        let steps = plan(&state, &settings);
        if steps.is_empty() {
            continue;
        }
        if !state.nospace.is_empty() {
            tracing::error!(
                size = state.size,
                in_use = state.in_use,
                "etcd is out of space (NOSPACE alarm): compacting, defragmenting and disarming"
            );
        } else {
            tracing::info!(
                size = state.size,
                in_use = state.in_use,
                "etcd's file is mostly free pages: defragmenting"
            );
        }
        match carry_out(&mut client, &steps, &metrics).await {
            Ok(()) => {
                if let Ok(after) = observe(&mut client).await {
                    metrics.etcd_db_bytes.set(after.size as i64);
                    metrics.etcd_db_in_use_bytes.set(after.in_use as i64);
                    tracing::info!(size = after.size, in_use = after.in_use, "etcd maintenance done");
                }
            }
            Err(e) => {
                tracing::warn!(error = %knit_telemetry::error_chain(&e), "etcd maintenance failed; trying again next round")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn a_nospace_alarm_is_compacted_defragmented_and_disarmed_in_that_order() {
        let state = DbState {
            size: 768 * MIB,
            in_use: 760 * MIB,
            revision: 42,
            nospace: vec![7],
        };
        assert_eq!(
            plan(&state, &MaintenanceSettings::default()),
            [Step::Compact(42), Step::Defragment, Step::Disarm(7)]
        );
    }

    #[test]
    fn only_a_file_mostly_free_is_defragmented() {
        let settings = MaintenanceSettings::default();
        let state = |size, in_use| DbState {
            size,
            in_use,
            revision: 1,
            nospace: Vec::new(),
        };
        assert_eq!(plan(&state(400 * MIB, 100 * MIB), &settings), [Step::Defragment]);
        assert!(
            plan(&state(400 * MIB, 300 * MIB), &settings).is_empty(),
            "mostly in use"
        );
        assert!(
            plan(&state(40 * MIB, MIB), &settings).is_empty(),
            "too little to give back"
        );
    }
}
