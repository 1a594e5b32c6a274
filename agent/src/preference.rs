//! Which clusters' backends one service port uses: affinity, the cluster
//! preference order and the failover threshold, as one pure choice.
//!
//! The clusters are put in tiers, most preferred first:
//! - affinity `local`: this cluster, then each of `preferredClusters` in
//!   order, then every other cluster together;
//! - affinity `remote`: each preferred peer in order, then every other
//!   peer, then this cluster;
//! - affinity `none`: each of `preferredClusters` in order, then every other
//!   cluster (with no preference, one tier of everything).
//!
//! Tiers are added in order until the backends chosen so far meet the
//! [`Failover`] threshold: at least `minReadyBackends` ready, and at least
//! `minReadyPercent` of the chosen tiers' backends ready. The default
//! threshold (1, 0 %) moves on only when no backend is ready, which is the
//! all-or-nothing affinity Cilium has.

use std::net::SocketAddrV4;

use knit_kvstore::records::{Affinity, Failover};

/// One cluster's backends for one service port.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterPortBackends {
    /// Cluster name.
    pub cluster: String,
    /// Backends that may take new connections.
    pub ready: Vec<SocketAddrV4>,
    /// All its backends for this port, ready or not.
    pub total: usize,
}

/// How a service chooses among clusters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Preference<'a> {
    /// This cluster's name.
    pub local: &'a str,
    /// The side preferred first.
    pub affinity: Affinity,
    /// Clusters in order of preference after the affinity's side.
    pub preferred: &'a [String],
    /// When to add the next tier.
    pub failover: Failover,
}

/// The backends `preference` chooses from `clusters` (sorted, unique).
pub fn choose(preference: &Preference<'_>, clusters: &[ClusterPortBackends]) -> Vec<SocketAddrV4> {
    let (mut chosen, mut total) = (Vec::new(), 0usize);
    for tier in tiers(preference, clusters) {
        for c in tier {
            chosen.extend(c.ready.iter().copied());
            total += c.total;
        }
        if enough(&preference.failover, chosen.len(), total) {
            break;
        }
    }
    chosen.sort();
    chosen.dedup();
    chosen
}

fn enough(failover: &Failover, ready: usize, total: usize) -> bool {
    ready >= failover.min_ready_backends as usize
        && ready * 100 >= usize::from(failover.min_ready_percent) * total
}

/// The clusters grouped in tiers, most preferred first.
fn tiers<'c>(
    preference: &Preference<'_>,
    clusters: &'c [ClusterPortBackends],
) -> Vec<Vec<&'c ClusterPortBackends>> {
    let named = |name: &str| {
        clusters
            .iter()
            .filter(move |c| c.cluster == name)
            .collect::<Vec<_>>()
    };
    let is_local = |c: &&ClusterPortBackends| c.cluster == preference.local;
    let mut out: Vec<Vec<&ClusterPortBackends>> = Vec::new();
    let mut placed: Vec<&str> = Vec::new();
    let mut take = |out: &mut Vec<Vec<&'c ClusterPortBackends>>, tier: Vec<&'c ClusterPortBackends>| {
        let tier: Vec<_> = tier
            .into_iter()
            .filter(|c| !placed.contains(&c.cluster.as_str()))
            .collect();
        placed.extend(tier.iter().map(|c| c.cluster.as_str()));
        if !tier.is_empty() {
            out.push(tier);
        }
    };
    if preference.affinity == Affinity::Local {
        take(&mut out, named(preference.local));
    }
    for name in preference.preferred {
        if preference.affinity == Affinity::Remote && name == preference.local {
            continue;
        }
        take(&mut out, named(name));
    }
    let rest: Vec<&ClusterPortBackends> = clusters.iter().collect();
    if preference.affinity == Affinity::Remote {
        take(&mut out, rest.iter().copied().filter(|c| !is_local(c)).collect());
    }
    take(&mut out, rest);
    out
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    /// `ready` of `total` backends in `cluster`, addresses 10.<id>.0.<n>.
    fn cluster(name: &str, id: u8, ready: u8, total: usize) -> ClusterPortBackends {
        ClusterPortBackends {
            cluster: name.into(),
            ready: (1..=ready)
                .map(|n| SocketAddrV4::new(Ipv4Addr::new(10, id, 0, n), 8080))
                .collect(),
            total,
        }
    }

    fn clusters_of(chosen: &[SocketAddrV4]) -> Vec<u8> {
        let mut ids: Vec<u8> = chosen.iter().map(|a| a.ip().octets()[1]).collect();
        ids.dedup();
        ids
    }

    fn pick(
        affinity: Affinity,
        preferred: &[&str],
        failover: Failover,
        clusters: &[ClusterPortBackends],
    ) -> Vec<u8> {
        let preferred: Vec<String> = preferred.iter().map(|s| s.to_string()).collect();
        let preference = Preference {
            local: "a",
            affinity,
            preferred: &preferred,
            failover,
        };
        clusters_of(&choose(&preference, clusters))
    }

    fn threshold(min_ready_backends: u32, min_ready_percent: u8) -> Failover {
        Failover {
            min_ready_backends,
            min_ready_percent,
        }
    }

    #[test]
    fn the_default_threshold_is_all_or_nothing_affinity() {
        let d = Failover::default();
        let up = [cluster("a", 1, 1, 3), cluster("b", 2, 2, 2)];
        let down = [cluster("a", 1, 0, 3), cluster("b", 2, 2, 2)];
        assert_eq!(pick(Affinity::Local, &[], d, &up), [1]);
        assert_eq!(pick(Affinity::Local, &[], d, &down), [2]);
        assert_eq!(pick(Affinity::Remote, &[], d, &up), [2]);
        assert_eq!(
            pick(
                Affinity::Remote,
                &[],
                d,
                &[cluster("a", 1, 1, 1), cluster("b", 2, 0, 2)]
            ),
            [1]
        );
        assert_eq!(pick(Affinity::None, &[], d, &up), [1, 2]);
    }

    #[test]
    fn local_adds_remote_backends_below_a_count_or_a_share() {
        let clusters = [cluster("a", 1, 2, 4), cluster("b", 2, 3, 3)];
        // Two ready: enough for 2, not for 3.
        assert_eq!(pick(Affinity::Local, &[], threshold(2, 0), &clusters), [1]);
        assert_eq!(pick(Affinity::Local, &[], threshold(3, 0), &clusters), [1, 2]);
        // 2 of 4 ready is 50 %: enough for 50 %, not for 60 %.
        assert_eq!(pick(Affinity::Local, &[], threshold(1, 50), &clusters), [1]);
        assert_eq!(pick(Affinity::Local, &[], threshold(1, 60), &clusters), [1, 2]);
        // The first local pod to come up does not take all the traffic.
        let first_up = [cluster("a", 1, 1, 5), cluster("b", 2, 3, 3)];
        assert_eq!(pick(Affinity::Local, &[], threshold(3, 0), &first_up), [1, 2]);
    }

    #[test]
    fn preferred_clusters_are_tried_in_order() {
        let clusters = [
            cluster("a", 1, 0, 2),
            cluster("b", 2, 1, 1),
            cluster("c", 3, 2, 2),
            cluster("d", 4, 5, 5),
        ];
        let d = Failover::default();
        // Local is down: c is preferred over b, d comes last.
        assert_eq!(pick(Affinity::Local, &["c", "b"], d, &clusters), [3]);
        assert_eq!(pick(Affinity::Local, &["b", "c"], d, &clusters), [2]);
        // b alone falls short of 3: c is added, and that is enough.
        assert_eq!(
            pick(Affinity::Local, &["b", "c"], threshold(3, 0), &clusters),
            [2, 3]
        );
        // Not even b and c make 4: everything else joins.
        assert_eq!(
            pick(Affinity::Local, &["b", "c"], threshold(4, 0), &clusters),
            [2, 3, 4]
        );
        // Without affinity the order alone decides, the local cluster included.
        assert_eq!(pick(Affinity::None, &["d"], d, &clusters), [4]);
        assert_eq!(pick(Affinity::None, &["a", "d"], d, &clusters), [4]);
        // Remote affinity never prefers the local cluster, even when named.
        let up = [
            cluster("a", 1, 2, 2),
            cluster("b", 2, 1, 1),
            cluster("c", 3, 1, 1),
        ];
        assert_eq!(pick(Affinity::Remote, &["a", "c"], d, &up), [3]);
        // A cluster named but absent is skipped.
        assert_eq!(pick(Affinity::Local, &["zz", "b"], d, &clusters), [2]);
    }

    #[test]
    fn nothing_ready_anywhere_chooses_nothing() {
        let clusters = [cluster("a", 1, 0, 2), cluster("b", 2, 0, 1)];
        assert!(pick(Affinity::Local, &["b"], threshold(2, 50), &clusters).is_empty());
    }
}
