//! `knitctl connectivity test`: deploys test workloads into every cluster
//! of the mesh, checks the paths a mesh must carry, prints a pass/fail
//! table, and removes what it deployed, as `cilium connectivity test
//! --multi-cluster` does.
//!
//! What is deployed and checked is decided here, without I/O ([`plan`],
//! [`judge`]). Where the workloads run is the [`Sites`] a caller gives:
//! the local mesh of network namespaces (its test harness), or clusters
//! reached through the Kubernetes API. In each cluster:
//!
//! - pods `echo` (answers with `<cluster>/echo`), `echo-denied` (a
//!   NetworkPolicy admits nothing into it) and `client`, placed on another
//!   node than `echo` where the cluster has one;
//! - global services `echo` (every cluster's backends) and `echo-local`
//!   (affinity `local`).
//!
//! The checks, per cluster (and per pair of clusters): pod to pod within
//! and across clusters, the global service from every cluster (answers
//! from every cluster), its local affinity (answers from the own cluster
//! only), a NetworkPolicy that must deny, node to pod, and (given a
//! target) egress out of the mesh.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddrV4;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Namespace of every test workload.
pub const NAMESPACE: &str = "knit-connectivity";
/// The port every echo server answers on.
pub const PORT: u16 = 8080;
/// Requests a check that expects refusal sends at most.
pub const REFUSED_REQUESTS: usize = 2;

/// A pod to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestPod {
    /// Its cluster.
    pub cluster: String,
    /// Name (in [`NAMESPACE`]).
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Which node of the cluster (by position; the site wraps around).
    pub node: usize,
    /// Whether it serves on [`PORT`], answering `<cluster>/<name>`.
    pub serves: bool,
}

/// A global service to create in every cluster, backed by each cluster's
/// pod `backend`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestService {
    /// Name.
    pub name: String,
    /// The backend pod's name.
    pub backend: String,
    /// `none` or `local`.
    pub affinity: String,
}

/// Everything to deploy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Deployment {
    /// Pods of every cluster.
    pub pods: Vec<TestPod>,
    /// Global services (in every cluster).
    pub services: Vec<TestService>,
    /// Pods (by name, in every cluster) a NetworkPolicy isolates with no
    /// rule.
    pub isolated: Vec<String>,
}

/// Where the deployment landed: addresses to probe.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Deployed {
    /// Pod address by (cluster, pod name).
    pub pods: BTreeMap<(String, String), std::net::Ipv4Addr>,
    /// Service VIP by (cluster, service name).
    pub services: BTreeMap<(String, String), std::net::Ipv4Addr>,
    /// Pods that could not be deployed, with why, by (cluster, pod name):
    /// the checks that need them fail saying so.
    pub missing: BTreeMap<(String, String), String>,
}

/// Where a probe is sent from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A test pod: (cluster, name).
    Pod(String, String),
    /// The node a test pod runs on, from its host network.
    NodeOf(String, String),
}

/// What a probe of `count` requests got.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Answers {
    /// Answers per server name (`<cluster>/<pod>`, or the outside
    /// target's own).
    pub by_server: BTreeMap<String, usize>,
    /// Requests without an answer.
    pub failed: usize,
}

impl Answers {
    /// Answers in all.
    pub fn total(&self) -> usize {
        self.by_server.values().sum()
    }
}

/// Where the test's workloads run.
pub trait Sites {
    /// Creates the deployment's pods, services and policies and returns
    /// their addresses once every pod runs and every cluster knows every
    /// service's backends (or fails saying what is missing).
    fn deploy(&mut self, deployment: &Deployment) -> impl Future<Output = crate::Result<Deployed>>;
    /// Sends `count` requests from `from` to `to`.
    fn probe(
        &mut self,
        from: &Source,
        to: SocketAddrV4,
        count: usize,
    ) -> impl Future<Output = crate::Result<Answers>>;
    /// Removes everything [`Sites::deploy`] created.
    fn cleanup(&mut self) -> impl Future<Output = crate::Result<()>>;
}

fn labels(app: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("app".to_owned(), app.to_owned())])
}

/// What to deploy into `clusters`.
pub fn plan(clusters: &[String]) -> Deployment {
    let mut d = Deployment::default();
    for c in clusters {
        for (name, node, serves) in [("echo", 0, true), ("echo-denied", 0, true), ("client", 1, false)] {
            d.pods.push(TestPod {
                cluster: c.clone(),
                name: name.to_owned(),
                labels: labels(&format!("knit-{name}")),
                node,
                serves,
            });
        }
    }
    d.services = vec![
        TestService {
            name: "echo".into(),
            backend: "echo".into(),
            affinity: "none".into(),
        },
        TestService {
            name: "echo-local".into(),
            backend: "echo".into(),
            affinity: "local".into(),
        },
    ];
    d.isolated = vec!["echo-denied".into()];
    d
}

/// What a check expects of its answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Every request answered by this server.
    AllFrom(String),
    /// Every request answered, by servers of each of these clusters.
    EveryCluster(Vec<String>),
    /// Every request answered by servers of this cluster only.
    OnlyCluster(String),
    /// Every request answered (by anyone).
    Answered,
    /// No request answered.
    Refused,
}

/// One check to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// What it shows, e.g. `pod to pod cluster-a -> cluster-b`.
    pub name: String,
    /// From where.
    pub from: Source,
    /// To where; none when the target was not deployed.
    pub to: Option<SocketAddrV4>,
    /// The test pods it needs, by (cluster, name).
    pub needs: Vec<(String, String)>,
    /// Requests to send.
    pub count: usize,
    /// What passes.
    pub expect: Expect,
}

/// The checks on `deployed`, `count` requests each; `outside`: a target
/// out of the mesh for the egress check.
pub fn checks(
    clusters: &[String],
    deployed: &Deployed,
    count: usize,
    outside: Option<SocketAddrV4>,
) -> Vec<Check> {
    let at = |ip: Option<&std::net::Ipv4Addr>| ip.map(|ip| SocketAddrV4::new(*ip, PORT));
    let pod = |c: &str, n: &str| at(deployed.pods.get(&(c.to_owned(), n.to_owned())));
    let vip = |c: &str, s: &str| at(deployed.services.get(&(c.to_owned(), s.to_owned())));
    let client = |c: &str| Source::Pod(c.to_owned(), "client".to_owned());
    let need = |pods: &[(&str, &str)]| {
        pods.iter()
            .map(|(c, n)| ((*c).to_owned(), (*n).to_owned()))
            .collect()
    };
    let mut out = Vec::new();
    let mut add = |name: String, from: Source, to, needs, expect: Expect| {
        // A refused request waits out its timeout: two make the point.
        // Backends are picked at random per connection: 16 requests per
        // cluster miss one with a chance of at most k(1 - 1/k)^16k
        // (2e-9 for two clusters, 1e-8 for three).
        let count = match &expect {
            Expect::Refused => count.min(REFUSED_REQUESTS),
            Expect::EveryCluster(clusters) => count.max(16 * clusters.len()),
            _ => count,
        };
        out.push(Check {
            name,
            from,
            to,
            needs,
            count,
            expect,
        });
    };
    for c in clusters {
        let c = c.as_str();
        for d in clusters {
            let name = if c == d {
                format!("pod to pod in {c}")
            } else {
                format!("pod to pod {c} -> {d}")
            };
            let needs = need(&[(c, "client"), (d, "echo")]);
            add(
                name,
                client(c),
                pod(d, "echo"),
                needs,
                Expect::AllFrom(format!("{d}/echo")),
            );
        }
        let every = clusters
            .iter()
            .map(|d| (d.as_str(), "echo"))
            .chain([(c, "client")]);
        add(
            format!("global service from {c}"),
            client(c),
            vip(c, "echo"),
            need(&every.collect::<Vec<_>>()),
            Expect::EveryCluster(clusters.to_vec()),
        );
        add(
            format!("global service, affinity local, from {c}"),
            client(c),
            vip(c, "echo-local"),
            need(&[(c, "client"), (c, "echo")]),
            Expect::OnlyCluster(c.to_owned()),
        );
        for d in clusters {
            add(
                format!("network policy denies {c} -> {d}"),
                client(c),
                pod(d, "echo-denied"),
                need(&[(c, "client"), (d, "echo-denied")]),
                Expect::Refused,
            );
        }
        add(
            format!("node to pod in {c}"),
            Source::NodeOf(c.to_owned(), "client".into()),
            pod(c, "echo"),
            need(&[(c, "client"), (c, "echo")]),
            Expect::AllFrom(format!("{c}/echo")),
        );
        if outside.is_some() {
            add(
                format!("egress out of the mesh from {c}"),
                client(c),
                outside,
                need(&[(c, "client")]),
                Expect::Answered,
            );
        }
    }
    out
}

/// One check's outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    /// The check.
    pub name: String,
    /// Whether it passed.
    pub passed: bool,
    /// What was seen.
    pub detail: String,
}

/// Whether `answers` meet `check`'s expectation, in words.
pub fn judge(check: &Check, answers: &Answers) -> Outcome {
    let seen: Vec<String> = answers
        .by_server
        .iter()
        .map(|(s, n)| format!("{s}={n}"))
        .collect();
    let summary = format!(
        "{}/{} answered{}{}",
        answers.total(),
        check.count,
        if seen.is_empty() {
            String::new()
        } else {
            format!(" ({})", seen.join(", "))
        },
        if answers.failed > 0 {
            format!(", {} failed", answers.failed)
        } else {
            String::new()
        }
    );
    let all = answers.total() == check.count;
    let from_cluster = |c: &str| {
        answers
            .by_server
            .iter()
            .filter(|(s, _)| s.starts_with(&format!("{c}/")))
            .map(|(_, n)| n)
            .sum::<usize>()
    };
    let passed = match &check.expect {
        Expect::AllFrom(server) => all && answers.by_server.get(server) == Some(&check.count),
        Expect::EveryCluster(clusters) => all && clusters.iter().all(|c| from_cluster(c) > 0),
        Expect::OnlyCluster(c) => all && from_cluster(c) == check.count,
        Expect::Answered => all,
        Expect::Refused => answers.total() == 0,
    };
    let expected = match &check.expect {
        Expect::AllFrom(server) => format!("expected every answer from {server}"),
        Expect::EveryCluster(clusters) => format!("expected answers from each of {}", clusters.join(", ")),
        Expect::OnlyCluster(c) => format!("expected every answer from {c}"),
        Expect::Answered => "expected every request answered".to_owned(),
        Expect::Refused => "expected no answer".to_owned(),
    };
    Outcome {
        name: check.name.clone(),
        passed,
        detail: if passed {
            summary
        } else {
            format!("{summary}; {expected}")
        },
    }
}

/// The whole test's result.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Every check, in order.
    pub outcomes: Vec<Outcome>,
}

impl Report {
    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        !self.outcomes.is_empty() && self.outcomes.iter().all(|o| o.passed)
    }

    /// The pass/fail table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let width = self.outcomes.iter().map(|o| o.name.len()).max().unwrap_or(5);
        let _ = writeln!(out, "{:<width$}  RESULT  DETAIL", "CHECK");
        for o in &self.outcomes {
            let result = if o.passed { "pass" } else { "FAIL" };
            let _ = writeln!(out, "{:<width$}  {result:<6}  {}", o.name, o.detail);
        }
        let failed = self.outcomes.iter().filter(|o| !o.passed).count();
        let _ = writeln!(
            out,
            "{} of {} checks passed{}",
            self.outcomes.len() - failed,
            self.outcomes.len(),
            if failed == 0 {
                String::new()
            } else {
                format!("; {failed} FAILED")
            }
        );
        out
    }
}

/// Deploys, runs every check, and cleans up (also when a step fails).
pub async fn run<S: Sites>(
    sites: &mut S,
    clusters: &[String],
    count: usize,
    outside: Option<SocketAddrV4>,
) -> crate::Result<Report> {
    let result = run_checks(sites, clusters, count, outside).await;
    let cleaned = sites.cleanup().await;
    let report = result?;
    cleaned?;
    Ok(report)
}

async fn run_checks<S: Sites>(
    sites: &mut S,
    clusters: &[String],
    count: usize,
    outside: Option<SocketAddrV4>,
) -> crate::Result<Report> {
    let deployed = sites.deploy(&plan(clusters)).await?;
    let mut report = Report::default();
    for check in checks(clusters, &deployed, count, outside) {
        let failed = |detail: String| Outcome {
            name: check.name.clone(),
            passed: false,
            detail,
        };
        let missing = check
            .needs
            .iter()
            .find_map(|p| deployed.missing.get(p).map(|why| (p, why)));
        let outcome = match (missing, check.to) {
            (Some(((c, n), why)), _) => failed(format!("pod {c}/{n} was not deployed: {why}")),
            (None, None) => failed("its target has no address".to_owned()),
            (None, Some(to)) => match sites.probe(&check.from, to, check.count).await {
                Ok(answers) => judge(&check, &answers),
                Err(e) => failed(format!("could not probe: {}", knit_telemetry::error_chain(&e))),
            },
        };
        report.outcomes.push(outcome);
    }
    Ok(report)
}

/// Waits (up to `limit`) until every client reaches the global service
/// `echo` from every cluster and no client reaches an isolated pod: the
/// kvstores and the datapaths have caught up with the deployment. Never
/// fails: what is still missing shows in the checks.
pub async fn settle<S: Sites>(sites: &mut S, clusters: &[String], deployed: &Deployed, limit: Duration) {
    let end = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < end {
        let mut ready = true;
        for c in clusters {
            let client = Source::Pod(c.clone(), "client".to_owned());
            if deployed.missing.contains_key(&(c.clone(), "client".to_owned())) {
                continue;
            }
            if let Some(vip) = deployed.services.get(&(c.clone(), "echo".to_owned())) {
                let answers = sites
                    .probe(&client, SocketAddrV4::new(*vip, PORT), 10)
                    .await
                    .unwrap_or_default();
                ready &= clusters
                    .iter()
                    .all(|d| answers.by_server.keys().any(|s| s.starts_with(&format!("{d}/"))));
            }
            for d in clusters {
                if let Some(ip) = deployed.pods.get(&(d.clone(), "echo-denied".to_owned())) {
                    let answers = sites
                        .probe(&client, SocketAddrV4::new(*ip, PORT), 1)
                        .await
                        .unwrap_or_default();
                    ready &= answers.total() == 0;
                }
            }
        }
        if ready {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub mod kubernetes;
pub mod manifests;

#[cfg(test)]
mod tests;
