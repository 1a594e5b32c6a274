//! SyncStore and WatchStore against a real etcd (mTLS).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use etcd_client::GetOptions;
use knit_e2e::TestCluster;
use knit_kvstore::etcd;
use knit_kvstore::sync_store::SyncStore;
use knit_kvstore::watch_store::{WatchEvent, watch_prefix};
use tokio::sync::mpsc;

fn entries(n: usize, tag: &str) -> BTreeMap<String, Vec<u8>> {
    (0..n)
        .map(|i| {
            (
                format!("knit/v1/clusters/t/nodes/n{i:04}"),
                format!("{tag}{i}").into_bytes(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_store_skips_unchanged_writes_canaries_last_and_survives_a_lost_lease() {
    let mut cluster = TestCluster::new("t", 7);
    cluster.start_etcd();
    let client = cluster.admin().await;
    let prefix = "knit/v1/clusters/t/";
    let mut store = SyncStore::new(client.clone(), vec![prefix.into()], 5)
        .await
        .unwrap();

    let mut desired = entries(250, "v");
    desired.insert(format!("{prefix}synced/nodes"), b"1".to_vec());
    store.replace_prefix(prefix, desired.clone());
    let report = store.flush().await.unwrap();
    assert_eq!(report.puts, 251);
    let mut c = client.clone();
    let got = c
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(got.kvs().len(), 251);
    assert!(
        got.kvs().iter().all(|kv| kv.lease() != 0),
        "every key is under the lease"
    );
    let canary = got
        .kvs()
        .iter()
        .find(|kv| kv.key_str().unwrap().ends_with("synced/nodes"))
        .unwrap()
        .mod_revision();
    assert!(
        got.kvs().iter().all(|kv| kv.mod_revision() <= canary),
        "the canary is written after every record"
    );

    // Unchanged values are not written again; one change writes one key.
    store.replace_prefix(prefix, desired.clone());
    assert_eq!(store.flush().await.unwrap().puts, 0);
    desired.insert(format!("{prefix}nodes/n0001"), b"changed".to_vec());
    desired.remove(&format!("{prefix}nodes/n0002"));
    store.replace_prefix(prefix, desired.clone());
    let report = store.flush().await.unwrap();
    assert_eq!((report.puts, report.deletes), (1, 1));

    // Someone revokes the lease: every key vanishes; the store notices and rewrites all.
    let lease = got.kvs()[0].lease();
    c.lease_revoke(lease).await.unwrap();
    assert_eq!(
        c.get(prefix, Some(GetOptions::new().with_prefix()))
            .await
            .unwrap()
            .kvs()
            .len(),
        0
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        store.flush().await.unwrap();
        let n = c
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await
            .unwrap()
            .kvs()
            .len();
        if n == desired.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the store never rewrote its keys after losing the lease ({n} keys)"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_store_reports_deletions_made_while_it_was_away() {
    let mut cluster = TestCluster::new("w", 8);
    cluster.start_etcd();
    let admin = cluster.admin().await;
    let mut c = admin.clone();
    let prefix = "knit/v1/clusters/w/";
    for i in 0..12_000 {
        c.put(format!("{prefix}nodes/n{i:05}"), "x", None).await.unwrap();
    }

    let (tx, mut rx) = mpsc::channel(100_000);
    let config = cluster.admin_config();
    // The reader may only connect while `allowed` is set: the test holds it
    // off while making changes.
    let allowed = Arc::new(AtomicBool::new(true));
    let gate = allowed.clone();
    let connect = move || {
        let (c, open) = (config.clone(), gate.load(Ordering::SeqCst));
        async move {
            if !open {
                return Err(knit_kvstore::Error::ReaderGone);
            }
            etcd::connect(&c).await
        }
    };
    let watcher = tokio::spawn(watch_prefix(connect, prefix.to_owned(), tx));
    let mut upserts = 0;
    while let Some(ev) = rx.recv().await {
        match ev {
            WatchEvent::Upsert { .. } => upserts += 1,
            WatchEvent::ListDone => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(upserts, 12_000, "the paged list delivers every key once");

    // etcd goes away; while the reader is disconnected, keys are deleted and added.
    allowed.store(false, Ordering::SeqCst);
    cluster.stop_etcd();
    loop {
        if let Some(WatchEvent::Disconnected { .. }) = rx.recv().await {
            break;
        }
    }
    cluster.start_etcd();
    let mut c = cluster.admin().await;
    c.delete(format!("{prefix}nodes/n00007"), None).await.unwrap();
    c.delete(format!("{prefix}nodes/n11999"), None).await.unwrap();
    c.put(format!("{prefix}nodes/new"), "y", None).await.unwrap();
    allowed.store(true, Ordering::SeqCst);

    let (mut deleted, mut added) = (Vec::new(), Vec::new());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ev = tokio::time::timeout_at(deadline.into(), rx.recv())
            .await
            .expect("no relist")
            .unwrap();
        match ev {
            WatchEvent::Delete { key } => deleted.push(key),
            WatchEvent::Upsert { key, .. } => added.push(key),
            WatchEvent::ListDone => break,
            WatchEvent::Disconnected { .. } => {}
        }
    }
    deleted.sort();
    assert_eq!(
        deleted,
        vec![format!("{prefix}nodes/n00007"), format!("{prefix}nodes/n11999")]
    );
    assert_eq!(
        added,
        vec![format!("{prefix}nodes/new")],
        "unchanged keys are not reported again"
    );
    watcher.abort();
    drop(admin);
}
