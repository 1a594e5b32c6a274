//! The SyncStore's owned-key listing against real etcd: listed in pages at
//! one revision, so a peer with 100,000 endpoints (about 6 MB of keys,
//! beyond gRPC's 4 MiB message limit in one response) still syncs. `make
//! bench`'s 100,000-endpoint sync exercises the real size.

use knit_kvstore::backend::EtcdBackend;
use knit_testkit::TestCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owned_keys_are_listed_page_by_page() {
    let mut c = TestCluster::new("a", 1);
    c.start_etcd();
    let client = c.admin().await;
    let mut kv = client.kv_client();
    for i in 0..20 {
        kv.put(format!("knit/v1/cache/b/endpoints/10.2.0.{i}"), "{}", None)
            .await
            .unwrap();
    }
    kv.put("knit/v1/cache/c/endpoints/10.3.0.1", "{}", None)
        .await
        .unwrap();
    let backend = EtcdBackend(client);
    let mut keys = backend.keys_paged("knit/v1/cache/b/", 7).await.unwrap();
    keys.sort();
    let mut want: Vec<String> = (0..20)
        .map(|i| format!("knit/v1/cache/b/endpoints/10.2.0.{i}"))
        .collect();
    want.sort();
    assert_eq!(
        keys, want,
        "every key of the prefix, once, across 3 pages; none of another prefix"
    );
}
