//! Status conditions with Kubernetes semantics: keyed by `type`,
//! `lastTransitionTime` moves only when `status` flips, and every condition
//! carries the generation it describes.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// A condition as a render function wants it, before times are settled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    /// Condition type, e.g. `Ready`.
    pub type_: &'static str,
    /// `True`, `False` or `Unknown`.
    pub status: &'static str,
    /// CamelCase reason.
    pub reason: String,
    /// Sentence a person can act on.
    pub message: String,
}

impl Desired {
    /// Shorthand constructor.
    pub fn new(type_: &'static str, status: &'static str, reason: &str, message: impl Into<String>) -> Self {
        Self {
            type_,
            status,
            reason: reason.to_owned(),
            message: message.into(),
        }
    }

    /// Whether the condition holds.
    pub fn is_true(&self) -> bool {
        self.status == "True"
    }
}

/// Builds the new condition list from what exists and what is desired.
/// A condition whose status is unchanged keeps its `lastTransitionTime`.
pub fn settle(
    existing: &[Condition],
    desired: Vec<Desired>,
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    desired
        .into_iter()
        .map(|d| {
            let previous = existing.iter().find(|c| c.type_ == d.type_);
            let last_transition_time = match previous {
                Some(p) if p.status == d.status => p.last_transition_time.clone(),
                _ => Time(now),
            };
            Condition {
                type_: d.type_.to_owned(),
                status: d.status.to_owned(),
                reason: d.reason,
                message: d.message,
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

/// Conditions whose status differs between two lists (for Events).
pub fn flipped<'a>(before: &[Condition], after: &'a [Condition]) -> Vec<&'a Condition> {
    after
        .iter()
        .filter(|c| {
            before
                .iter()
                .find(|b| b.type_ == c.type_)
                .is_none_or(|b| b.status != c.status)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let first = settle(
            &[],
            vec![Desired::new("Ready", "False", "Waiting", "w")],
            Some(1),
            t("2026-01-01T00:00:00Z"),
        );
        assert_eq!(first[0].last_transition_time.0, t("2026-01-01T00:00:00Z"));

        let same = settle(
            &first,
            vec![Desired::new("Ready", "False", "StillWaiting", "w2")],
            Some(2),
            t("2026-01-02T00:00:00Z"),
        );
        assert_eq!(same[0].last_transition_time.0, t("2026-01-01T00:00:00Z"));
        assert_eq!(same[0].observed_generation, Some(2));
        assert_eq!(same[0].reason, "StillWaiting");
        assert!(flipped(&first, &same).is_empty());

        let flip = settle(
            &same,
            vec![Desired::new("Ready", "True", "Ok", "")],
            Some(2),
            t("2026-01-03T00:00:00Z"),
        );
        assert_eq!(flip[0].last_transition_time.0, t("2026-01-03T00:00:00Z"));
        assert_eq!(flipped(&same, &flip).len(), 1);
    }
}
