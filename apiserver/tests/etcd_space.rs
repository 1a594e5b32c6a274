//! A local etcd that reaches its quota refuses every write until someone
//! disarms its NOSPACE alarm; etcd never does it by itself. The apiserver
//! recovers it (compaction, defragmentation, disarm), and the export goes
//! on. Real etcd with an 8 MiB quota.

mod common;

use std::time::{Duration, Instant};

use common::{APISERVER, eventually, keys};
use etcd_client::Client;
use knit_testkit::TestCluster;

const QUOTA: &str = "--quota-backend-bytes=8388608";

/// Overwrites one key with 64 KiB values until etcd refuses for lack of
/// space; returns how many puts went through.
async fn fill(client: &mut Client) -> usize {
    let value = vec![b'x'; 64 << 10];
    for n in 0..10_000 {
        match client.put("fill/history", value.clone(), None).await {
            Ok(_) => {}
            Err(e) if e.to_string().contains("database space exceeded") => return n,
            Err(e) => panic!("put {n}: {e}"),
        }
    }
    panic!("an 8 MiB quota took 10,000 puts of 64 KiB");
}

async fn writable(client: &mut Client) -> bool {
    client.put("fill/probe", "ok", None).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_out_of_space_is_recovered_and_the_export_goes_on() {
    let mut cluster = TestCluster::new("a", 1);
    cluster.start_etcd_with(&[QUOTA]);
    cluster.start_apiserver(APISERVER, &["--etcd-maintenance-interval=500ms"]);
    let mut admin = cluster.admin().await;
    eventually(30, "the first export", &[&cluster], || async {
        (!keys(&admin, "knit/v1/clusters/a/synced/").await.is_empty()).then_some(())
    })
    .await;

    // Without the apiserver, a full etcd stays read-only.
    cluster.stop_apiserver();
    let puts = fill(&mut admin).await;
    eprintln!("NOSPACE after {puts} puts of 64 KiB");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !writable(&mut admin).await,
        "etcd lowered its NOSPACE alarm by itself"
    );

    // The apiserver recovers it, and what it exports reaches etcd again.
    let started = Instant::now();
    cluster.start_apiserver(APISERVER, &["--etcd-maintenance-interval=500ms"]);
    eventually(30, "etcd to take writes again", &[&cluster], || {
        let mut c = admin.clone();
        async move { writable(&mut c).await.then_some(()) }
    })
    .await;
    eprintln!(
        "writable again {:?} after the apiserver started",
        started.elapsed()
    );
    cluster.write_source(
        "pod.yaml",
        &knit_testkit::manifests::pod("shop", "web", "n1", "10.1.0.9", "web"),
    );
    eventually(30, "the new pod's export", &[&cluster], || async {
        keys(&admin, "knit/v1/clusters/a/endpoints/")
            .await
            .iter()
            .any(|k| k.ends_with("10.1.0.9"))
            .then_some(())
    })
    .await;
    let status = admin.status().await.unwrap();
    assert!(
        status.db_size() < 8 << 20,
        "the file was not given back: {} bytes",
        status.db_size()
    );
    assert!(
        cluster.logs().contains("NOSPACE"),
        "the apiserver did not say what it did\n{}",
        cluster.logs()
    );
}
