//! What a peer can and cannot do to our etcd, and what happens to the bad
//! records a peer publishes.

mod common;

use common::*;
use etcd_client::{GetOptions, PutOptions};
use knit_kvstore::etcd;
use knit_kvstore::keys::{cache_prefix, mesh_status_key};
use knit_kvstore::records::{PeerStatusRecord, identity};
use knit_testkit::TestCluster;
use knit_testkit::cluster::{connect_retrying, full_mesh};
use knit_testkit::manifests::{global_service, node, pod};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_certificate_is_read_only_on_our_prefix_and_an_untrusted_ca_is_refused() {
    let mut clusters = vec![TestCluster::new("a", 1), TestCluster::new("b", 2)];
    full_mesh(&mut clusters);
    let [a, b] = &mut clusters[..] else { unreachable!() };
    a.write_source(
        "cluster.yaml",
        &(node("a-n1", "192.168.1.1", "10.1.1.0/24") + &pod("x", "p", "a-n1", "10.1.1.5", "web")),
    );
    let admin = start_exporting(a).await;
    admin
        .clone()
        .put("knit/v1/local/secret-ish", "x", None)
        .await
        .expect("the admin writes");

    // b's client certificate for a (CN remote-b, signed by b's CA).
    let mut remote = connect_retrying(&b.peer_config("a")).await;
    let own = remote
        .get("knit/v1/clusters/a/", Some(GetOptions::new().with_prefix()))
        .await
        .expect("reads a's prefix");
    assert!(own.kvs().len() >= 5, "remote-b reads a's own prefix");
    for key in [
        "knit/v1/clusters/a/nodes/evil",
        "knit/v1/cache/b/nodes/x",
        "knit/v1/clusters/b/nodes/x",
    ] {
        let err = remote
            .put(key, "{}", None::<PutOptions>)
            .await
            .expect_err("a peer must not write");
        assert!(err.to_string().contains("permission denied"), "{key}: {err}");
    }
    let err = remote
        .delete("knit/v1/clusters/a/nodes/a-n1", None)
        .await
        .expect_err("a peer must not delete");
    assert!(err.to_string().contains("permission denied"), "{err}");
    for prefix in ["knit/v1/local/", "knit/v1/cache/", "knit/v1/"] {
        let err = remote
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await
            .expect_err("outside its prefix");
        assert!(err.to_string().contains("permission denied"), "{prefix}: {err}");
    }
    let err = remote.user_list().await.expect_err("no user management");
    assert!(err.to_string().contains("permission denied"), "{err}");

    // A cluster a never exchanged manifests with: its CA is not trusted.
    let stranger = TestCluster::new("z", 9);
    let mut config = stranger.admin_config();
    config.endpoints = vec![format!("https://127.0.0.1:{}", a.port)];
    config.trusted_ca_file = a.pki().join("knit-local-ca/ca.crt");
    let refused = match etcd::connect(&config).await {
        Err(_) => true,
        Ok(mut c) => c.get("knit/v1/clusters/a/config", None).await.is_err(),
    };
    assert!(
        refused,
        "a client certificate from an untrusted CA must be refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_front_relays_only_the_methods_a_kvstoremesh_needs() {
    let mut clusters = vec![TestCluster::new("a", 1), TestCluster::new("b", 2)];
    full_mesh(&mut clusters);
    let [a, b] = &mut clusters[..] else { unreachable!() };
    let admin = start_exporting_with(a, &["--front-max-connections-per-peer=1"]).await;

    // Through the front: range and watch work (a watch sees a change).
    let mut front = connect_retrying(&b.peer_config("a")).await;
    let mut stream = front
        .watch(
            "knit/v1/clusters/a/nodes/",
            Some(etcd_client::WatchOptions::new().with_prefix()),
        )
        .await
        .expect("a peer may watch");
    admin
        .clone()
        .put("knit/v1/clusters/a/nodes/late", "{}", None)
        .await
        .unwrap();
    let seen = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            let resp = stream.message().await.expect("watch stream").expect("watch open");
            if resp.events().iter().any(|e| {
                e.kv()
                    .is_some_and(|kv| kv.key() == b"knit/v1/clusters/a/nodes/late")
            }) {
                break;
            }
        }
    })
    .await;
    assert!(seen.is_ok(), "the watch through the front saw no change");

    // Calls etcd's RBAC does not cover are stopped at the front.
    let denied = |e: etcd_client::Error| e.to_string().contains("the peer front does not relay");
    assert!(front.lease_grant(60, None).await.is_err_and(denied));
    assert!(front.member_list().await.is_err_and(denied));
    assert!(
        front
            .alarm(etcd_client::AlarmAction::Get, etcd_client::AlarmType::None, None)
            .await
            .is_err_and(denied)
    );
    assert!(
        front
            .put("knit/v1/clusters/a/nodes/x", "{}", None)
            .await
            .is_err_and(denied)
    );
    // A refusal is answered only after the front's longest wait (1 s), so
    // a peer looping on refused calls gets one a second per stream; the
    // soak bench's attacker was answered 2,450 refusals a second before.
    let asked = std::time::Instant::now();
    assert!(front.lease_grant(60, None).await.is_err_and(denied));
    assert!(
        asked.elapsed() >= std::time::Duration::from_millis(900),
        "{:?}",
        asked.elapsed()
    );

    // A connection over the peer's limit is refused as late: b's second
    // connection (the limit is 1) is closed a second after its handshake.
    let asked = std::time::Instant::now();
    let mut second = etcd::connect(&b.peer_config("a"))
        .await
        .expect("a lazy connection");
    let read = second.get("knit/v1/clusters/a/nodes/late", None).await;
    assert!(read.is_err(), "a second connection is over the limit of 1");
    assert!(
        asked.elapsed() >= std::time::Duration::from_millis(900),
        "{:?}",
        asked.elapsed()
    );

    // The same user straight at etcd may grant a lease and list members:
    // without the front's filter, a peer could.
    let access = a.pki().join("knit-peer-access");
    let direct = knit_kvstore::EtcdClientConfig {
        endpoints: vec![format!("https://127.0.0.1:{}", a.port)],
        trusted_ca_file: access.join("ca.crt"),
        cert_file: access.join("b.crt"),
        key_file: access.join("b.key"),
        peer: None,
    };
    let mut direct = connect_retrying(&direct).await;
    assert!(direct.lease_grant(60, None).await.is_ok());
    assert!(direct.member_list().await.is_ok());
}

/// Whether a client with `config` is refused: no connection, or neither a
/// read nor a write succeeds.
async fn refused(config: &knit_kvstore::EtcdClientConfig) -> bool {
    match tokio::time::timeout(std::time::Duration::from_secs(10), etcd::connect(config)).await {
        Err(_) | Ok(Err(_)) => true,
        Ok(Ok(mut c)) => {
            let read = c
                .get("knit/v1/", Some(GetOptions::new().with_prefix()))
                .await
                .is_ok();
            let write = c.put("knit/v1/clusters/a/nodes/evil", "{}", None).await.is_ok();
            !read && !write
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peers_ca_can_act_only_as_that_peer() {
    use knit_operator::pki::{self, CertKeyPair, LeafSpec, Usage};

    let mut clusters = vec![
        TestCluster::new("a", 1),
        TestCluster::new("b", 2),
        TestCluster::new("c", 3),
    ];
    full_mesh(&mut clusters);
    let [a, b, _c] = &mut clusters[..] else {
        unreachable!()
    };
    a.write_source("cluster.yaml", &node("a-n1", "192.168.1.1", "10.1.1.0/24"));
    start_exporting(a).await;

    // The legitimate peer: b's own certificate for a, through a's front.
    let legit = b.peer_config("a");
    assert_eq!(
        legit.endpoints,
        vec![format!("https://127.0.0.1:{}", a.front_port)]
    );
    let mut remote = connect_retrying(&legit).await;
    let own = remote
        .get("knit/v1/clusters/a/", Some(GetOptions::new().with_prefix()))
        .await
        .expect("remote-b reads a's prefix through the front");
    assert!(!own.kvs().is_empty());

    // b's CA mints certificates for other identities: refused by a's front
    // and by a's etcd directly, for reads and writes alike.
    let read = |f: &str| std::fs::read_to_string(b.pki().join("knit-ca").join(f)).unwrap();
    let b_ca = CertKeyPair {
        cert_pem: read("ca.crt"),
        key_pem: read("ca.key"),
    };
    let dir = knit_testkit::TempDir::new("minted");
    for cn in ["admin", "local", "remote-c"] {
        let spec = LeafSpec {
            common_name: cn.into(),
            sans: vec![],
            usage: Usage::Client,
        };
        let minted = pki::issue(&b_ca, &spec, jiff::Timestamp::now(), 1).unwrap();
        let (cert, key) = (
            dir.path().join(format!("{cn}.crt")),
            dir.path().join(format!("{cn}.key")),
        );
        std::fs::write(&cert, &minted.cert_pem).unwrap();
        std::fs::write(&key, &minted.key_pem).unwrap();
        for endpoint in [
            format!("https://127.0.0.1:{}", a.front_port),
            format!("https://127.0.0.1:{}", a.port),
        ] {
            let config = knit_kvstore::EtcdClientConfig {
                endpoints: vec![endpoint.clone()],
                trusted_ca_file: a.pki().join("knit-ca/ca.crt"),
                cert_file: cert.clone(),
                key_file: key.clone(),
                peer: None,
            };
            assert!(
                refused(&config).await,
                "a certificate b's CA minted as {cn} got in at {endpoint}"
            );
        }
    }
    // And b's genuine certificate is refused by etcd itself: only the front
    // takes it.
    let mut direct = legit.clone();
    direct.endpoints = vec![format!("https://127.0.0.1:{}", a.port)];
    assert!(refused(&direct).await, "etcd must not trust a peer's CA");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_foreign_records_from_a_peer_are_rejected_and_counted() {
    let mut clusters = vec![TestCluster::new("a", 1), TestCluster::new("b", 2)];
    full_mesh(&mut clusters);
    for c in clusters.iter_mut() {
        c.start_etcd();
    }
    let [a, b] = &mut clusters[..] else { unreachable!() };
    b.write_source(
        "cluster.yaml",
        &(node("b-n1", "192.168.2.1", "10.2.1.0/24") + &pod("x", "good", "b-n1", "10.2.1.5", "web")),
    );
    b.write_source("web.yaml", &global_service("x", "web", 80, &["10.2.1.5"], true));
    b.start_apiserver(APISERVER, &[]);
    let b_admin = b.admin().await;
    eventually(30, "b's first export", &[&*b], || async {
        (!keys(&b_admin, "knit/v1/clusters/b/synced/").await.is_empty()).then_some(())
    })
    .await;

    // A misbehaving b publishes bad records next to its good ones.
    let p = "knit/v1/clusters/b/";
    let bad = [
        (format!("{p}endpoints/10.9.0.1"), json!({"ip": "10.9.0.1", "cluster": "b", "identity": identity(2, 9), "node": "b-n1", "namespace": "x", "pod": "p"}).to_string()),
        (format!("{p}endpoints/10.2.1.9"), json!({"ip": "10.2.1.9", "cluster": "a", "identity": identity(2, 9), "node": "b-n1", "namespace": "x", "pod": "p"}).to_string()),
        (format!("{p}endpoints/10.2.1.10"), json!({"ip": "10.2.1.10", "cluster": "b", "identity": identity(1, 9), "node": "b-n1", "namespace": "x", "pod": "p"}).to_string()),
        (format!("{p}endpoints/10.2.1.11"), "{this is not json".to_owned()),
        (format!("{p}pods/whatever"), "{}".to_owned()),
    ];
    let mut w = b_admin.clone();
    for (k, v) in &bad {
        w.put(k.as_str(), v.as_str(), None).await.unwrap();
    }

    a.start_apiserver(APISERVER, &[]);
    let a_admin = a.admin().await;
    let st: PeerStatusRecord = eventually(30, "a to sync b and count rejections", &[&*a, &*b], || async {
        let v = dump(&a_admin, &mesh_status_key("b")).await.into_values().next()?;
        let st: PeerStatusRecord = serde_json::from_slice(&v).ok()?;
        (st.synced && st.rejected.values().sum::<u64>() >= 5).then_some(st)
    })
    .await;
    assert_eq!(st.rejected.get("outside_pod_cidrs"), Some(&1), "{st:?}");
    assert_eq!(st.rejected.get("foreign_cluster"), Some(&1), "{st:?}");
    assert_eq!(st.rejected.get("identity_out_of_range"), Some(&1), "{st:?}");
    assert_eq!(st.rejected.get("malformed_value"), Some(&1), "{st:?}");
    assert_eq!(st.rejected.get("malformed_key"), Some(&1), "{st:?}");
    // The good records still flowed, and none of the bad ones.
    let mirrored = keys(&a_admin, &cache_prefix("b")).await;
    assert!(mirrored.contains(&format!("{}endpoints/10.2.1.5", cache_prefix("b"))));
    assert!(mirrored.contains(&format!("{}services/x/web", cache_prefix("b"))));
    assert_eq!(
        mirrored.iter().filter(|k| k.contains("/endpoints/")).count(),
        1,
        "{mirrored:?}"
    );
}

/// A slowloris at the front's file-descriptor limit: a host opens TCP
/// connections and never starts TLS. The front used to hold every one for
/// its handshake timeout, ran out of descriptors (the accept loop then
/// spun on EMFILE) and served no peer; each source now has a few
/// handshakes in progress at most, the rest are closed at once and
/// counted, and a genuine peer reads as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_at_the_descriptor_limit_leaves_other_peers_served() {
    let mut clusters = vec![TestCluster::new("a", 1), TestCluster::new("b", 2)];
    full_mesh(&mut clusters);
    let [a, b] = &mut clusters[..] else { unreachable!() };
    let _admin = start_exporting(a).await;
    let pid = a.apiserver_pid().expect("apiserver running");
    let limited = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), "--nofile=128:128"])
        .status()
        .expect("prlimit");
    assert!(limited.success());

    let front: std::net::SocketAddr = format!("127.0.0.1:{}", a.front_port).parse().unwrap();
    let mut held = Vec::new();
    for _ in 0..300 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        if let Ok(stream) = socket.connect(front).await {
            held.push(stream);
        }
    }
    assert!(held.len() > 200, "the slowloris connected {} times", held.len());
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;

    // Well within the slowloris' handshake timeout (10 s).
    let config = b.peer_config("a");
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        let mut peer = connect_retrying(&config).await;
        peer.get("knit/v1/clusters/a/", Some(GetOptions::new().with_prefix()))
            .await
    })
    .await;
    assert!(
        read.is_ok_and(|r| r.is_ok_and(|r| !r.kvs().is_empty())),
        "the genuine peer is not served during the slowloris"
    );
    drop(held);
}

/// A peer that loops on reads as fast as it can is paced to its request
/// rate: its calls wait their turn instead of being refused at once (which
/// let it call again at once, and cost the front more than the reads),
/// and another peer is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_looping_on_reads_is_paced_to_its_rate_and_others_are_not() {
    let mut clusters = vec![
        TestCluster::new("a", 1),
        TestCluster::new("b", 2),
        TestCluster::new("c", 3),
    ];
    full_mesh(&mut clusters);
    let [a, b, c] = &mut clusters[..] else {
        unreachable!()
    };
    a.start_etcd();
    a.start_apiserver(common::APISERVER, &["--front-requests-per-second=20"]);
    let admin = a.admin().await;
    common::eventually(30, "the first export", &[&*a], || async {
        (!common::keys(&admin, "knit/v1/clusters/a/synced/")
            .await
            .is_empty())
        .then_some(())
    })
    .await;

    let mut flood = connect_retrying(&c.peer_config("a")).await;
    let (mut answered, mut refused) = (0u32, 0u32);
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_secs(3) {
        match flood
            .get(
                "knit/v1/clusters/a/",
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await
        {
            Ok(_) => answered += 1,
            Err(_) => refused += 1,
        }
    }
    eprintln!("c's loop: {answered} reads answered, {refused} refused in 3 s");
    // A burst of 40, then 20/s.
    assert!(answered <= 40 + 3 * 20 + 5, "{answered} reads answered");
    assert_eq!(
        refused, 0,
        "a client that waits for its answers is paced, never refused"
    );

    // b has a bucket of its own (its pacing is unit-tested in
    // front::limits; here: it is served while c is in debt).
    let mut genuine = connect_retrying(&b.peer_config("a")).await;
    for _ in 0..10 {
        let read = genuine
            .get("knit/v1/clusters/a/", Some(GetOptions::new().with_prefix()))
            .await
            .expect("b reads");
        assert!(!read.kvs().is_empty());
    }
}

/// One read is at most a page: a list without a limit (or above the
/// front's `--front-max-read-keys`) is answered with a page and `more`,
/// so no peer can make etcd walk a whole big cluster in one call; a
/// KVStoreMesh pages and still mirrors every record, and single-key gets
/// are untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_is_at_most_a_page_and_the_mirror_pages_through_everything() {
    let mut clusters = vec![
        TestCluster::new("a", 1),
        TestCluster::new("b", 2),
        TestCluster::new("c", 3),
    ];
    full_mesh(&mut clusters);
    let [a, b, c] = &mut clusters[..] else {
        unreachable!()
    };
    let mut source = node("a-n1", "192.168.1.1", "10.1.1.0/24");
    for i in 1..=7 {
        source += &pod("x", &format!("p{i}"), "a-n1", &format!("10.1.1.{i}"), "web");
    }
    a.write_source("cluster.yaml", &source);
    for cluster in [&mut *a, &mut *b] {
        cluster.start_etcd();
    }
    a.start_apiserver(APISERVER, &["--front-max-read-keys=3"]);
    b.start_apiserver(APISERVER, &[]);
    let b_admin = b.admin().await;
    let endpoints = format!("{}endpoints/", cache_prefix("a"));
    eventually(
        30,
        "b to mirror all 7 of a's endpoints through pages of 3",
        &[&*a, &*b],
        || async { (keys(&b_admin, &endpoints).await.len() == 7).then_some(()) },
    )
    .await;

    let mut reader = connect_retrying(&c.peer_config("a")).await;
    for asked in [None, Some(5000)] {
        let mut options = GetOptions::new().with_prefix();
        if let Some(limit) = asked {
            options = options.with_limit(limit);
        }
        let page = reader
            .get("knit/v1/clusters/a/endpoints/", Some(options))
            .await
            .expect("c reads");
        assert_eq!(page.kvs().len(), 3, "asked for {asked:?}");
        assert!(page.more(), "the page says there is more");
        assert_eq!(page.count(), 7, "the count is of the whole range");
    }
    let small = reader
        .get(
            "knit/v1/clusters/a/endpoints/",
            Some(GetOptions::new().with_prefix().with_limit(2)),
        )
        .await
        .expect("c reads two");
    assert_eq!(small.kvs().len(), 2, "a smaller limit is kept");
    let single = reader
        .get("knit/v1/clusters/a/endpoints/10.1.1.4", None)
        .await
        .expect("c reads one key");
    assert_eq!(single.kvs().len(), 1);
}
