//! Cilium-compatible Service annotations.
//!
//! A Service annotated `service.cilium.io/global: "true"` behaves as if a
//! `GlobalServicePolicy` selected it; `service.cilium.io/shared` and
//! `service.cilium.io/affinity` map to `export` and `affinity`. Cilium has no
//! annotation for a failover threshold or a cluster preference order, so
//! those come only from a `GlobalServicePolicy`. This module
//! turns annotations into the same [`ServicePolicy`] a policy yields, so the
//! rest of Knit never looks at annotations.

use crate::{Affinity, Error, Failover, GlobalServicePolicySpec, Result};

/// Marks a Service global (Cilium's annotation).
pub const GLOBAL: &str = "service.cilium.io/global";
/// Older spelling of [`GLOBAL`] that Cilium still honours.
pub const GLOBAL_LEGACY: &str = "io.cilium/global-service";
/// `"false"` keeps this cluster's backends to itself (export = false).
pub const SHARED: &str = "service.cilium.io/shared";
/// `local`, `remote` or `none`.
pub const AFFINITY: &str = "service.cilium.io/affinity";
/// Older spelling of [`AFFINITY`] that Cilium still honours.
pub const AFFINITY_LEGACY: &str = "io.cilium/service-affinity";

/// Every annotation [`policy_from_annotations`] reads: a reader may keep
/// only these of a Service's annotations.
pub const POLICY_ANNOTATIONS: [&str; 5] = [GLOBAL, GLOBAL_LEGACY, SHARED, AFFINITY, AFFINITY_LEGACY];

/// How one Service takes part in the mesh, whatever declared it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePolicy {
    /// Share local backends with peers.
    pub export: bool,
    /// Use peers' backends.
    pub import: bool,
    /// Preferred side.
    pub affinity: Affinity,
    /// Peer clusters whose backends may be used; `None` means all.
    pub clusters: Option<Vec<String>>,
    /// Clusters in order of preference after the affinity's side.
    pub preferred_clusters: Vec<String>,
    /// When traffic moves on from the preferred clusters.
    pub failover: Failover,
}

impl From<&GlobalServicePolicySpec> for ServicePolicy {
    fn from(spec: &GlobalServicePolicySpec) -> Self {
        Self {
            export: spec.export,
            import: spec.import,
            affinity: spec.affinity,
            clusters: spec.clusters.clone(),
            preferred_clusters: spec.preferred_clusters.clone().unwrap_or_default(),
            failover: spec.failover.unwrap_or_default(),
        }
    }
}

/// Reads the Cilium annotations of a Service. `Ok(None)` when the Service is
/// not global; an error names the annotation and the values it accepts.
pub fn policy_from_annotations<'a>(
    annotations: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Result<Option<ServicePolicy>> {
    let mut found: [Option<&str>; POLICY_ANNOTATIONS.len()] = [None; POLICY_ANNOTATIONS.len()];
    for (key, value) in annotations {
        if let Some(i) = POLICY_ANNOTATIONS.iter().position(|a| *a == key.as_str()) {
            found[i] = Some(value.as_str());
        }
    }
    let annotations = Found(found);
    let global = match annotations.get(GLOBAL).or_else(|| annotations.get(GLOBAL_LEGACY)) {
        None => return Ok(None),
        Some(v) => parse_bool(GLOBAL, v)?,
    };
    if !global {
        return Ok(None);
    }
    let export = match annotations.get(SHARED) {
        None => true,
        Some(v) => parse_bool(SHARED, v)?,
    };
    let affinity = match annotations
        .get(AFFINITY)
        .or_else(|| annotations.get(AFFINITY_LEGACY))
        .map(|v| v.trim().to_ascii_lowercase())
    {
        None => Affinity::None,
        Some(v) => match v.as_str() {
            "local" => Affinity::Local,
            "remote" => Affinity::Remote,
            "none" | "" => Affinity::None,
            _ => {
                return Err(Error::InvalidAnnotation {
                    annotation: AFFINITY,
                    value: v,
                    expected: "local, remote or none",
                });
            }
        },
    };
    Ok(Some(ServicePolicy {
        export,
        import: true,
        affinity,
        clusters: None,
        preferred_clusters: Vec::new(),
        failover: Failover::default(),
    }))
}

/// The policy annotations a Service carries, by name.
struct Found<'a>([Option<&'a str>; POLICY_ANNOTATIONS.len()]);

impl<'a> Found<'a> {
    fn get(&self, name: &str) -> Option<&'a str> {
        let i = POLICY_ANNOTATIONS.iter().position(|a| *a == name)?;
        self.0[i]
    }
}

fn parse_bool(annotation: &'static str, value: &str) -> Result<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(Error::InvalidAnnotation {
            annotation,
            value: value.to_owned(),
            expected: "\"true\" or \"false\"",
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn unannotated_and_non_global_services_are_not_global() {
        assert_eq!(policy_from_annotations(&annotations(&[])).unwrap(), None);
        assert_eq!(
            policy_from_annotations(&annotations(&[(GLOBAL, "false")])).unwrap(),
            None
        );
    }

    #[test]
    fn global_service_defaults_to_shared_without_affinity() {
        let p = policy_from_annotations(&annotations(&[(GLOBAL, "true")]))
            .unwrap()
            .unwrap();
        assert!(p.export && p.import);
        assert_eq!(p.affinity, Affinity::None);
    }

    #[test]
    fn shared_false_and_affinity_map_to_export_and_affinity() {
        let p = policy_from_annotations(&annotations(&[
            (GLOBAL_LEGACY, "True"),
            (SHARED, "false"),
            (AFFINITY, "local"),
        ]))
        .unwrap()
        .unwrap();
        assert!(!p.export && p.import);
        assert_eq!(p.affinity, Affinity::Local);
    }

    #[test]
    fn the_cilium_users_legacy_spellings_work_as_written() {
        // A Service annotated `io.cilium/global-service: "true"` with
        // `io.cilium/service-affinity: local`.
        let p = policy_from_annotations(&annotations(&[
            (GLOBAL_LEGACY, "true"),
            (AFFINITY_LEGACY, "local"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!((p.export, p.affinity), (true, Affinity::Local));
    }

    #[test]
    fn bad_values_name_the_annotation_and_the_fix() {
        let err = policy_from_annotations(&annotations(&[(GLOBAL, "yes")])).unwrap_err();
        assert!(
            err.to_string().contains(GLOBAL) && err.to_string().contains("\"true\""),
            "{err}"
        );
        let err = policy_from_annotations(&annotations(&[(GLOBAL, "true"), (AFFINITY, "near")])).unwrap_err();
        assert!(
            err.to_string().contains(AFFINITY) && err.to_string().contains("local, remote or none"),
            "{err}"
        );
    }
}
