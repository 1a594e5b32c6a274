//! `knitctl status`: the mesh apiserver's per-peer reports as a table, in
//! the spirit of `cilium clustermesh status`, or as one machine-readable
//! [`StatusReport`] (`-o json|yaml`). Pure: reports and the current time
//! in, text out.

use std::fmt::Write as _;

use knit_kvstore::keys::Kind;
use knit_kvstore::records::PeerStatusRecord;

/// `knitctl status -o json|yaml`: the cluster and every peer report.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StatusReport {
    /// This cluster's name.
    pub cluster: String,
    /// One report per peer, sorted by name.
    pub peers: Vec<PeerStatusRecord>,
}

impl StatusReport {
    /// Peers that are connected and synced.
    pub fn ready_peers(&self) -> Vec<&str> {
        self.peers
            .iter()
            .filter(|p| p.connected && p.synced)
            .map(|p| p.peer.as_str())
            .collect()
    }
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn ago(now: i64, then: Option<i64>) -> String {
    match then {
        Some(t) => format!("{}s ago", (now - t).max(0)),
        None => "never".into(),
    }
}

/// Renders the status of `cluster` from its peer reports.
pub fn render_status(cluster: &str, reports: &[PeerStatusRecord], now_unix: i64) -> String {
    let mut out = String::new();
    let ready = reports.iter().filter(|r| r.connected && r.synced).count();
    let _ = writeln!(
        out,
        "cluster {cluster}: {ready}/{} peers connected and synced",
        reports.len()
    );
    let _ = writeln!(
        out,
        "{:<14} {:<9} {:<6} {:>5} {:>9} {:>10} {:>8} {:>8} {:<10} {:<10}",
        "PEER",
        "CONNECTED",
        "SYNCED",
        "NODES",
        "ENDPOINTS",
        "IDENTITIES",
        "SERVICES",
        "REJECTED",
        "LAST SYNC",
        "WITHDRAWN"
    );
    for r in reports {
        let count = |k: Kind| r.counts.get(&k).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "{:<14} {:<9} {:<6} {:>5} {:>9} {:>10} {:>8} {:>8} {:<10} {:<10}",
            r.peer,
            yes_no(r.connected),
            yes_no(r.synced),
            count(Kind::Nodes),
            count(Kind::Endpoints),
            count(Kind::Identities),
            count(Kind::Services),
            r.rejected.values().sum::<u64>(),
            ago(now_unix, r.last_sync_unix),
            yes_no(r.withdrawn),
        );
        if let Some(e) = &r.last_error {
            let _ = writeln!(out, "  {}: {e}", r.peer);
        }
        for (reason, n) in &r.rejected {
            let _ = writeln!(out, "  {}: rejected {n} record(s): {reason}", r.peer);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_shows_counts_and_problems_per_peer() {
        let mut b = PeerStatusRecord {
            peer: "cluster-b".into(),
            connected: true,
            synced: true,
            last_sync_unix: Some(90),
            ..Default::default()
        };
        b.counts.insert(Kind::Endpoints, 12);
        b.rejected.insert("outside_pod_cidrs".into(), 3);
        let c = PeerStatusRecord {
            peer: "cluster-c".into(),
            last_error: Some("connection refused".into()),
            ..Default::default()
        };
        let t = render_status("cluster-a", &[b, c], 100);
        assert!(
            t.starts_with("cluster cluster-a: 1/2 peers connected and synced"),
            "{t}"
        );
        assert!(t.contains("cluster-b      yes       yes"), "{t}");
        assert!(t.contains("       12 "), "{t}");
        assert!(t.contains("10s ago"), "{t}");
        assert!(
            t.contains("cluster-b: rejected 3 record(s): outside_pod_cidrs"),
            "{t}"
        );
        assert!(t.contains("cluster-c: connection refused"), "{t}");
    }

    #[test]
    fn the_machine_readable_report_round_trips_through_json_and_yaml() {
        let mut b = PeerStatusRecord {
            peer: "cluster-b".into(),
            connected: true,
            synced: true,
            ..Default::default()
        };
        b.counts.insert(Kind::Endpoints, 12);
        let report = StatusReport {
            cluster: "cluster-a".into(),
            peers: vec![
                b,
                PeerStatusRecord {
                    peer: "cluster-c".into(),
                    ..Default::default()
                },
            ],
        };
        let json: StatusReport = serde_json::from_str(&serde_json::to_string(&report).unwrap()).unwrap();
        assert_eq!(json, report);
        let yaml: StatusReport = serde_saphyr::from_str(&serde_saphyr::to_string(&report).unwrap()).unwrap();
        assert_eq!(yaml, report);
        assert_eq!(report.ready_peers(), ["cluster-b"]);
        assert!(
            serde_json::to_string(&report)
                .unwrap()
                .contains("\"endpoints\":12")
        );
    }
}
