use std::net::Ipv4Addr;

use super::*;

fn clusters() -> Vec<String> {
    vec!["cluster-a".into(), "cluster-b".into()]
}

fn deployed() -> Deployed {
    let mut d = Deployed::default();
    for (i, c) in clusters().iter().enumerate() {
        let n = i as u8 + 1;
        for (j, pod) in ["echo", "echo-denied", "client"].iter().enumerate() {
            d.pods
                .insert((c.clone(), (*pod).into()), Ipv4Addr::new(10, n, 1, j as u8 + 2));
        }
        d.services
            .insert((c.clone(), "echo".into()), Ipv4Addr::new(10, 96, n, 10));
        d.services
            .insert((c.clone(), "echo-local".into()), Ipv4Addr::new(10, 96, n, 11));
    }
    d
}

#[test]
fn the_plan_deploys_three_pods_per_cluster_two_services_and_one_isolation() {
    let d = plan(&clusters());
    let names: Vec<(&str, &str, usize, bool)> = d
        .pods
        .iter()
        .map(|p| (p.cluster.as_str(), p.name.as_str(), p.node, p.serves))
        .collect();
    assert_eq!(
        names,
        vec![
            ("cluster-a", "echo", 0, true),
            ("cluster-a", "echo-denied", 0, true),
            ("cluster-a", "client", 1, false),
            ("cluster-b", "echo", 0, true),
            ("cluster-b", "echo-denied", 0, true),
            ("cluster-b", "client", 1, false),
        ]
    );
    assert_eq!(d.pods[2].labels["app"], "knit-client");
    assert_eq!(
        d.services.iter().map(|s| s.affinity.as_str()).collect::<Vec<_>>(),
        vec!["none", "local"]
    );
    assert_eq!(d.isolated, vec!["echo-denied"]);
}

#[test]
fn checks_cover_every_path_of_every_cluster() {
    let outside = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 8080);
    let all = checks(&clusters(), &deployed(), 10, Some(outside));
    let names: Vec<&str> = all.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "pod to pod in cluster-a",
            "pod to pod cluster-a -> cluster-b",
            "global service from cluster-a",
            "global service, affinity local, from cluster-a",
            "network policy denies cluster-a -> cluster-a",
            "network policy denies cluster-a -> cluster-b",
            "node to pod in cluster-a",
            "egress out of the mesh from cluster-a",
            "pod to pod cluster-b -> cluster-a",
            "pod to pod in cluster-b",
            "global service from cluster-b",
            "global service, affinity local, from cluster-b",
            "network policy denies cluster-b -> cluster-a",
            "network policy denies cluster-b -> cluster-b",
            "node to pod in cluster-b",
            "egress out of the mesh from cluster-b",
        ]
    );
    assert_eq!(all[1].to, Some("10.2.1.2:8080".parse().unwrap()));
    assert_eq!(
        all[1].needs,
        vec![
            ("cluster-a".to_owned(), "client".to_owned()),
            ("cluster-b".to_owned(), "echo".to_owned())
        ]
    );
    assert_eq!(all[1].expect, Expect::AllFrom("cluster-b/echo".into()));
    assert_eq!(all[2].to, Some("10.96.1.10:8080".parse().unwrap()));
    assert_eq!(all[6].from, Source::NodeOf("cluster-a".into(), "client".into()));
    assert_eq!(
        checks(&clusters(), &deployed(), 10, None).len(),
        14,
        "no egress check without a target"
    );
    let counts: Vec<usize> = all.iter().take(5).map(|c| c.count).collect();
    assert_eq!(
        counts,
        vec![10, 10, 32, 10, 2],
        "every cluster seen; refusals are slow"
    );
}

fn answers(by: &[(&str, usize)], failed: usize) -> Answers {
    Answers {
        by_server: by.iter().map(|(s, n)| ((*s).to_owned(), *n)).collect(),
        failed,
    }
}

fn check(expect: Expect) -> Check {
    Check {
        name: "c".into(),
        from: Source::Pod("cluster-a".into(), "client".into()),
        to: "10.0.0.1:8080".parse().ok(),
        needs: Vec::new(),
        count: 10,
        expect,
    }
}

#[test]
fn judging_says_what_was_seen_and_what_was_expected() {
    let every = check(Expect::EveryCluster(clusters()));
    assert!(
        judge(
            &every,
            &answers(&[("cluster-a/echo", 6), ("cluster-b/echo", 4)], 0)
        )
        .passed
    );
    let one_sided = judge(&every, &answers(&[("cluster-a/echo", 10)], 0));
    assert!(!one_sided.passed);
    assert_eq!(
        one_sided.detail,
        "10/10 answered (cluster-a/echo=10); expected answers from each of cluster-a, cluster-b"
    );
    let local = check(Expect::OnlyCluster("cluster-a".into()));
    assert!(judge(&local, &answers(&[("cluster-a/echo", 10)], 0)).passed);
    assert!(
        !judge(
            &local,
            &answers(&[("cluster-a/echo", 9), ("cluster-b/echo", 1)], 0)
        )
        .passed
    );
    let refused = check(Expect::Refused);
    assert!(judge(&refused, &answers(&[], 10)).passed);
    assert!(!judge(&refused, &answers(&[("cluster-b/echo-denied", 1)], 9)).passed);
    let from = check(Expect::AllFrom("cluster-b/echo".into()));
    let partly = judge(&from, &answers(&[("cluster-b/echo", 7)], 3));
    assert!(!partly.passed);
    assert_eq!(
        partly.detail,
        "7/10 answered (cluster-b/echo=7), 3 failed; expected every answer from cluster-b/echo"
    );
    assert!(judge(&check(Expect::Answered), &answers(&[("outside", 10)], 0)).passed);
}

/// Sites whose every probe gets `answer`, recording what was done.
struct Fake {
    fail_deploy: bool,
    deployed: usize,
    probes: usize,
    cleaned: usize,
}

impl Sites for Fake {
    async fn deploy(&mut self, d: &Deployment) -> crate::Result<Deployed> {
        self.deployed += d.pods.len();
        if self.fail_deploy {
            return Err(crate::Error::Connectivity {
                step: "deploying the test pods".into(),
                source: "no nodes".into(),
            });
        }
        Ok(deployed())
    }
    /// Pods answer as their cluster's echo (10.2.x.x is cluster-b's), the
    /// isolated ones (x.x.x.3) not at all, and every VIP as cluster-a.
    async fn probe(&mut self, _: &Source, to: SocketAddrV4, count: usize) -> crate::Result<Answers> {
        self.probes += 1;
        let [_, second, _, last] = to.ip().octets();
        if last == 3 {
            return Ok(answers(&[], count));
        }
        let server = if second == 2 {
            "cluster-b/echo"
        } else {
            "cluster-a/echo"
        };
        Ok(answers(&[(server, count)], 0))
    }
    async fn cleanup(&mut self) -> crate::Result<()> {
        self.cleaned += 1;
        Ok(())
    }
}

#[tokio::test]
async fn a_run_deploys_probes_reports_and_always_cleans_up() {
    let mut sites = Fake {
        fail_deploy: false,
        deployed: 0,
        probes: 0,
        cleaned: 0,
    };
    let report = run(&mut sites, &clusters(), 10, None).await.unwrap();
    assert_eq!((sites.deployed, sites.probes, sites.cleaned), (6, 14, 1));
    // The fake answers every VIP from one cluster: the global service
    // checks fail, and only they.
    let failed: Vec<&str> = report
        .outcomes
        .iter()
        .filter(|o| !o.passed)
        .map(|o| o.name.as_str())
        .collect();
    assert_eq!(
        failed,
        vec![
            "global service from cluster-a",
            "global service from cluster-b",
            "global service, affinity local, from cluster-b"
        ]
    );
    assert!(!report.passed());
    let table = report.table();
    let line = table
        .lines()
        .find(|l| l.starts_with("network policy denies cluster-a -> cluster-b "))
        .unwrap();
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words[6..].join(" "), "pass 0/2 answered, 2 failed", "{table}");
    assert!(table.ends_with("11 of 14 checks passed; 3 FAILED\n"), "{table}");

    // A pod that could not be deployed fails the checks that need it,
    // naming it; the others run.
    let mut short = Fake {
        fail_deploy: false,
        deployed: 0,
        probes: 0,
        cleaned: 0,
    };
    let mut sites = Missing(&mut short);
    let report = run(&mut sites, &clusters(), 10, None).await.unwrap();
    let names: Vec<&str> = report
        .outcomes
        .iter()
        .filter(|o| {
            o.detail
                .starts_with("pod cluster-b/client was not deployed: CNI ADD timed out")
        })
        .map(|o| o.name.as_str())
        .collect();
    assert_eq!(names.len(), 7, "{names:?}");
    assert!(names.contains(&"node to pod in cluster-b"));
    assert_eq!(short.probes, 7, "the 7 checks of cluster-a's client ran");

    let mut broken = Fake {
        fail_deploy: true,
        deployed: 0,
        probes: 0,
        cleaned: 0,
    };
    let e = run(&mut broken, &clusters(), 10, None).await.unwrap_err();
    assert!(e.to_string().contains("deploying the test pods"));
    assert_eq!(
        (broken.probes, broken.cleaned),
        (0, 1),
        "cleaned up after a failed deploy"
    );
}

/// [`Fake`] whose cluster-b client could not be deployed.
struct Missing<'a>(&'a mut Fake);

impl Sites for Missing<'_> {
    async fn deploy(&mut self, d: &Deployment) -> crate::Result<Deployed> {
        let mut out = self.0.deploy(d).await?;
        let key = ("cluster-b".to_owned(), "client".to_owned());
        out.pods.remove(&key);
        out.missing.insert(key, "CNI ADD timed out".into());
        Ok(out)
    }
    async fn probe(&mut self, from: &Source, to: SocketAddrV4, count: usize) -> crate::Result<Answers> {
        self.0.probe(from, to, count).await
    }
    async fn cleanup(&mut self) -> crate::Result<()> {
        self.0.cleanup().await
    }
}
