//! Leader election among operator replicas, decided without I/O: given the
//! `coordination.k8s.io` Lease as read, who we are and the time, whether
//! to take the lease, renew it or wait, and the spec to write. The thin
//! API layer ([`crate::kube::lease`]) reads and writes the Lease with its
//! resourceVersion, so of two replicas deciding at once only one write
//! lands. As client-go's leader election: a lease whose holder has not
//! renewed within its duration is free.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::LeaseSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

/// The Lease replicas compete for (in the operator's namespace).
pub const LEASE_NAME: &str = "knit-operator";

/// Timing of the election (client-go's defaults).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTimes {
    /// How long a lease holds without renewal; a new leader takes over
    /// within this much after the old one stops.
    pub duration: Duration,
    /// A leader that could not renew for this long steps down (less than
    /// `duration`, so it stops before anyone else may start).
    pub renew_deadline: Duration,
    /// How often a follower tries, and a leader renews.
    pub retry: Duration,
}

impl Default for LeaseTimes {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry: Duration::from_secs(2),
        }
    }
}

/// What to do with the lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nobody holds it (none, released, or expired): take it.
    Acquire,
    /// We hold it: renew it.
    Renew,
    /// Someone else holds it until `until`.
    Follow {
        /// The holder.
        holder: String,
        /// When the lease expires unless renewed.
        until: Timestamp,
    },
}

/// When `spec`'s lease expires unless renewed (none: never held).
pub fn expiry(spec: &LeaseSpec) -> Option<Timestamp> {
    let last = spec.renew_time.as_ref().or(spec.acquire_time.as_ref())?.0;
    let seconds = i64::from(spec.lease_duration_seconds.unwrap_or(0).max(0));
    last.checked_add(jiff::SignedDuration::from_secs(seconds)).ok()
}

/// What `me` should do with the lease `spec` (none: no Lease yet) at `now`.
pub fn decide(spec: Option<&LeaseSpec>, me: &str, now: Timestamp) -> Decision {
    let Some(spec) = spec else {
        return Decision::Acquire;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder.is_empty() {
        return Decision::Acquire;
    }
    if holder == me {
        return Decision::Renew;
    }
    match expiry(spec) {
        Some(until) if until > now => Decision::Follow {
            holder: holder.to_owned(),
            until,
        },
        _ => Decision::Acquire,
    }
}

/// The spec `me` writes on [`Decision::Acquire`] or [`Decision::Renew`] of
/// `current`: a new holder counts a transition and a new acquire time.
pub fn desired(current: Option<&LeaseSpec>, me: &str, now: Timestamp, times: &LeaseTimes) -> LeaseSpec {
    let current = current.cloned().unwrap_or_default();
    let held = current.holder_identity.as_deref() == Some(me);
    let transitions = current.lease_transitions.unwrap_or(0);
    LeaseSpec {
        holder_identity: Some(me.to_owned()),
        lease_duration_seconds: Some(times.duration.as_secs() as i32),
        acquire_time: if held {
            current.acquire_time
        } else {
            Some(MicroTime(now))
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(if held || current.holder_identity.is_none() {
            transitions
        } else {
            transitions + 1
        }),
        ..LeaseSpec::default()
    }
}

/// The spec a leader `me` writes when it stops on purpose (a rollout, a
/// drain), as client-go's `ReleaseOnCancel`: nobody holds it, so another
/// replica takes it on its next retry instead of after the lease duration.
/// None when `me` does not hold `current`.
pub fn released(current: &LeaseSpec, me: &str, now: Timestamp) -> Option<LeaseSpec> {
    (current.holder_identity.as_deref() == Some(me)).then(|| LeaseSpec {
        holder_identity: None,
        lease_duration_seconds: Some(1),
        acquire_time: Some(MicroTime(now)),
        renew_time: Some(MicroTime(now)),
        lease_transitions: current.lease_transitions,
        ..LeaseSpec::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn held_by(holder: &str, renewed: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            acquire_time: Some(MicroTime(at(0))),
            renew_time: Some(MicroTime(at(renewed))),
            lease_transitions: Some(3),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn a_missing_released_or_expired_lease_is_taken_a_live_one_followed() {
        assert_eq!(decide(None, "op-1", at(0)), Decision::Acquire);
        let released = LeaseSpec {
            holder_identity: None,
            ..held_by("op-0", 10)
        };
        assert_eq!(decide(Some(&released), "op-1", at(11)), Decision::Acquire);
        let live = held_by("op-0", 10);
        assert_eq!(
            decide(Some(&live), "op-1", at(24)),
            Decision::Follow {
                holder: "op-0".into(),
                until: at(25)
            }
        );
        // Not renewed for the lease's whole duration: the follower takes over.
        assert_eq!(decide(Some(&live), "op-1", at(25)), Decision::Acquire);
        assert_eq!(decide(Some(&live), "op-0", at(40)), Decision::Renew);
    }

    #[test]
    fn a_takeover_counts_a_transition_and_a_renewal_keeps_the_acquire_time() {
        let times = LeaseTimes::default();
        let old = held_by("op-0", 10);
        let taken = desired(Some(&old), "op-1", at(30), &times);
        assert_eq!(taken.holder_identity.as_deref(), Some("op-1"));
        assert_eq!(taken.lease_transitions, Some(4));
        assert_eq!(taken.acquire_time, Some(MicroTime(at(30))));
        assert_eq!(taken.renew_time, Some(MicroTime(at(30))));
        assert_eq!(taken.lease_duration_seconds, Some(15));
        let renewed = desired(Some(&taken), "op-1", at(32), &times);
        assert_eq!(renewed.lease_transitions, Some(4));
        assert_eq!(renewed.acquire_time, Some(MicroTime(at(30))));
        assert_eq!(renewed.renew_time, Some(MicroTime(at(32))));
        let first = desired(None, "op-0", at(0), &times);
        assert_eq!(first.lease_transitions, Some(0));
        assert_eq!(expiry(&first), Some(at(15)));
    }

    #[test]
    fn only_the_holder_releases_and_a_released_lease_is_taken_at_once() {
        let held = held_by("op-1", 0);
        assert_eq!(released(&held, "op-2", at(1)), None);
        let free = released(&held, "op-1", at(1)).unwrap();
        assert_eq!(free.holder_identity, None);
        assert_eq!(free.lease_transitions, Some(3));
        assert_eq!(decide(Some(&free), "op-2", at(1)), Decision::Acquire);
        let taken = desired(Some(&free), "op-2", at(1), &LeaseTimes::default());
        assert_eq!(
            taken.lease_transitions,
            Some(3),
            "a free lease taken is no transition"
        );
    }
}
