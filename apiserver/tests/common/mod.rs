//! Helpers for the apiserver's tests against real etcd.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions};
use knit_testkit::TestCluster;

pub const APISERVER: &str = env!("CARGO_BIN_EXE_knit-apiserver");

/// Every key/value under `prefix`. A read can fail for a moment while the
/// apiserver changes etcd's users and roles ("revision of auth store is
/// old"): it is retried for up to 10 s.
pub async fn dump(client: &Client, prefix: &str) -> BTreeMap<String, Vec<u8>> {
    let mut c = client.clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    let resp = loop {
        match c.get(prefix, Some(GetOptions::new().with_prefix())).await {
            Ok(resp) => break resp,
            Err(e) if Instant::now() < deadline => {
                eprintln!("retrying a read of {prefix}: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("get {prefix}: {e}"),
        }
    };
    resp.kvs()
        .iter()
        .map(|kv| (kv.key_str().unwrap().to_owned(), kv.value().to_vec()))
        .collect()
}

/// Keys under `prefix`.
pub async fn keys(client: &Client, prefix: &str) -> Vec<String> {
    dump(client, prefix).await.into_keys().collect()
}

/// Polls `check` until it returns `Some`, or panics after `secs` with the logs.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, clusters: &[&TestCluster], mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = clusters.iter().map(|c| c.logs()).collect();
            panic!("timed out waiting for {what}\n{}", logs.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts `cluster`'s etcd and apiserver and waits for its first complete
/// export (its canaries); returns an admin client.
pub async fn start_exporting(cluster: &mut TestCluster) -> Client {
    start_exporting_with(cluster, &[]).await
}

/// [`start_exporting`], with `args` added to the apiserver's.
#[allow(dead_code)]
pub async fn start_exporting_with(cluster: &mut TestCluster, args: &[&str]) -> Client {
    cluster.start_etcd();
    cluster.start_apiserver(APISERVER, args);
    let admin = cluster.admin().await;
    let canaries = format!("knit/v1/clusters/{}/synced/", cluster.name);
    eventually(30, "the first export", &[&*cluster], || async {
        (!keys(&admin, &canaries).await.is_empty()).then_some(())
    })
    .await;
    admin
}
