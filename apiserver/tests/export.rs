//! The pure export and the directory source, without etcd.

use std::collections::BTreeMap;
use std::time::Duration;

use knit_apiserver::export::identity::IdentityAllocator;
use knit_apiserver::export::{LocalCluster, export};
use knit_kvstore::keys::Kind;
use knit_kvstore::records::{Affinity, EndpointRecord, ServiceRecord};
use knit_sources::Source;
use knit_sources::directory::DirectorySource;
use knit_testkit::TempDir;
use knit_testkit::manifests::{global_service, node, pod};

fn cluster() -> LocalCluster {
    LocalCluster {
        name: "a".into(),
        id: 1,
        pod_cidrs: vec!["10.1.0.0/16".parse().unwrap()],
        tunnel_port: Some(8472),
        routing_mode: Default::default(),
    }
}

fn source(files: &[(&str, String)]) -> (TempDir, DirectorySource) {
    let dir = TempDir::new("export-test");
    for (name, yaml) in files {
        std::fs::write(dir.path().join(name), yaml).unwrap();
    }
    let mut src = DirectorySource::new(dir.path(), Duration::from_secs(60));
    src.poll();
    (dir, src)
}

fn service(out: &BTreeMap<String, Vec<u8>>, key: &str) -> ServiceRecord {
    serde_json::from_slice(&out[key]).unwrap()
}

#[test]
fn exports_nodes_endpoints_identities_and_only_exported_services() {
    let mut yaml = node("n1", "192.168.1.1", "10.1.1.0/24");
    yaml += &pod("shop", "web-1", "n1", "10.1.1.1", "web");
    yaml += &pod("shop", "web-2", "n1", "10.1.1.2", "web");
    yaml += &pod("shop", "db-1", "n1", "10.1.1.3", "db");
    yaml += &pod("shop", "stray", "n1", "10.9.0.1", "web");
    yaml += "apiVersion: v1\nkind: Pod\nmetadata: {name: host, namespace: kube-system}\nspec: {hostNetwork: true, containers: []}\nstatus: {phase: Running, podIP: 10.1.1.9}\n---\n";
    yaml += "apiVersion: v1\nkind: Pod\nmetadata: {name: done, namespace: shop}\nspec: {containers: []}\nstatus: {phase: Succeeded, podIP: 10.1.1.8}\n---\n";
    yaml += "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ignored}\n---\n";
    let (_dir, src) = source(&[
        ("cluster.yaml", yaml),
        (
            "web.yaml",
            global_service("shop", "web", 80, &["10.1.1.1", "10.1.1.2"], true),
        ),
        (
            "db.yaml",
            global_service("shop", "db", 5432, &["10.1.1.3"], false),
        ),
    ]);
    assert_eq!(src.skipped, 1);
    let mut ids = IdentityAllocator::new(1);
    let out = export(&cluster(), src.state(), &Default::default(), &mut ids);

    assert_eq!(out.counts[&Kind::Nodes], 1);
    assert_eq!(
        out.counts[&Kind::Endpoints],
        3,
        "host-network, finished and out-of-CIDR pods are not endpoints"
    );
    assert_eq!(
        out.counts[&Kind::Identities],
        2,
        "web pods share one identity, db has another"
    );
    assert_eq!(
        out.counts[&Kind::Services],
        1,
        "only the exported service is published"
    );
    assert!(
        out.skipped_pods.iter().any(|s| s.contains("10.9.0.1")),
        "{:?}",
        out.skipped_pods
    );

    let web1: EndpointRecord =
        serde_json::from_slice(&out.published["knit/v1/clusters/a/endpoints/10.1.1.1"]).unwrap();
    let web2: EndpointRecord =
        serde_json::from_slice(&out.published["knit/v1/clusters/a/endpoints/10.1.1.2"]).unwrap();
    assert_eq!(web1.identity, web2.identity);
    assert_eq!(web1.identity >> 15, 1);
    let identity =
        String::from_utf8(out.published[&format!("knit/v1/clusters/a/identities/{}", web1.identity)].clone())
            .unwrap();
    assert!(
        identity.contains("\"knit.dev/cluster\":\"a\"")
            && identity.contains("\"io.kubernetes.pod.namespace\":\"shop\""),
        "{identity}"
    );

    let web = service(&out.published, "knit/v1/clusters/a/services/shop/web");
    assert_eq!(
        web.backends.iter().map(|b| b.ip.to_string()).collect::<Vec<_>>(),
        vec!["10.1.1.1", "10.1.1.2"]
    );
    assert_eq!(web.backends[0].ports["http"], 80);
    assert!(!out.published.contains_key("knit/v1/clusters/a/services/shop/db"));
    let db = service(&out.local, "knit/v1/local/services/shop/db");
    assert!(
        !db.export && db.backends.len() == 1,
        "the local copy keeps local backends"
    );
}

#[test]
fn without_configured_pod_cidrs_the_nodes_podcidrs_bound_the_export() {
    let mut yaml = node("n1", "192.168.1.1", "10.1.1.0/24");
    yaml += &node("n2", "192.168.1.2", "10.1.2.0/24");
    yaml += &pod("shop", "web-1", "n1", "10.1.1.1", "web");
    yaml += &pod("shop", "web-2", "n2", "10.1.2.1", "web");
    yaml += &pod("shop", "stray", "n1", "10.9.0.1", "web");
    let (_dir, src) = source(&[("cluster.yaml", yaml)]);
    let mut ids = IdentityAllocator::new(1);
    let unconfigured = LocalCluster {
        pod_cidrs: Vec::new(),
        ..cluster()
    };
    let out = export(&unconfigured, src.state(), &Default::default(), &mut ids);
    assert_eq!(out.counts[&Kind::Endpoints], 2, "{:?}", out.skipped_pods);
    let config: serde_json::Value =
        serde_json::from_slice(&out.published["knit/v1/clusters/a/config"]).unwrap();
    assert_eq!(
        config["podCIDRs"],
        serde_json::json!(["10.1.1.0/24", "10.1.2.0/24"])
    );
}

#[test]
fn cilium_annotations_make_a_service_global_and_the_oldest_policy_wins() {
    let annotated = "apiVersion: v1\nkind: Service\nmetadata:\n  name: api\n  namespace: shop\n  annotations:\n    service.cilium.io/global: \"true\"\n    service.cilium.io/affinity: remote\nspec:\n  ports: [{name: http, port: 8080}]\n---\n";
    let policy = |name: &str, created: &str, affinity: &str| {
        format!(
            "apiVersion: knit.dev/v1alpha1\nkind: GlobalServicePolicy\nmetadata: {{name: {name}, namespace: shop, creationTimestamp: \"{created}\"}}\nspec:\n  selector: {{matchLabels: {{tier: front}}}}\n  affinity: {affinity}\n---\n"
        )
    };
    let front = "apiVersion: v1\nkind: Service\nmetadata: {name: front, namespace: shop, labels: {tier: front}}\nspec:\n  ports: [{name: http, port: 80}]\n---\n";
    let (_dir, src) = source(&[
        ("api.yaml", annotated.to_owned()),
        ("front.yaml", front.to_owned()),
        ("p1.yaml", policy("newer", "2026-02-01T00:00:00Z", "local")),
        ("p2.yaml", policy("older", "2026-01-01T00:00:00Z", "remote")),
    ]);
    let out = export(
        &cluster(),
        src.state(),
        &Default::default(),
        &mut IdentityAllocator::new(1),
    );
    assert_eq!(
        service(&out.published, "knit/v1/clusters/a/services/shop/api").affinity,
        Affinity::Remote
    );
    assert_eq!(
        service(&out.published, "knit/v1/clusters/a/services/shop/front").affinity,
        Affinity::Remote,
        "the older policy governs"
    );
}

#[test]
fn a_broken_file_keeps_its_last_good_contents_and_a_removed_file_its_objects_go() {
    let (dir, mut src) = source(&[("pods.yaml", pod("shop", "web-1", "n1", "10.1.1.1", "web"))]);
    assert_eq!(src.state().pods.len(), 1);
    std::fs::write(
        dir.path().join("pods.yaml"),
        "kind: Pod\nmetadata: [this is: not a pod\n",
    )
    .unwrap();
    src.poll();
    assert_eq!(src.state().pods.len(), 1, "a parse error loses nothing");
    assert_eq!(src.errors.len(), 1);
    std::fs::write(
        dir.path().join("pods.yaml"),
        pod("shop", "web-2", "n1", "10.1.1.2", "web"),
    )
    .unwrap();
    assert!(src.reload(&[dir.path().join("pods.yaml")]));
    assert!(src.state().pods.contains_key("shop/web-2") && !src.state().pods.contains_key("shop/web-1"));
    assert!(src.errors.is_empty());
    std::fs::remove_file(dir.path().join("pods.yaml")).unwrap();
    assert!(src.reload(&[dir.path().join("pods.yaml")]));
    assert!(src.state().pods.is_empty());
}

/// A Service `shop/<name>` with ClusterIP `vip` (or none: headless) and no GlobalServicePolicy.
fn plain_service(name: &str, vip: Option<&str>, labels: &str) -> String {
    let ip = vip
        .map(|v| format!("  clusterIP: {v}\n  clusterIPs: [{v}]\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: shop\n  labels: {{{labels}}}\nspec:\n{ip}  sessionAffinity: ClientIP\n  ports:\n  - name: http\n    port: 80\n    protocol: TCP\n---\n"
    )
}

const SERVICE_EXPORT: &str = "apiVersion: multicluster.x-k8s.io/v1alpha1\nkind: ServiceExport\nmetadata:\n  name: web\n  namespace: shop\n  creationTimestamp: \"2026-01-02T03:04:05Z\"\n---\n";
const DERIVED_LABELS: &str =
    "multicluster.kubernetes.io/service-name: web, app.kubernetes.io/managed-by: knit-operator";

#[test]
fn a_service_export_exports_its_service_and_keeps_its_cluster_ip_local() {
    let (_dir, src) = source(&[
        ("web.yaml", plain_service("web", Some("10.96.0.10"), "")),
        ("export.yaml", SERVICE_EXPORT.to_owned()),
    ]);
    let out = export(
        &cluster(),
        src.state(),
        &Default::default(),
        &mut IdentityAllocator::new(1),
    );
    eprintln!(
        "DBG errors {:?} keys {:?} exports {:?}",
        src.errors,
        out.published.keys().collect::<Vec<_>>(),
        src.state().service_exports
    );
    let exported = service(&out.published, "knit/v1/clusters/a/services/shop/web");
    assert!(exported.export && exported.import);
    let facts = exported
        .service_export
        .expect("MCS facts for conflict resolution");
    assert_eq!(facts.created_unix, 1767323045);
    assert_eq!(facts.session_affinity, "ClientIP");
    assert!(!facts.headless);
    // No clusterset VIP yet, and the Service's own ClusterIP stays with kube-proxy.
    let local = service(&out.local, "knit/v1/local/services/shop/web");
    assert!(local.cluster_ips.is_empty(), "{:?}", local.cluster_ips);

    // Without the ServiceExport the Service is not exported at all.
    let (_dir, src) = source(&[("web.yaml", plain_service("web", Some("10.96.0.10"), ""))]);
    let out = export(
        &cluster(),
        src.state(),
        &Default::default(),
        &mut IdentityAllocator::new(1),
    );
    assert!(!out.published.contains_key("knit/v1/clusters/a/services/shop/web"));
}

#[test]
fn the_derived_service_gives_local_clients_the_clusterset_vip() {
    // With the Service here: the clusterset VIP serves it and the peers.
    let (_dir, src) = source(&[
        ("web.yaml", plain_service("web", Some("10.96.0.10"), "")),
        ("export.yaml", SERVICE_EXPORT.to_owned()),
        (
            "derived.yaml",
            plain_service("derived-1a2b3c4d", Some("10.96.240.7"), DERIVED_LABELS),
        ),
    ]);
    let out = export(
        &cluster(),
        src.state(),
        &Default::default(),
        &mut IdentityAllocator::new(1),
    );
    let local = service(&out.local, "knit/v1/local/services/shop/web");
    assert_eq!(
        local.cluster_ips,
        ["10.96.240.7".parse::<std::net::IpAddr>().unwrap()]
    );
    assert!(local.import);
    assert!(
        !out.published
            .contains_key("knit/v1/clusters/a/services/shop/derived-1a2b3c4d"),
        "a derived Service is never exported itself"
    );
    assert_eq!(
        service(&out.published, "knit/v1/clusters/a/services/shop/web").cluster_ips,
        ["10.96.0.10".parse::<std::net::IpAddr>().unwrap()]
    );

    // A consumer without the Service: import only, no backends of its own.
    let (_dir, src) = source(&[(
        "derived.yaml",
        plain_service("derived-1a2b3c4d", Some("10.96.240.7"), DERIVED_LABELS),
    )]);
    let out = export(
        &cluster(),
        src.state(),
        &Default::default(),
        &mut IdentityAllocator::new(1),
    );
    let local = service(&out.local, "knit/v1/local/services/shop/web");
    assert_eq!(
        local.cluster_ips,
        ["10.96.240.7".parse::<std::net::IpAddr>().unwrap()]
    );
    assert!(local.import && !local.export && local.backends.is_empty());
    assert_eq!(local.ports[0].name, "http");
    assert!(
        out.published
            .keys()
            .all(|k| !k.starts_with("knit/v1/clusters/a/services/"))
    );

    // Another implementation's derived Service (not managed by Knit) is an ordinary Service.
    let (_dir, src) = source(&[(
        "derived.yaml",
        plain_service(
            "derived-x",
            Some("10.96.240.8"),
            "multicluster.kubernetes.io/service-name: web",
        ),
    )]);
    let out = export(
        &cluster(),
        src.state(),
        &Default::default(),
        &mut IdentityAllocator::new(1),
    );
    assert!(!out.local.contains_key("knit/v1/local/services/shop/web"));
}

#[test]
fn the_policys_cluster_allow_list_reaches_the_local_record() {
    let yaml = global_service("shop", "web", 80, &["10.1.1.1"], true)
        .replace("  export: true\n", "  export: true\n  clusters: [b]\n");
    let (_dir, src) = source(&[
        ("cluster.yaml", node("n1", "192.168.1.1", "10.1.1.0/24")),
        ("web.yaml", yaml),
    ]);
    let mut ids = IdentityAllocator::new(1);
    let out = export(&cluster(), src.state(), &Default::default(), &mut ids);
    let local = service(&out.local, "knit/v1/local/services/shop/web");
    assert_eq!(local.import_clusters, Some(vec!["b".to_owned()]));
}

#[test]
fn a_node_record_carries_the_wireguard_key_its_agent_reports() {
    use knit_kvstore::records::{NodeRecord, NodeWireguard, WireguardKey};
    let mut yaml = node("n1", "192.168.1.1", "10.1.1.0/24");
    yaml += &node("n2", "192.168.1.2", "10.1.2.0/24");
    let (_dir, src) = source(&[("cluster.yaml", yaml)]);
    let reported = NodeWireguard {
        public_key: WireguardKey::try_from("hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=".to_owned())
            .unwrap(),
        port: 51871,
        next: None,
    };
    let keys = BTreeMap::from([("n1".to_owned(), reported.clone())]);
    let out = export(&cluster(), src.state(), &keys, &mut IdentityAllocator::new(1));
    let record = |n: &str| -> NodeRecord {
        serde_json::from_slice(&out.published[&format!("knit/v1/clusters/a/nodes/{n}")]).unwrap()
    };
    assert_eq!(record("n1").wireguard, Some(reported));
    assert_eq!(record("n2").wireguard, None);
    let raw = String::from_utf8(out.published["knit/v1/clusters/a/nodes/n2"].clone()).unwrap();
    assert!(
        !raw.contains("wireguard"),
        "a node without a key writes the record as before: {raw}"
    );
}
