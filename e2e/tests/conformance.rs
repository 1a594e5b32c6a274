//! The upstream Kubernetes NetworkPolicy cases (`knit_e2e::conformance`),
//! each run with all pods in one cluster, with the pods spread over two
//! clusters by namespace, and with every namespace split across the two;
//! every probe to the pods' IPs and through their Services. Prints "N of M upstream cases pass" per layout, with expected
//! and observed truth tables side by side for every failure; fails when a
//! case not listed as a known failure fails. The split layout runs again
//! with both clusters in native and in hybrid routing.

use knit_e2e::conformance::{Catalog, Layout, Model, Outcome, catalog};
use knit_kvstore::records::RoutingMode;

/// Only the cases whose name contains this, when set (for debugging one
/// case; the summary then says so).
const FILTER: &str = "KNIT_CONFORMANCE_CASE";

fn run(catalog: &Catalog, layout: Layout, routing: RoutingMode) -> Vec<Outcome> {
    let filter = std::env::var(FILTER).unwrap_or_default();
    let model = Model::start_routed(layout, routing);
    catalog
        .cases
        .iter()
        .enumerate()
        .filter(|(_, case)| case.name.contains(filter.as_str()))
        .map(|(i, case)| model.run(i, case))
        .collect()
}

fn summary(
    catalog: &Catalog,
    layout: Layout,
    routing: RoutingMode,
    outcomes: &[Outcome],
) -> (usize, Vec<String>) {
    if let Ok(filter) = std::env::var(FILTER) {
        println!("only the cases whose name contains {filter:?} ({FILTER})");
    }
    let upstream = catalog.upstream_total();
    let passed = outcomes.iter().filter(|o| o.passed).count();
    println!(
        "{passed} of {upstream} upstream cases pass ({}, routing {routing}); {} not run here:",
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
                unexpected.push(format!("{} ({}, routing {routing})", o.name, layout.describe()));
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
        let outcomes = run(&catalog, layout, RoutingMode::Tunnel);
        unexpected.extend(summary(&catalog, layout, RoutingMode::Tunnel, &outcomes).1);
    }
    assert!(unexpected.is_empty(), "cases failed: {unexpected:?}");
}

/// Without the tunnel the receiving node learns the source's identity from
/// its address alone: every case must still give the same truth tables,
/// with every namespace split across the clusters (every policy's targets
/// and peers on both clusters and both nodes of each).
#[test]
fn upstream_network_policy_cases_across_clusters_in_native_and_hybrid_routing() {
    let catalog = catalog();
    let mut unexpected = Vec::new();
    for routing in [RoutingMode::Native, RoutingMode::Hybrid] {
        let outcomes = run(&catalog, Layout::SplitNamespaces, routing);
        unexpected.extend(summary(&catalog, Layout::SplitNamespaces, routing, &outcomes).1);
    }
    assert!(unexpected.is_empty(), "cases failed: {unexpected:?}");
}
