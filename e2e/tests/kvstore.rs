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

/// A WatchStore reader of `prefix` that may connect only while the
/// returned flag is set: the test holds it off while it changes etcd.
fn gated_reader(
    cluster: &TestCluster,
    prefix: &str,
    capacity: usize,
) -> (
    tokio::task::JoinHandle<()>,
    Arc<AtomicBool>,
    mpsc::Receiver<WatchEvent>,
) {
    let (tx, rx) = mpsc::channel(capacity);
    let config = cluster.admin_config();
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
    (
        tokio::spawn(watch_prefix(connect, prefix.to_owned(), tx)),
        allowed,
        rx,
    )
}

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

    // Someone revokes the lease: every key vanishes; the store notices,
    // asks its owner for the values it did not keep, and rewrites all.
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
        if store.needs_values() {
            store.replace_prefix(prefix, desired.clone());
            store.flush().await.unwrap();
        }
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
    // The writer's canary: nodes are complete (so after a reconnect that
    // finds it, stale nodes are dropped at once).
    c.put(format!("{prefix}synced/nodes"), "1", None).await.unwrap();

    let (watcher, allowed, mut rx) = gated_reader(&cluster, prefix, 100_000);
    let mut upserts = 0;
    while let Some(ev) = rx.recv().await {
        match ev {
            WatchEvent::Upsert { .. } => upserts += 1,
            WatchEvent::ListDone => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(upserts, 12_001, "the paged list delivers every key once");

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

/// Receives events until `ListDone` (or `stop` says so), failing after 30 s.
async fn events_until(
    rx: &mut mpsc::Receiver<WatchEvent>,
    stop: impl Fn(&WatchEvent) -> bool,
) -> Vec<WatchEvent> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut out = Vec::new();
    loop {
        let ev = tokio::time::timeout_at(deadline.into(), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out; so far: {out:?}"))
            .unwrap();
        let done = stop(&ev);
        out.push(ev);
        if done {
            return out;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_empty_restart_stale_keys_wait_for_the_canary_and_reused_revisions_deliver() {
    let mut cluster = TestCluster::new("e", 9);
    cluster.start_etcd();
    let prefix = "knit/v1/clusters/e/";
    let canary = format!("{prefix}synced/nodes");
    let node = |i: usize| format!("{prefix}nodes/n{i:03}");
    let mut c = cluster.admin().await;
    for i in 0..100 {
        c.put(node(i), "v", None).await.unwrap();
    }
    c.put(canary.as_str(), "1", None).await.unwrap();
    let n0_revision = c.get(node(0), None).await.unwrap().kvs()[0].mod_revision();

    let (watcher, allowed, mut rx) = gated_reader(&cluster, prefix, 10_000);
    events_until(&mut rx, |e| *e == WatchEvent::ListDone).await;

    // etcd restarts empty. Its revisions start over: n000 gets a new value
    // at exactly the revision its old value had.
    allowed.store(false, Ordering::SeqCst);
    cluster.stop_etcd();
    events_until(&mut rx, |e| matches!(e, WatchEvent::Disconnected { .. })).await;
    cluster.wipe_etcd();
    cluster.start_etcd();
    let mut c = cluster.admin().await;
    let mut revision = c.get("filler", None).await.unwrap().header().unwrap().revision();
    assert!(revision < n0_revision, "etcd did not start empty");
    while revision + 1 < n0_revision {
        revision = c
            .put("filler", "x", None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
    }
    let put = c.put(node(0), "changed", None).await.unwrap();
    assert_eq!(
        put.header().unwrap().revision(),
        n0_revision,
        "the revision is reused"
    );
    allowed.store(true, Ordering::SeqCst);

    // The relist finds one key and no canary: the changed value is
    // delivered, and nothing is deleted.
    let relist = events_until(&mut rx, |e| *e == WatchEvent::ListDone).await;
    let relist: Vec<&WatchEvent> = relist
        .iter()
        .filter(|e| !matches!(e, WatchEvent::Disconnected { .. }))
        .collect();
    assert_eq!(
        relist,
        [
            &WatchEvent::Upsert {
                key: node(0),
                value: b"changed".to_vec()
            },
            &WatchEvent::ListDone
        ],
        "a changed value on a reused revision is delivered; stale keys are held"
    );

    // The writer exports again: half the nodes, then its canary. Unchanged
    // values are not reported; the nodes it no longer has are deleted
    // before the canary is reported.
    for i in 1..50 {
        c.put(node(i), "v", None).await.unwrap();
    }
    c.put(canary.as_str(), "2", None).await.unwrap();
    let after = events_until(
        &mut rx,
        |e| matches!(e, WatchEvent::Upsert { key, .. } if *key == canary),
    )
    .await;
    let deleted: Vec<String> = after
        .iter()
        .filter_map(|e| match e {
            WatchEvent::Delete { key } => Some(key.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(deleted, (50..100).map(node).collect::<Vec<_>>());
    assert_eq!(
        after.len(),
        51,
        "only the 50 deletions and the canary: {:?}",
        &after[..after.len().min(5)]
    );
    watcher.abort();
}

/// A watcher catching up on many revisions gets them batched into one
/// response (etcd: up to 1,000 revisions), far past gRPC's 4 MiB message
/// limit when writers use 100-key transactions. Found by the 511-cluster
/// bench: an agent whose watch fell behind failed it on every retry
/// ("decoded message length too large") and never caught up. The
/// WatchStore's options make etcd fragment such responses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_catching_up_on_megabytes_of_history_gets_every_event() {
    let mut cluster = TestCluster::new("f", 9);
    cluster.start_etcd();
    let client = cluster.admin().await;
    let prefix = "knit/v1/clusters/f/endpoints/";
    let value = "x".repeat(200);
    let (txns, per_txn) = (300, 100);
    let mut first = 0;
    for t in 0..txns {
        let ops: Vec<etcd_client::TxnOp> = (0..per_txn)
            .map(|k| etcd_client::TxnOp::put(format!("{prefix}{t}-{k}"), value.clone(), None))
            .collect();
        let resp = client
            .clone()
            .txn(etcd_client::Txn::new().and_then(ops))
            .await
            .unwrap();
        if t == 0 {
            first = resp.header().unwrap().revision();
        }
    }
    // About 7 MB of events in 300 revisions, all history by now.
    let mut stream = client
        .clone()
        .watch(
            prefix,
            Some(knit_kvstore::watch_store::watch_options(prefix, first)),
        )
        .await
        .unwrap();
    let mut events = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while events < txns * per_txn {
        let resp = tokio::time::timeout_at(deadline.into(), stream.message())
            .await
            .expect("every event within 30 s")
            .expect("no watch error (a response over 4 MiB fails here)")
            .expect("the watch stays open");
        events += resp.events().len();
    }
    assert_eq!(events, txns * per_txn);
}

/// A writer down longer than its lease, its etcd alive (a mesh apiserver
/// container crashing beside a running etcd): etcd deletes every key of
/// the lease in one revision, canaries included. Readers used to take that
/// for the writer's word and withdraw everything; they hold the keys until
/// the writer is back, and then forget only what it no longer writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_whose_lease_expires_withdraws_nothing_until_it_is_back() {
    let mut cluster = TestCluster::new("l", 9);
    cluster.start_etcd();
    let client = cluster.admin().await;
    let prefix = "knit/v1/clusters/l/";
    let canary = format!("{prefix}synced/nodes");
    let mut desired = entries(300, "v")
        .into_iter()
        .map(|(k, v)| (k.replace("/clusters/t/", "/clusters/l/"), v))
        .collect::<BTreeMap<_, _>>();
    desired.insert(canary.clone(), b"1".to_vec());
    let mut store = SyncStore::new(client.clone(), vec![prefix.into()], 2)
        .await
        .unwrap();
    store.replace_prefix(prefix, desired.clone());
    store.flush().await.unwrap();

    let (watcher, _allowed, mut rx) = gated_reader(&cluster, prefix, 10_000);
    events_until(&mut rx, |e| *e == WatchEvent::ListDone).await;

    // The writer stops keeping its lease alive; etcd deletes its keys.
    drop(store);
    let mut c = client.clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    while c
        .get(prefix, Some(GetOptions::new().with_prefix().with_count_only()))
        .await
        .unwrap()
        .count()
        > 0
    {
        assert!(Instant::now() < deadline, "the lease never expired");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let quiet = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await;
    assert!(
        quiet.is_err(),
        "the reader reported the expired lease's deletions: {quiet:?}"
    );

    // The writer is back and no longer has node n0299.
    let gone = format!("{prefix}nodes/n0299");
    desired.remove(&gone);
    let mut store = SyncStore::new(client.clone(), vec![prefix.into()], 2)
        .await
        .unwrap();
    store.replace_prefix(prefix, desired.clone());
    store.flush().await.unwrap();
    let after = events_until(&mut rx, |e| {
        matches!(e, WatchEvent::Upsert { key, .. } if *key == canary)
            || matches!(e, WatchEvent::Delete { key } if *key == gone)
    })
    .await;
    assert_eq!(
        after,
        [WatchEvent::Delete { key: gone }],
        "only what the writer no longer has is forgotten; unchanged values are not reported again"
    );
    watcher.abort();
}

/// A prefix larger than gRPC's 4 MiB message limit (an exporter restoring
/// 25,000 published identities at start): an unpaged read fails on every
/// retry, so the restart stalls; `read_all` pages it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_a_prefix_past_the_grpc_limit_is_paged() {
    use etcd_client::{Txn, TxnOp};
    let mut cluster = TestCluster::new("p", 9);
    cluster.start_etcd();
    let mut c = cluster.admin().await;
    let prefix = "knit/v1/clusters/p/identities/";
    let n = 25_000;
    let labels = "x".repeat(200);
    for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
        let ops: Vec<TxnOp> = chunk
            .iter()
            .map(|i| {
                TxnOp::put(
                    format!("{prefix}{i:06}"),
                    format!(r#"{{"id":{i},"labels":{{"l":"{labels}"}}}}"#),
                    None,
                )
            })
            .collect();
        c.txn(Txn::new().and_then(ops)).await.unwrap();
    }
    let unpaged = c.get(prefix, Some(GetOptions::new().with_prefix())).await;
    assert!(
        unpaged.is_err(),
        "the prefix is past the limit, as the test means it to be"
    );
    let records: Vec<serde_json::Value> = etcd::read_all(&mut c, prefix).await.unwrap();
    assert_eq!(records.len(), n);
}

/// A reader moved from one mesh apiserver replica to another (each with
/// its own etcd: other revisions, other write order) reports only what
/// differs between them, never a deletion of a key both hold (Cilium's
/// failover removals, cilium/cilium#30964). It goes to a replica whose
/// revision is far behind, and back to one far ahead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_to_another_replica_reports_only_what_differs() {
    let prefix = "knit/v1/clusters/e/";
    let canary = format!("{prefix}synced/nodes");
    let node = |i: usize| format!("{prefix}nodes/n{i:03}");
    let mut replicas = [TestCluster::new("r0", 9), TestCluster::new("r1", 9)];
    for r in &mut replicas {
        r.start_etcd();
    }
    // Replica 0: nodes 0-99, far ahead in revisions. Replica 1: nodes 1-100
    // written in reverse, node 7 with another value.
    let mut c0 = replicas[0].admin().await;
    for _ in 0..500 {
        c0.put("filler", "x", None).await.unwrap();
    }
    for i in 0..100 {
        c0.put(node(i), "v", None).await.unwrap();
    }
    c0.put(canary.as_str(), "1", None).await.unwrap();
    let mut c1 = replicas[1].admin().await;
    for i in (1..=100).rev() {
        c1.put(node(i), if i == 7 { "other" } else { "v" }, None)
            .await
            .unwrap();
    }
    c1.put(canary.as_str(), "1", None).await.unwrap();

    let (tx, mut rx) = mpsc::channel(10_000);
    let configs = [replicas[0].admin_config(), replicas[1].admin_config()];
    let serving = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let which = serving.clone();
    let connect = move || {
        let config = configs[which.load(Ordering::SeqCst)].clone();
        async move { etcd::connect(&config).await }
    };
    let watcher = tokio::spawn(watch_prefix(connect, prefix.to_owned(), tx));
    events_until(&mut rx, |e| *e == WatchEvent::ListDone).await;

    let mut moved = Vec::new();
    for (from, to) in [(0, 1), (1, 0)] {
        serving.store(to, Ordering::SeqCst);
        replicas[from].stop_etcd();
        let events = events_until(&mut rx, |e| *e == WatchEvent::ListDone).await;
        // Releases of held keys follow the list at once.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut changes: Vec<WatchEvent> = events
            .into_iter()
            .chain(std::iter::from_fn(|| rx.try_recv().ok()))
            .filter(|e| !matches!(e, WatchEvent::Disconnected { .. } | WatchEvent::ListDone))
            .collect();
        changes.sort_by_key(|e| format!("{e:?}"));
        moved.push(changes);
        replicas[from].start_etcd();
    }
    let upsert = |i: usize, v: &str| WatchEvent::Upsert {
        key: node(i),
        value: v.as_bytes().to_vec(),
    };
    let delete = |i: usize| WatchEvent::Delete { key: node(i) };
    assert_eq!(
        moved[0],
        [delete(0), upsert(7, "other"), upsert(100, "v")],
        "to replica 1: node 0 is gone, node 100 is new, node 7 changed; nothing else"
    );
    assert_eq!(
        moved[1],
        [delete(100), upsert(0, "v"), upsert(7, "v")],
        "back to replica 0"
    );
    watcher.abort();
}
