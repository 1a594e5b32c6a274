//! The upstream cases as data: `cases.yaml` (its header says the format)
//! read into [`Case`]s. Reading checks every name against the model (a peer,
//! a relabelled pod or namespace, a policy's namespace) and fails naming the
//! case and the field, so a typo never turns into a silently empty table.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{ANY, Case, NAMESPACES, Peer, Policy, Probe, Reachability, Relabel, Step, model_pods};

/// The cases file, compiled in.
const CASES_YAML: &str = include_str!("cases.yaml");

/// An upstream case not run here, and why.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotPorted {
    /// Upstream's name for it.
    pub name: String,
    /// Why it does not run here.
    pub reason: String,
}

/// Every upstream case: those ported, in upstream's order, and those not.
#[derive(Clone, Debug)]
pub struct Catalog {
    /// The ported cases.
    pub cases: Vec<Case>,
    /// The cases not run here.
    pub not_ported: Vec<NotPorted>,
}

impl Catalog {
    /// Upstream's total: cases ported plus cases not.
    pub fn upstream_total(&self) -> usize {
        self.cases.len() + self.not_ported.len()
    }
}

/// The compiled-in catalog (`cases.yaml`); its unit test keeps it readable.
pub fn catalog() -> Catalog {
    read(CASES_YAML).unwrap_or_else(|e| panic!("e2e/src/conformance/cases.yaml: {e}"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CasesFile {
    not_ported: Vec<NotPorted>,
    cases: Vec<CaseEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseEntry {
    name: String,
    steps: Vec<StepEntry>,
    #[serde(default)]
    known_failure: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StepEntry {
    #[serde(default)]
    relabel: Vec<RelabelEntry>,
    #[serde(default)]
    policies: Vec<PolicyEntry>,
    probes: Vec<ProbeEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RelabelEntry {
    #[serde(default)]
    pod: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyEntry {
    namespace: String,
    name: String,
    spec: serde_json::Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProbeEntry {
    #[serde(default)]
    tcp: Option<u16>,
    #[serde(default)]
    udp: Option<u16>,
    expect: Vec<ExpectEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectEntry {
    from: String,
    to: String,
    allowed: bool,
}

/// Reads a cases file; an error names the case and the field at fault.
pub fn read(text: &str) -> Result<Catalog, String> {
    let file: CasesFile = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
    let cases = file
        .cases
        .into_iter()
        .map(|c| {
            let steps = c
                .steps
                .into_iter()
                .enumerate()
                .map(|(i, s)| step(s).map_err(|e| format!("step {}: {e}", i + 1)))
                .collect::<Result<_, _>>()
                .map_err(|e| format!("case {:?}: {e}", c.name))?;
            Ok(Case {
                name: c.name,
                steps,
                known_failure: c.known_failure,
            })
        })
        .collect::<Result<_, String>>()?;
    Ok(Catalog {
        cases,
        not_ported: file.not_ported,
    })
}

fn step(entry: StepEntry) -> Result<Step, String> {
    Ok(Step {
        relabels: entry.relabel.into_iter().map(relabel).collect::<Result<_, _>>()?,
        policies: entry
            .policies
            .into_iter()
            .map(|p| {
                Ok(Policy {
                    namespace: namespace(&p.namespace)
                        .ok_or_else(|| format!("policies: namespace {:?} is not x, y or z", p.namespace))?,
                    name: p.name,
                    spec: typed(p.spec)?.to_string(),
                })
            })
            .collect::<Result<_, String>>()?,
        probes: entry.probes.into_iter().map(probe).collect::<Result<_, _>>()?,
    })
}

fn relabel(entry: RelabelEntry) -> Result<Relabel, String> {
    let labels = entry.labels.into_iter().collect();
    match (entry.pod, entry.namespace) {
        (Some(p), None) => match peer(&p)? {
            Peer {
                namespace: Some(ns),
                pod: Some(pod),
            } => Ok(Relabel::Pod((ns, pod), labels)),
            _ => Err(format!("relabel: pod {p:?} is not one pod (write it as x/a)")),
        },
        (None, Some(n)) => namespace(&n)
            .map(|ns| Relabel::Namespace(ns, labels))
            .ok_or_else(|| format!("relabel: namespace {n:?} is not x, y or z")),
        _ => Err("relabel: give either `pod` or `namespace`".to_owned()),
    }
}

fn probe(entry: ProbeEntry) -> Result<Probe, String> {
    let (port, udp) = match (entry.tcp, entry.udp) {
        (Some(p), None) => (p, false),
        (None, Some(p)) => (p, true),
        _ => return Err("probes: give either `tcp: <port>` or `udp: <port>`".to_owned()),
    };
    let mut expect = Reachability::all();
    for e in entry.expect {
        let from = peer(&e.from).map_err(|err| format!("expect.from: {err}"))?;
        let to = peer(&e.to).map_err(|err| format!("expect.to: {err}"))?;
        expect = expect.expect_peer(from, to, e.allowed);
    }
    Ok(Probe { port, udp, expect })
}

/// `*`, `x` or `x/a`, resolved to the model's own names.
fn peer(text: &str) -> Result<Peer, String> {
    if text == "*" {
        return Ok(ANY);
    }
    let unknown = || format!("{text:?} is not `*`, a namespace (x) or a pod (x/a) of the model");
    match text.split_once('/') {
        None => namespace(text).map(super::ns).ok_or_else(unknown),
        Some((n, p)) => model_pods()
            .into_iter()
            .find(|m| *m == (n, p))
            .map(|(n, p)| super::pod(n, p))
            .ok_or_else(unknown),
    }
}

fn namespace(text: &str) -> Option<&'static str> {
    NAMESPACES.iter().copied().find(|n| *n == text)
}

/// The spec with `policyTypes` as upstream's policy builders set it: each
/// rule list the spec has names its type; an explicit list is kept.
fn typed(mut spec: serde_json::Value) -> Result<serde_json::Value, String> {
    let map = spec.as_object_mut().ok_or("policies: spec is not a mapping")?;
    if !map.contains_key("policyTypes") {
        let types: Vec<serde_json::Value> = [("ingress", "Ingress"), ("egress", "Egress")]
            .into_iter()
            .filter(|(list, _)| map.contains_key(*list))
            .map(|(_, t)| t.into())
            .collect();
        map.insert("policyTypes".to_owned(), types.into());
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalog_holds_all_48_upstream_cases() {
        let catalog = catalog();
        assert_eq!(catalog.cases.len(), 45);
        assert_eq!(catalog.upstream_total(), 48);
        assert!(
            catalog
                .not_ported
                .iter()
                .all(|n| n.name.starts_with("using SCTP:"))
        );
        let mut names: Vec<&str> = catalog.cases.iter().map(|c| c.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), 45, "case names are unique");
    }

    #[test]
    fn a_probe_applies_its_expectations_in_order() {
        let catalog = catalog();
        let case = catalog
            .cases
            .iter()
            .find(|c| c.name == "should enforce policy based on any PodSelectors")
            .expect("case");
        let want = Reachability::all()
            .expect_all_ingress(super::super::pod("x", "a"), false)
            .expect_peer(super::super::pod("x", "b"), super::super::pod("x", "a"), true)
            .expect_peer(super::super::pod("x", "c"), super::super::pod("x", "a"), true);
        assert_eq!(case.steps[0].probes[0].expect, want);
        assert_eq!(
            (case.steps[0].probes[0].port, case.steps[0].probes[0].udp),
            (80, false)
        );
    }

    #[test]
    fn a_spec_gets_the_policy_types_of_its_rule_lists_unless_it_names_them() {
        let catalog = catalog();
        let spec = |case: &str| -> serde_json::Value {
            let c = catalog.cases.iter().find(|c| c.name == case).expect("case");
            serde_json::from_str(&c.steps[0].policies[0].spec).expect("json")
        };
        assert_eq!(
            spec("should allow egress access on one named port")["policyTypes"],
            serde_json::json!(["Egress"])
        );
        assert_eq!(
            spec("should work with Ingress, Egress specified together")["policyTypes"],
            serde_json::json!(["Egress", "Ingress"])
        );
    }

    #[test]
    fn a_name_outside_the_model_is_an_error_naming_the_case_and_field() {
        let file = |expect: &str| {
            format!(
                "not_ported: []\ncases:\n- name: typo\n  steps:\n  - probes:\n    - tcp: 80\n      expect:\n      - {expect}\n"
            )
        };
        let err = read(&file("{from: w, to: x/a, allowed: false}")).unwrap_err();
        assert!(
            err.contains("case \"typo\"") && err.contains("expect.from") && err.contains("\"w\""),
            "{err}"
        );
        let err = read(&file("{from: x, to: x/d, allowed: false}")).unwrap_err();
        assert!(err.contains("expect.to") && err.contains("\"x/d\""), "{err}");
        let err = read("not_ported: []\ncases:\n- name: n\n  steps:\n  - probes:\n    - {tcp: 80, udp: 80, expect: []}\n").unwrap_err();
        assert!(err.contains("either `tcp: <port>` or `udp: <port>`"), "{err}");
        let err = read("not_ported: []\ncases:\n- name: n\n  stepz: []\n").unwrap_err();
        assert!(err.contains("stepz"), "{err}");
    }
}
