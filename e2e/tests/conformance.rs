//! The upstream Kubernetes NetworkPolicy cases (`knit_e2e::conformance`),
//! each run with all pods in one cluster, with the pods spread over two
//! clusters by namespace, and with every namespace split across the two;
//! every probe to the pods' IPs and through their Services. Prints "N of M upstream cases pass" per layout, with expected
//! and observed truth tables side by side for every failure; fails when a
//! case not listed as a known failure fails.

use knit_e2e::conformance::{Catalog, Layout, Model, Outcome, catalog};

/// Only the cases whose name contains this, when set (for debugging one
/// case; the summary then says so).
const FILTER: &str = "KNIT_CONFORMANCE_CASE";

fn run(catalog: &Catalog, layout: Layout) -> Vec<Outcome> {
    let filter = std::env::var(FILTER).unwrap_or_default();
    let model = Model::start(layout);
    catalog
        .cases
        .iter()
        .enumerate()
        .filter(|(_, case)| case.name.contains(filter.as_str()))
        .map(|(i, case)| model.run(i, case))
        .collect()
}

fn summary(catalog: &Catalog, layout: Layout, outcomes: &[Outcome]) -> (usize, Vec<String>) {
    if let Ok(filter) = std::env::var(FILTER) {
        println!("only the cases whose name contains {filter:?} ({FILTER})");
    }
    let upstream = catalog.upstream_total();
    let passed = outcomes.iter().filter(|o| o.passed).count();
    println!(
        "{passed} of {upstream} upstream cases pass ({}); {} not run here:",
        layout.describe(),
        catalog.not_ported.len()
    );
    for n in &catalog.not_ported {
        println!("  not run: {}: {}", n.name, n.reason);
    }
    let mut unexpected = Vec::new();
    for o in outcomes {
        match (o.passed, &o.known_failure) {
            (true, None) => println!("  pass: {}", o.name),
            (true, Some(_)) => println!(
                "  pass (listed as a known failure; remove it from the list): {}",
                o.name
            ),
            (false, Some(why)) => println!("  known failure: {}: {why}\n{}", o.name, o.report),
            (false, None) => {
                println!("  FAIL: {}\n{}", o.name, o.report);
                unexpected.push(format!("{} ({})", o.name, layout.describe()));
            }
        }
    }
    (passed, unexpected)
}

#[test]
fn upstream_network_policy_cases_in_three_layouts() {
    let catalog = catalog();
    let mut unexpected = Vec::new();
    for layout in Layout::ALL {
        let outcomes = run(&catalog, layout);
        unexpected.extend(summary(&catalog, layout, &outcomes).1);
    }
    assert!(unexpected.is_empty(), "cases failed: {unexpected:?}");
}
