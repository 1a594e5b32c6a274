//! Resolution of GlobalServicePolicies within one namespace.
//!
//! Input: the namespace's Services (name and labels) and its policies.
//! Output: each policy's status: the Services it governs, the Services it
//! selects but loses to an older policy (oldest `creationTimestamp` wins,
//! then name), and its conditions. Pure; the controller feeds it from
//! reflector stores and patches the statuses that changed.

use std::collections::BTreeMap;

use jiff::Timestamp;
use knit_crds::{GlobalServicePolicySpec, GlobalServicePolicyStatus, ServiceConflict};

use crate::conditions::{self, Desired};

/// A Service as the resolution needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceLabels {
    /// Service name.
    pub name: String,
    /// Service labels.
    pub labels: BTreeMap<String, String>,
}

/// A policy as the resolution needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyInput {
    /// Policy name.
    pub name: String,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// `metadata.creationTimestamp`.
    pub created: Option<Timestamp>,
    /// The spec.
    pub spec: GlobalServicePolicySpec,
    /// Status as stored.
    pub status: Option<GlobalServicePolicyStatus>,
}

/// Desired status of every policy in the namespace, by policy name.
pub fn resolve_policies(
    services: &[ServiceLabels],
    policies: &[PolicyInput],
    now: Timestamp,
) -> BTreeMap<String, GlobalServicePolicyStatus> {
    let mut ordered: Vec<&PolicyInput> = policies.iter().collect();
    ordered.sort_by_key(|p| knit_crds::Seniority::new(p.created, &p.name));

    let mut governed_by: BTreeMap<&str, &str> = BTreeMap::new();
    let mut matched: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut conflicts: BTreeMap<&str, Vec<ServiceConflict>> = BTreeMap::new();
    let mut missing: BTreeMap<&str, Vec<String>> = BTreeMap::new();

    for policy in &ordered {
        let selected = selected_services(&policy.spec, services, missing.entry(&policy.name).or_default());
        for service in selected {
            match governed_by.get(service) {
                Some(winner) => conflicts.entry(&policy.name).or_default().push(ServiceConflict {
                    service: service.to_owned(),
                    governed_by: (*winner).to_owned(),
                }),
                None => {
                    governed_by.insert(service, &policy.name);
                    matched.entry(&policy.name).or_default().push(service.to_owned());
                }
            }
        }
    }

    ordered
        .iter()
        .map(|policy| {
            let mut matched_services = matched.remove(policy.name.as_str()).unwrap_or_default();
            matched_services.sort();
            let conflicts = conflicts.remove(policy.name.as_str()).unwrap_or_default();
            let missing = missing.remove(policy.name.as_str()).unwrap_or_default();
            let old = policy.status.clone().unwrap_or_default();

            let mut ready_msg = format!("governs {} service(s)", matched_services.len());
            if !missing.is_empty() {
                ready_msg.push_str(&format!("; not found in this namespace: {}", missing.join(", ")));
            }
            let ready = if matched_services.is_empty() && conflicts.is_empty() {
                Desired::new(
                    "Ready",
                    "False",
                    "NoServices",
                    format!("{ready_msg}; nothing to do until a selected Service exists"),
                )
            } else {
                Desired::new("Ready", "True", "Resolved", ready_msg)
            };
            let conflict = if conflicts.is_empty() {
                Desired::new(
                    "Conflict",
                    "False",
                    "NoConflict",
                    "no other policy selects these services",
                )
            } else {
                let list: Vec<String> = conflicts
                    .iter()
                    .map(|c| format!("{} (governed by {})", c.service, c.governed_by))
                    .collect();
                Desired::new(
                    "Conflict",
                    "True",
                    "SelectedByOlderPolicy",
                    format!(
                        "an older policy governs {}; narrow this policy's selection",
                        list.join(", ")
                    ),
                )
            };
            let status = GlobalServicePolicyStatus {
                conditions: conditions::settle(
                    &old.conditions,
                    vec![ready, conflict],
                    policy.generation,
                    now,
                ),
                observed_generation: policy.generation,
                matched_services,
                conflicts,
                backends_per_cluster: old.backends_per_cluster,
            };
            (policy.name.clone(), status)
        })
        .collect()
}

fn selected_services<'s>(
    spec: &GlobalServicePolicySpec,
    services: &'s [ServiceLabels],
    missing: &mut Vec<String>,
) -> Vec<&'s str> {
    for name in spec.services.iter().flatten() {
        if !services.iter().any(|s| &s.name == name) {
            missing.push(name.clone());
        }
    }
    let mut out: Vec<&str> = services
        .iter()
        .filter(|s| spec.selects(&s.name, &s.labels))
        .map(|s| s.name.as_str())
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use knit_crds::{Affinity, ServiceSelector};

    fn svc(name: &str, app: &str) -> ServiceLabels {
        ServiceLabels {
            name: name.into(),
            labels: BTreeMap::from([("app".into(), app.into())]),
        }
    }

    fn policy(name: &str, created: &str, services: Option<&[&str]>, app: Option<&str>) -> PolicyInput {
        PolicyInput {
            name: name.into(),
            generation: Some(1),
            created: Some(created.parse().unwrap()),
            spec: GlobalServicePolicySpec {
                services: services.map(|s| s.iter().map(|x| x.to_string()).collect()),
                selector: app.map(|a| ServiceSelector {
                    match_labels: BTreeMap::from([("app".into(), a.into())]),
                    match_expressions: vec![],
                }),
                export: true,
                import: true,
                affinity: Affinity::Local,
                clusters: None,
                preferred_clusters: None,
                failover: None,
            },
            status: None,
        }
    }

    fn now() -> Timestamp {
        "2026-03-01T00:00:00Z".parse().unwrap()
    }

    fn cond<'a>(
        s: &'a GlobalServicePolicyStatus,
        t: &str,
    ) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn names_and_selectors_resolve_and_missing_names_are_reported() {
        let services = [svc("web", "web"), svc("api", "api"), svc("web-canary", "web")];
        let out = resolve_policies(
            &services,
            &[
                policy("by-name", "2026-01-01T00:00:00Z", Some(&["api", "ghost"]), None),
                policy("by-label", "2026-01-02T00:00:00Z", None, Some("web")),
            ],
            now(),
        );
        assert_eq!(out["by-name"].matched_services, vec!["api"]);
        assert!(
            cond(&out["by-name"], "Ready")
                .message
                .contains("not found in this namespace: ghost")
        );
        assert_eq!(out["by-label"].matched_services, vec!["web", "web-canary"]);
        assert_eq!(cond(&out["by-label"], "Conflict").status, "False");
    }

    #[test]
    fn two_policies_selecting_one_service_conflict_and_the_oldest_wins() {
        let services = [svc("web", "web")];
        let newer = policy("newer", "2026-02-01T00:00:00Z", Some(&["web"]), None);
        let older = policy("older", "2026-01-01T00:00:00Z", None, Some("web"));
        let out = resolve_policies(&services, &[newer, older], now());
        assert_eq!(out["older"].matched_services, vec!["web"]);
        assert!(out["newer"].matched_services.is_empty());
        assert_eq!(
            out["newer"].conflicts,
            vec![ServiceConflict {
                service: "web".into(),
                governed_by: "older".into()
            }]
        );
        let c = cond(&out["newer"], "Conflict");
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "SelectedByOlderPolicy")
        );
        assert_eq!(cond(&out["older"], "Conflict").status, "False");
    }

    #[test]
    fn resolving_twice_yields_identical_status_so_the_controller_does_not_retrigger() {
        let services = [svc("web", "web")];
        let mut p = policy("p", "2026-01-01T00:00:00Z", Some(&["web"]), None);
        let first = resolve_policies(&services, std::slice::from_ref(&p), now());
        p.status = Some(first["p"].clone());
        let later: Timestamp = "2026-03-05T00:00:00Z".parse().unwrap();
        let second = resolve_policies(&services, &[p], later);
        assert_eq!(first, second);
    }
}
