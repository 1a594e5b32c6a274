//! The mesh apiserver against real etcd (mTLS, RBAC): export from directory
//! sources, KVStoreMesh mirroring, restarts with deletions, grace period.

mod common;

use common::*;
use knit_kvstore::keys::{Kind, cache_prefix, cluster_prefix, mesh_status_key};
use knit_kvstore::records::{EndpointRecord, PeerStatusRecord, ServiceRecord};
use knit_testkit::TestCluster;
use knit_testkit::cluster::full_mesh;
use knit_testkit::manifests::{global_service, node, pod};

fn seed(c: &TestCluster) {
    let n = c.id;
    let mut yaml = node(
        &format!("{}-node-1", c.name),
        &format!("192.168.{n}.1"),
        &format!("10.{n}.1.0/24"),
    );
    yaml += &node(
        &format!("{}-node-2", c.name),
        &format!("192.168.{n}.2"),
        &format!("10.{n}.2.0/24"),
    );
    for i in 1..=3 {
        yaml += &pod(
            "shop",
            &format!("web-{i}"),
            &format!("{}-node-1", c.name),
            &format!("10.{n}.1.{i}"),
            "web",
        );
    }
    yaml += &pod(
        "shop",
        "db-1",
        &format!("{}-node-2", c.name),
        &format!("10.{n}.2.1"),
        "db",
    );
    c.write_source("cluster.yaml", &yaml);
    let backends = [
        format!("10.{n}.1.1"),
        format!("10.{n}.1.2"),
        format!("10.{n}.1.3"),
    ];
    let b: Vec<&str> = backends.iter().map(String::as_str).collect();
    c.write_source("web.yaml", &global_service("shop", "web", 80, &b, true));
    c.write_source(
        "db.yaml",
        &global_service("shop", "db", 5432, &[&format!("10.{n}.2.1")], false),
    );
}

fn start(names: &[(&str, u16)], extra: &[&str]) -> Vec<TestCluster> {
    let mut clusters: Vec<TestCluster> = names.iter().map(|(n, id)| TestCluster::new(n, *id)).collect();
    full_mesh(&mut clusters);
    for c in clusters.iter_mut() {
        seed(c);
        c.start_etcd();
        c.start_apiserver(APISERVER, extra);
    }
    clusters
}

async fn status(client: &etcd_client::Client, peer: &str) -> Option<PeerStatusRecord> {
    let v = dump(client, &mesh_status_key(peer)).await.into_values().next()?;
    serde_json::from_slice(&v).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_clusters_export_and_mirror_each_other() {
    let clusters = start(&[("a", 1), ("b", 2), ("c", 3)], &[]);
    let refs: Vec<&TestCluster> = clusters.iter().collect();
    for local in &clusters {
        let client = local.admin().await;
        for peer in clusters.iter().filter(|p| p.name != local.name) {
            let st = eventually(
                30,
                &format!("{} to sync {}", local.name, peer.name),
                &refs,
                || async { status(&client, &peer.name).await.filter(|s| s.synced) },
            )
            .await;
            assert!(st.connected);
            assert_eq!(st.counts.get(&Kind::Endpoints), Some(&4), "{st:?}");
            assert_eq!(st.counts.get(&Kind::Nodes), Some(&2), "{st:?}");
            assert_eq!(
                st.counts.get(&Kind::Services),
                Some(&1),
                "only the exported service leaves {}",
                peer.name
            );
            assert!(st.rejected.is_empty(), "{st:?}");

            let cache = dump(&client, &cache_prefix(&peer.name)).await;
            let ep: EndpointRecord = serde_json::from_slice(
                &cache[&format!("{}endpoints/10.{}.1.1", cache_prefix(&peer.name), peer.id)],
            )
            .unwrap();
            assert_eq!(ep.cluster, peer.name);
            assert_eq!(
                ep.identity >> 15,
                u32::from(peer.id),
                "identity carries the cluster ID"
            );
            let web: ServiceRecord =
                serde_json::from_slice(&cache[&format!("{}services/shop/web", cache_prefix(&peer.name))])
                    .unwrap();
            assert_eq!(web.backends.len(), 3);
            assert!(!cache.contains_key(&format!("{}services/shop/db", cache_prefix(&peer.name))));
            for kind in ["nodes", "endpoints", "identities", "services"] {
                assert!(
                    cache.contains_key(&format!("{}synced/{kind}", cache_prefix(&peer.name))),
                    "canary {kind}"
                );
            }
        }
        // Local-only data: the non-exported service with its backends.
        assert!(dump(&client, "knit/v1/local/services/shop/db").await.len() == 1);
    }

    // A change in a's source reaches b's mirror.
    clusters[0].write_source(
        "web.yaml",
        &global_service("shop", "web", 80, &["10.1.1.1"], true),
    );
    let b = clusters[1].admin().await;
    let key = format!("{}services/shop/web", cache_prefix("a"));
    eventually(10, "b to see a's web service shrink", &refs, || async {
        let v = dump(&b, &key).await.into_values().next()?;
        let s: ServiceRecord = serde_json::from_slice(&v).ok()?;
        (s.backends.len() == 1).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_restart_with_deletions_converges_and_the_grace_period_withdraws_services() {
    let mut clusters = start(&[("a", 1), ("b", 2)], &["--grace-period=2s", "--lease-ttl=60"]);
    let b = clusters[1].admin().await;
    {
        let refs: Vec<&TestCluster> = clusters.iter().collect();
        eventually(30, "b to sync a", &refs, || async {
            status(&b, "a").await.filter(|s| s.synced)
        })
        .await;
    }

    // a's whole control plane goes down; b keeps a's records (fail static)...
    clusters[0].stop_apiserver();
    clusters[0].stop_etcd();
    {
        let refs: Vec<&TestCluster> = clusters.iter().collect();
        let st = eventually(10, "b to notice a is gone", &refs, || async {
            status(&b, "a").await.filter(|s| !s.connected)
        })
        .await;
        assert!(st.last_error.is_some());
        assert_eq!(
            keys(&b, &format!("{}endpoints/", cache_prefix("a"))).await.len(),
            4,
            "fail static"
        );
        // ...until the grace period ends: then a's services are withdrawn, the rest stays.
        eventually(10, "a's services to be withdrawn", &refs, || async {
            let v = dump(&b, &format!("{}services/shop/web", cache_prefix("a")))
                .await
                .into_values()
                .next()?;
            serde_json::from_slice::<ServiceRecord>(&v)
                .ok()
                .filter(|s| s.withdrawn)
        })
        .await;
        assert_eq!(
            keys(&b, &format!("{}endpoints/", cache_prefix("a"))).await.len(),
            4
        );
    }

    // While a is down its operator deletes two pods; then a comes back.
    let n = 1;
    let mut yaml =
        node("a-node-1", "192.168.1.1", "10.1.1.0/24") + &node("a-node-2", "192.168.1.2", "10.1.2.0/24");
    yaml += &pod("shop", "web-1", "a-node-1", &format!("10.{n}.1.1"), "web");
    yaml += &pod("shop", "db-1", "a-node-2", &format!("10.{n}.2.1"), "db");
    clusters[0].write_source("cluster.yaml", &yaml);
    clusters[0].start_etcd();
    clusters[0].start_apiserver(APISERVER, &["--grace-period=2s", "--lease-ttl=60"]);

    let refs: Vec<&TestCluster> = clusters.iter().collect();
    let endpoints = eventually(30, "b's mirror of a to converge", &refs, || async {
        let k = keys(&b, &format!("{}endpoints/", cache_prefix("a"))).await;
        (k.len() == 2).then_some(k)
    })
    .await;
    let p = cache_prefix("a");
    assert_eq!(
        endpoints,
        vec![format!("{p}endpoints/10.1.1.1"), format!("{p}endpoints/10.1.2.1")]
    );
    eventually(10, "a's services to be restored", &refs, || async {
        let v = dump(&b, &format!("{p}services/shop/web"))
            .await
            .into_values()
            .next()?;
        serde_json::from_slice::<ServiceRecord>(&v)
            .ok()
            .filter(|s| !s.withdrawn)
    })
    .await;
    // Nothing stale anywhere under the mirror: it equals a's own prefix.
    let a = clusters[0].admin().await;
    let own: Vec<String> = keys(&a, &cluster_prefix("a"))
        .await
        .iter()
        .map(|k| k.replacen("clusters/a/", "cache/a/", 1))
        .collect();
    eventually(10, "mirror == source", &refs, || async {
        (keys(&b, &p).await == own).then_some(())
    })
    .await;
}
