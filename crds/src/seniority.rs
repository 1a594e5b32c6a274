//! Which of two clashing objects wins: one rule, used by every clash.
//!
//! Two GlobalServicePolicies selecting one Service (the export and the
//! policies' status must agree on the governing one), and two
//! ClusterMeshPeers naming one cluster: the older object wins
//! (`metadata.creationTimestamp`), then the smaller name. An object
//! without a timestamp (not yet stored) sorts first, as `None` does.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;

/// An object's rank in a clash: the smallest wins.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Seniority {
    created: Option<Timestamp>,
    name: String,
}

impl Seniority {
    /// The rank of an object created at `created` named `name`.
    pub fn new(created: Option<Timestamp>, name: &str) -> Self {
        Self {
            created,
            name: name.to_owned(),
        }
    }

    /// The rank of the object `meta` describes.
    pub fn of(meta: &ObjectMeta) -> Self {
        Self::new(
            meta.creation_timestamp.as_ref().map(|t| t.0),
            meta.name.as_deref().unwrap_or_default(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_older_wins_then_the_smaller_name() {
        let at = |s: &str| Some(s.parse::<Timestamp>().unwrap());
        let old_z = Seniority::new(at("2026-01-01T00:00:00Z"), "z");
        let new_a = Seniority::new(at("2026-06-01T00:00:00Z"), "a");
        let new_b = Seniority::new(at("2026-06-01T00:00:00Z"), "b");
        assert!(old_z < new_a, "older beats a smaller name");
        assert!(new_a < new_b, "same age: the smaller name");
        let mut meta = ObjectMeta {
            name: Some("z".into()),
            ..ObjectMeta::default()
        };
        meta.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            "2026-01-01T00:00:00Z".parse().unwrap(),
        ));
        assert_eq!(Seniority::of(&meta), old_z);
    }
}
