//! The pure mesh render: spec + stored state in, objects + status out.

mod common;

use common::*;
use jiff::SignedDuration;
use knit_kvstore::{Access, EtcdAccess, EtcdClientConfig};
use knit_operator::names;
use knit_operator::pki;
use knit_operator::render::PeerSyncReport;

fn names_of(plan: &knit_operator::render::MeshPlan) -> Vec<String> {
    let mut out: Vec<String> = plan
        .secrets
        .iter()
        .map(|s| format!("Secret/{}", s.metadata.name.clone().unwrap()))
        .collect();
    out.extend(
        plan.config_maps
            .iter()
            .map(|c| format!("ConfigMap/{}", c.metadata.name.clone().unwrap())),
    );
    out.push(format!(
        "Deployment/{}",
        plan.deployment.metadata.name.clone().unwrap()
    ));
    out.push(format!("Service/{}", plan.service.metadata.name.clone().unwrap()));
    out.push(format!(
        "Service/{}",
        plan.replicas_service.metadata.name.clone().unwrap()
    ));
    out.push(format!(
        "Service/{}",
        plan.peer_service.metadata.name.clone().unwrap()
    ));
    out
}

#[test]
fn one_peer_yields_every_object_with_its_name() {
    let config = config_a();
    let b = peer("b", "b", 2, "2026-01-01T00:00:00Z");
    let plan = render(&config, std::slice::from_ref(&b), &Default::default(), t0());

    assert_eq!(
        names_of(&plan),
        vec![
            "Secret/knit-ca",
            "Secret/knit-local-ca",
            "Secret/knit-apiserver-server-cert",
            "Secret/knit-peer-front-cert",
            "Secret/knit-admin-client-cert",
            "Secret/knit-local-client-cert",
            "Secret/knit-peer-access",
            "Secret/knit-peer-configs",
            "ConfigMap/knit-mesh-ca",
            "ConfigMap/knit-trusted-client-cas",
            "ConfigMap/knit-etcd-users",
            "Deployment/knit-apiserver",
            "Service/knit-apiserver",
            "Service/knit-apiserver-replicas",
            "Service/knit-apiserver-peers",
        ]
    );
    for s in &plan.secrets {
        assert_eq!(s.metadata.namespace.as_deref(), Some("knit-system"));
        assert_eq!(
            s.metadata.labels.as_ref().unwrap()[names::MANAGED_BY_LABEL],
            "knit-operator"
        );
    }

    // Peer config: etcd client config with the peer's identity, its CA, our client cert.
    let cfg = EtcdClientConfig::from_yaml(&secret_text(&plan, names::PEER_CONFIGS_SECRET, "b.yaml").unwrap())
        .unwrap();
    assert_eq!(cfg.endpoints, vec!["https://mesh.b.example.com:2379"]);
    assert_eq!(cfg.cert_file.to_str(), Some("b.crt"));
    let identity = cfg.peer.unwrap();
    assert_eq!((identity.cluster_name.as_str(), identity.cluster_id), ("b", 2));
    assert_eq!(identity.pod_cidrs, vec!["10.2.0.0/16"]);
    assert_eq!(
        secret_text(&plan, names::PEER_CONFIGS_SECRET, "b.ca.crt").unwrap(),
        *b.ca.as_ref().unwrap()
    );
    let client = secret_text(&plan, names::PEER_CONFIGS_SECRET, "b.crt").unwrap();
    assert_eq!(pki::inspect(&client).unwrap().common_name, "remote-a");
    let ca = secret_text(&plan, names::CA_SECRET, "ca.crt").unwrap();
    assert!(pki::is_signed_by(&client, &ca));

    // etcd trusts our local CA only (not even our mesh CA); b reaches it
    // through the peer front as remote-b, with a certificate the local CA
    // issued; that user may read our prefix only.
    let local_ca = secret_text(&plan, names::LOCAL_CA_SECRET, "ca.crt").unwrap();
    assert_ne!(local_ca, ca, "a new cluster gets two CAs");
    let trusted = cm_text(&plan, names::TRUSTED_CAS_CONFIGMAP, "ca.crt").unwrap();
    assert!(
        trusted.contains(&local_ca) && !trusted.contains(&ca) && !trusted.contains(b.ca.as_ref().unwrap())
    );
    let access_cert = secret_text(&plan, names::PEER_ACCESS_SECRET, "b.crt").unwrap();
    assert_eq!(pki::inspect(&access_cert).unwrap().common_name, "remote-b");
    assert!(pki::is_signed_by(&access_cert, &local_ca));
    for (secret, signer) in [
        (names::SERVER_CERT_SECRET, &local_ca),
        (names::ADMIN_CERT_SECRET, &local_ca),
        (names::LOCAL_CERT_SECRET, &local_ca),
        (names::FRONT_CERT_SECRET, &ca),
    ] {
        let cert = secret_text(&plan, secret, "tls.crt").unwrap();
        assert!(pki::is_signed_by(&cert, signer), "{secret}");
        assert_eq!(
            secret_text(&plan, secret, "ca.crt").as_ref(),
            Some(signer),
            "{secret}"
        );
    }
    assert_eq!(cm_text(&plan, names::PUBLIC_CA_CONFIGMAP, "ca.crt").unwrap(), ca);
    let args = plan
        .deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[1]
        .args
        .clone()
        .unwrap();
    assert!(
        args.contains(&"--peer-listen=0.0.0.0:2480".to_owned()),
        "{args:?}"
    );
    let access =
        EtcdAccess::from_yaml(&cm_text(&plan, names::ETCD_USERS_CONFIGMAP, "users.yaml").unwrap()).unwrap();
    let user = access.users.iter().find(|u| u.name == "remote-b").unwrap();
    assert_eq!(user.access, Access::ReadOwnCluster);
    assert_eq!(
        access
            .users
            .iter()
            .filter(|u| u.access == Access::ReadWrite)
            .count(),
        1
    );

    // Server certificate covers the Service names, loopback and the external address.
    let server = pki::inspect(&secret_text(&plan, names::SERVER_CERT_SECRET, "tls.crt").unwrap()).unwrap();
    for san in [
        "knit-apiserver.knit-system.svc",
        "127.0.0.1",
        "mesh.a.example.com",
    ] {
        assert!(
            server.sans.iter().any(|s| s == san),
            "missing SAN {san}: {:?}",
            server.sans
        );
    }

    // Status: certificate ready, waiting for the apiserver's report.
    let status = &plan.peer_statuses["b"];
    let cond = |t: &str| status.conditions.iter().find(|c| c.type_ == t).unwrap();
    assert_eq!(cond("CertificateReady").status, "True");
    assert_eq!(cond("Connected").status, "Unknown");
    assert_eq!(cond("Ready").status, "False");
    assert_eq!(status.observed_generation, Some(1));
    assert!(status.client_certificate_expiry.is_some());
}

#[test]
fn rendering_again_changes_nothing_and_issues_nothing() {
    let config = config_a();
    let mut b = peer("b", "b", 2, "2026-01-01T00:00:00Z");
    let first = render(&config, std::slice::from_ref(&b), &Default::default(), t0());
    assert!(first.events.iter().any(|e| e.reason == "CertificateIssued"));
    b.status = Some(first.peer_statuses["b"].clone());
    let later = t0() + SignedDuration::from_hours(24);
    let second = render(&config, std::slice::from_ref(&b), &stored(&first), later);
    assert_eq!(first.secrets, second.secrets);
    assert_eq!(first.config_maps, second.config_maps);
    assert_eq!(first.deployment, second.deployment);
    assert_eq!(
        first.peer_statuses, second.peer_statuses,
        "status must not churn, or the watch re-triggers"
    );
    assert!(second.events.is_empty(), "{:?}", second.events);
}

#[test]
fn deleting_a_peer_removes_its_config_trust_and_user_and_rolls_etcd() {
    let config = config_a();
    let b = peer("b", "b", 2, "2026-01-01T00:00:00Z");
    let c = peer("c", "c", 3, "2026-01-01T00:00:00Z");
    let both = render(&config, &[b.clone(), c], &Default::default(), t0());
    assert!(secret_text(&both, names::PEER_CONFIGS_SECRET, "c.yaml").is_some());
    let only_b = render(&config, std::slice::from_ref(&b), &stored(&both), t0());
    let keys_of = |name: &str| -> Vec<String> {
        only_b
            .secrets
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(name))
            .unwrap()
            .data
            .as_ref()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    };
    assert_eq!(
        keys_of(names::PEER_CONFIGS_SECRET),
        vec!["b.ca.crt", "b.crt", "b.key", "b.yaml"]
    );
    assert_eq!(
        keys_of(names::PEER_ACCESS_SECRET),
        vec!["b.crt", "b.key", "ca.crt"]
    );
    assert!(
        !cm_text(&only_b, names::ETCD_USERS_CONFIGMAP, "users.yaml")
            .unwrap()
            .contains("remote-c")
    );
    assert!(
        !cm_text(&only_b, names::TRUSTED_CAS_CONFIGMAP, "ca.crt")
            .unwrap()
            .contains("peer c")
    );
    assert_ne!(trust_hash(&both), trust_hash(&only_b));
    // b's client certificate was kept, not re-issued.
    assert_eq!(
        secret_text(&both, names::PEER_CONFIGS_SECRET, "b.crt"),
        secret_text(&only_b, names::PEER_CONFIGS_SECRET, "b.crt")
    );
}

#[test]
fn certificates_due_for_renewal_are_reissued_by_the_same_ca_before_expiry() {
    let config = config_a();
    let b = peer("b", "b", 2, "2026-01-01T00:00:00Z");
    let first = render(&config, std::slice::from_ref(&b), &Default::default(), t0());
    let at = t0() + SignedDuration::from_hours(24 * 250);
    let renewed = render(&config, std::slice::from_ref(&b), &stored(&first), at);
    let ca = secret_text(&first, names::CA_SECRET, "ca.crt").unwrap();
    let local_ca = secret_text(&first, names::LOCAL_CA_SECRET, "ca.crt").unwrap();
    assert_eq!(
        secret_text(&renewed, names::CA_SECRET, "ca.crt").unwrap(),
        ca,
        "the CA is pinned by peers"
    );
    assert_eq!(
        secret_text(&renewed, names::LOCAL_CA_SECRET, "ca.crt").unwrap(),
        local_ca
    );
    for (secret, key, signer) in [
        (names::SERVER_CERT_SECRET, "tls.crt", &local_ca),
        (names::FRONT_CERT_SECRET, "tls.crt", &ca),
        (names::PEER_CONFIGS_SECRET, "b.crt", &ca),
        (names::PEER_ACCESS_SECRET, "b.crt", &local_ca),
    ] {
        let old = secret_text(&first, secret, key).unwrap();
        let new = secret_text(&renewed, secret, key).unwrap();
        assert_ne!(old, new, "{secret}/{key} was not renewed");
        assert!(pki::is_signed_by(&new, signer), "{secret}/{key}");
        assert!(
            pki::inspect(&old).unwrap().not_after > at,
            "the old certificate must still be valid at renewal"
        );
    }
    let issued = renewed
        .events
        .iter()
        .find(|e| e.reason == "CertificateIssued")
        .unwrap();
    assert_eq!(
        issued.note.matches("issued certificate").count(),
        6,
        "{}",
        issued.note
    );
}

#[test]
fn changing_external_addresses_reissues_only_the_server_certificate() {
    let mut config = config_a();
    let first = render(&config, &[], &Default::default(), t0());
    config.apiserver.external_addresses.push("192.0.2.7".into());
    let second = render(&config, &[], &stored(&first), t0());
    assert_ne!(
        secret_text(&first, names::SERVER_CERT_SECRET, "tls.crt"),
        secret_text(&second, names::SERVER_CERT_SECRET, "tls.crt")
    );
    assert_eq!(
        secret_text(&first, names::ADMIN_CERT_SECRET, "tls.crt"),
        secret_text(&second, names::ADMIN_CERT_SECRET, "tls.crt")
    );
}

#[test]
fn a_bad_peer_is_reported_by_field_and_the_others_still_work() {
    let config = config_a();
    let b = peer("b", "b", 2, "2026-01-01T00:00:00Z");
    let dup_id = peer("c", "c", 2, "2026-02-01T00:00:00Z");
    let own_name = peer("self", "a", 9, "2026-01-01T00:00:00Z");
    let mut bad_ca = peer("d", "d", 4, "2026-01-01T00:00:00Z");
    bad_ca.ca = Ok("not a certificate".into());
    let mut missing_secret = peer("e", "e", 5, "2026-01-01T00:00:00Z");
    missing_secret.ca = Err("spec.caSecretRef: Secret \"e-ca\" with key \"ca.crt\" not found".into());

    let plan = render(
        &config,
        &[b, dup_id, own_name, bad_ca, missing_secret],
        &Default::default(),
        t0(),
    );
    assert_eq!(
        plan.accepted.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        vec!["b"]
    );
    for (peer, field) in [
        ("c", "spec.clusterID 2 is already used by ClusterMeshPeer \"b\""),
        ("self", "spec.clusterName \"a\" is this cluster's own name"),
        ("d", "spec.caBundle does not hold a PEM certificate"),
        ("e", "spec.caSecretRef"),
    ] {
        let status = &plan.peer_statuses[peer];
        let err = status.last_error.as_deref().unwrap_or_default();
        assert!(err.contains(field), "{peer}: {err}");
        let cert = status
            .conditions
            .iter()
            .find(|c| c.type_ == "CertificateReady")
            .unwrap();
        assert_eq!(
            (cert.status.as_str(), cert.reason.as_str()),
            ("False", "InvalidPeer")
        );
        assert!(
            plan.events.iter().any(|e| e.warning && e.note.contains(field)),
            "no warning Event for {peer}"
        );
    }
    assert!(secret_text(&plan, names::PEER_CONFIGS_SECRET, "b.yaml").is_some());
    assert!(secret_text(&plan, names::PEER_CONFIGS_SECRET, "c.yaml").is_none());
}

#[test]
fn the_apiservers_report_fills_counts_and_readiness() {
    let config = config_a();
    let mut b = peer("b", "b", 2, "2026-01-01T00:00:00Z");
    b.sync = Some(PeerSyncReport {
        connected: true,
        synced: true,
        agents: Some((2, 3)),
        nodes_not_connected: vec!["a-n3: none of its 2 nodes answers the data-path probe (UDP 8471)".into()],
        nodes: 2,
        endpoints: 40,
        services: 5,
        identities: 7,
        over_limit: 12,
        last_sync: Some(t0()),
        last_error: None,
        tunnel_port_mismatch: None,
        encryption_mismatch: None,
    });
    let plan = render(&config, std::slice::from_ref(&b), &Default::default(), t0());
    let status = &plan.peer_statuses["b"];
    assert_eq!(status.connected.as_deref(), Some("2/3"));
    assert_eq!(
        status.nodes_not_connected,
        ["a-n3: none of its 2 nodes answers the data-path probe (UDP 8471)"]
    );
    assert_eq!(
        status.records_over_limit,
        Some(12),
        "records over the peer's limits show in status"
    );
    assert_eq!(
        (status.remote_endpoints, status.remote_services),
        (Some(40), Some(5))
    );
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(ready.status, "True");
    assert!(plan.events.iter().any(|e| e.reason == "ReadyTrue"));
}

#[test]
fn the_apiserver_runs_etcd_with_client_certificate_auth() {
    let plan = render(&config_a(), &[], &Default::default(), t0());
    let pod = plan
        .deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap();
    let etcd = pod.containers.iter().find(|c| c.name == "etcd").unwrap();
    let args = etcd.args.as_ref().unwrap();
    for arg in [
        "--client-cert-auth=true",
        "--trusted-ca-file=/etc/knit/trusted-cas/ca.crt",
    ] {
        assert!(args.iter().any(|a| a == arg), "missing {arg}");
    }
    let apiserver = pod.containers.iter().find(|c| c.name == "apiserver").unwrap();
    assert!(
        apiserver
            .args
            .as_ref()
            .unwrap()
            .iter()
            .any(|a| a == "--cluster-id=1")
    );
    assert_eq!(
        plan.peer_service.spec.as_ref().unwrap().type_.as_deref(),
        Some("LoadBalancer")
    );
    assert_eq!(
        plan.service.spec.as_ref().unwrap().type_.as_deref(),
        Some("ClusterIP"),
        "etcd's Service stays inside the cluster"
    );
}

#[test]
fn a_mesh_apiserver_report_becomes_peer_status() {
    use knit_kvstore::records::PeerStatusRecord;
    let report = PeerStatusRecord {
        peer: "b".into(),
        connected: false,
        synced: false,
        counts: [
            (knit_kvstore::keys::Kind::Endpoints, 12),
            (knit_kvstore::keys::Kind::Services, 2),
        ]
        .into(),
        last_error: Some("connection refused".into()),
        withdrawn: true,
        ..Default::default()
    };
    let mut b = peer("b", "b", 2, "2026-01-01T00:00:00Z");
    b.sync = Some(PeerSyncReport::from(&report));
    let plan = render(&config_a(), std::slice::from_ref(&b), &Default::default(), t0());
    let status = &plan.peer_statuses["b"];
    assert_eq!(status.remote_endpoints, Some(12));
    let connected = status.conditions.iter().find(|c| c.type_ == "Connected").unwrap();
    assert_eq!(
        (connected.status.as_str(), connected.reason.as_str()),
        ("False", "Unreachable")
    );
    let err = status.last_error.as_deref().unwrap();
    assert!(
        err.contains("connection refused") && err.contains("withdrawn"),
        "{err}"
    );
    assert_eq!(status.connected, None, "agent counts are not reported yet");
}

#[test]
fn empty_pod_cidrs_leave_the_flag_out() {
    let mut config = config_a();
    let args = knit_operator::render::workloads::apiserver_args(&config);
    assert!(args.iter().any(|a| a.starts_with("--pod-cidrs=10.")), "{args:?}");
    config.pod_cidrs.clear();
    let args = knit_operator::render::workloads::apiserver_args(&config);
    assert!(
        !args.iter().any(|a| a.starts_with("--pod-cidrs")),
        "an empty --pod-cidrs= cannot be parsed: {args:?}"
    );
}

#[test]
fn the_apiserver_pod_admits_peers_everywhere_and_etcd_clients_only_from_configured_cidrs() {
    let mut config = config_a();
    let open = render(&config, &[], &Default::default(), t0()).network_policy;
    let rules = open.spec.as_ref().unwrap().ingress.clone().unwrap();
    assert_eq!(rules.len(), 2);
    assert!(
        rules.iter().all(|r| r.from.is_none()),
        "no CIDRs configured: any source"
    );
    let ports = |r: &k8s_openapi::api::networking::v1::NetworkPolicyIngressRule| {
        r.ports
            .iter()
            .flatten()
            .map(|p| format!("{:?}", p.port.as_ref().unwrap()))
            .collect::<Vec<_>>()
    };
    assert_eq!(ports(&rules[0]), ["Int(2480)", "Int(9962)"]);
    assert_eq!(ports(&rules[1]), ["Int(2379)"]);

    config.apiserver.etcd_client_cidrs = vec!["192.168.0.0/16".into()];
    let closed = render(&config, &[], &Default::default(), t0()).network_policy;
    let etcd = &closed.spec.as_ref().unwrap().ingress.as_ref().unwrap()[1];
    let from = etcd.from.as_ref().unwrap();
    assert_eq!(from[0].ip_block.as_ref().unwrap().cidr, "192.168.0.0/16");
    // The operator reaches etcd from its pod: always admitted.
    assert_eq!(
        from[1]
            .pod_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap()["app.kubernetes.io/name"],
        "knit-operator"
    );

    // Host-network agents come from their Node's addresses or the tunnel
    // and bridge addresses at the start of its pod CIDR: admitted even when
    // etcdClientCIDRs leaves them out.
    let nodes: Vec<k8s_openapi::api::core::v1::Node> = serde_json::from_value(serde_json::json!([
        { "metadata": { "name": "n1" },
          "spec": { "podCIDRs": ["10.244.1.0/24", "fd00:1::/64"] },
          "status": { "addresses": [
              { "type": "InternalIP", "address": "172.18.0.2" },
              { "type": "Hostname", "address": "n1" } ] } },
        { "metadata": { "name": "n2" },
          "spec": { "podCIDR": "10.244.2.0/24" },
          "status": { "addresses": [{ "type": "InternalIP", "address": "172.18.0.3" }] } }
    ]))
    .unwrap();
    let sources = knit_operator::render::workloads::node_sources(&nodes);
    assert_eq!(
        sources.iter().map(ToString::to_string).collect::<Vec<_>>(),
        [
            "10.244.1.0",
            "10.244.1.1",
            "10.244.2.0",
            "10.244.2.1",
            "172.18.0.2",
            "172.18.0.3"
        ]
    );
    let policy = knit_operator::render::workloads::apiserver_network_policy(&config, &sources).unwrap();
    let from = policy.spec.unwrap().ingress.unwrap()[1].from.clone().unwrap();
    let cidrs: Vec<String> = from
        .iter()
        .filter_map(|p| p.ip_block.as_ref().map(|b| b.cidr.clone()))
        .collect();
    assert_eq!(
        cidrs,
        [
            "192.168.0.0/16",
            "10.244.1.0/32",
            "10.244.1.1/32",
            "10.244.2.0/32",
            "10.244.2.1/32",
            "172.18.0.2/32",
            "172.18.0.3/32"
        ]
    );
    assert!(
        knit_operator::config::ClusterConfig::from_yaml(
            "clusterName: a\nclusterID: 1\napiserver: {etcdClientCIDRs: [nodes]}\n"
        )
        .unwrap_err()
        .to_string()
        .contains("apiserver.etcdClientCIDRs")
    );
}

#[test]
fn every_certificate_has_one_expiry_for_the_alert() {
    let b = peer("b", "b", 2, "2026-01-01T00:00:00Z");
    let plan = render(&config_a(), &[b], &Default::default(), t0());
    let expiries = knit_operator::render::certificate_expiries(&plan);
    let keys: Vec<&str> = expiries.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "knit-admin-client-cert/tls.crt",
            "knit-apiserver-server-cert/tls.crt",
            "knit-ca/ca.crt",
            "knit-local-ca/ca.crt",
            "knit-local-client-cert/tls.crt",
            "knit-peer-access/b.crt",
            "knit-peer-configs/b.ca.crt",
            "knit-peer-configs/b.crt",
            "knit-peer-front-cert/tls.crt",
        ]
    );
    let leaf = (t0() + SignedDuration::from_hours(24 * 365)).as_second();
    assert_eq!(expiries["knit-peer-front-cert/tls.crt"], leaf);
    assert!(expiries["knit-ca/ca.crt"] > leaf);
}

#[test]
fn the_apiserver_announces_the_agents_tunnel_port_and_routing_mode_from_their_configmap() {
    let deployment = knit_operator::render::workloads::apiserver_deployment(&config_a(), "h").unwrap();
    let value = serde_json::to_value(&deployment).unwrap();
    let containers = value["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    let apiserver = containers.iter().find(|c| c["name"] == "apiserver").unwrap();
    assert_eq!(
        apiserver["env"],
        serde_json::json!([{"name": "KNIT_TUNNEL_PORT", "valueFrom": {"configMapKeyRef": {
            "name": "knit-agent-config", "key": "tunnelPort", "optional": true}}},
            {"name": "KNIT_ROUTING_MODE", "valueFrom": {"configMapKeyRef": {
            "name": "knit-agent-config", "key": "routingMode", "optional": true}}},
            {"name": "KNIT_ENCRYPTION", "valueFrom": {"configMapKeyRef": {
            "name": "knit-agent-config", "key": "encryption", "optional": true}}},
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}]),
        "one place for the port, the mode and the encryption: the agents' ConfigMap; the pod's namespace holds knit-identities"
    );
}

/// The Connected condition of peer `b` given its sync report, and the
/// Ready condition's reason.
fn connected_given(sync: PeerSyncReport) -> (String, String, String, String) {
    let config = config_a();
    let mut b = peer("b", "b", 2, "2026-01-01T00:00:00Z");
    b.sync = Some(sync);
    let plan = render(&config, std::slice::from_ref(&b), &Default::default(), t0());
    let status = &plan.peer_statuses["b"];
    let connected = status.conditions.iter().find(|c| c.type_ == "Connected").unwrap();
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    (
        connected.status.clone(),
        connected.reason.clone(),
        connected.message.clone(),
        ready.reason.clone(),
    )
}

#[test]
fn a_peer_on_another_tunnel_port_is_not_connected_and_says_which_port() {
    let (status, reason, message, ready) = connected_given(PeerSyncReport {
        connected: true,
        synced: true,
        agents: Some((0, 2)),
        tunnel_port_mismatch: Some(8473),
        ..Default::default()
    });
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "TunnelPortMismatch")
    );
    assert!(
        message.contains("UDP 8473") && message.contains("tunnelPort"),
        "{message}"
    );
    assert_eq!(ready, "TunnelPortMismatch");
}

#[test]
fn a_peer_whose_nodes_encrypt_otherwise_is_not_connected_and_says_so() {
    let (status, reason, message, ready) = connected_given(PeerSyncReport {
        connected: true,
        synced: true,
        agents: Some((0, 2)),
        encryption_mismatch: Some("none".into()),
        ..Default::default()
    });
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "EncryptionMismatch")
    );
    assert!(
        message.contains("encryption is none and this cluster's agents' is wireguard"),
        "{message}"
    );
    assert_eq!(ready, "EncryptionMismatch");
}

/// The mesh apiserver survives drains and pressure: it has a disruption
/// budget and a critical priority, and the shipped PodMonitor scrapes it.
#[test]
fn the_apiserver_has_a_disruption_budget_a_priority_and_is_scraped() {
    let plan = render(&config_a(), &[], &Default::default(), t0());
    let pod = plan.deployment.spec.as_ref().unwrap().template.clone();
    let spec = pod.spec.unwrap();
    assert_eq!(
        spec.priority_class_name.as_deref(),
        Some("system-cluster-critical")
    );
    let pdb = plan.disruption_budget.spec.unwrap();
    assert_eq!(
        pdb.min_available,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );
    let labels = pod.metadata.unwrap().labels.unwrap();
    assert_eq!(pdb.selector.unwrap().match_labels.unwrap(), labels);

    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/monitoring/podmonitors.yaml"
    ))
    .unwrap();
    let monitor = text
        .split("\n---\n")
        .map(|doc| serde_saphyr::from_str::<serde_json::Value>(doc).unwrap())
        .find(|d| d["metadata"]["name"] == "knit-apiserver")
        .expect("a PodMonitor for the mesh apiserver");
    for (k, v) in monitor["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(labels.get(k).map(String::as_str), v.as_str(), "selector {k}");
    }
    let port = monitor["spec"]["podMetricsEndpoints"][0]["port"]
        .as_str()
        .unwrap();
    assert!(
        spec.containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .any(|p| p.name.as_deref() == Some(port)),
        "no container port named {port}"
    );
}

/// A peer may only announce inside pod CIDRs its ClusterMeshPeer declares,
/// and the operator refuses declarations that would let it route this
/// cluster's or another peer's pods (issue: adversarial peers, point 1).
#[test]
fn a_peers_pod_cidrs_are_required_bounded_and_disjoint() {
    let config = config_a(); // pod CIDR 10.1.0.0/16
    let with = |name: &str, id: u16, created: &str, cidrs: &[&str]| {
        let mut p = peer(name, name, id, created);
        p.spec.pod_cidrs = cidrs.iter().map(|c| c.to_string()).collect();
        p
    };
    let b = with("b", 2, "2026-01-01T00:00:00Z", &["10.2.0.0/16"]);
    let cases = [
        (
            with("c", 3, "2026-01-02T00:00:00Z", &[]),
            "spec.podCIDRs is required",
        ),
        (
            with("c", 3, "2026-01-02T00:00:00Z", &["0.0.0.0/0"]),
            "wider than /8",
        ),
        (
            with("c", 3, "2026-01-02T00:00:00Z", &["10.0.0.0/7"]),
            "wider than /8",
        ),
        (
            with("c", 3, "2026-01-02T00:00:00Z", &["10.1.5.0/24"]),
            "overlaps this cluster's pod CIDR 10.1.0.0/16",
        ),
        (
            with("c", 3, "2026-01-02T00:00:00Z", &["10.0.0.0/8"]),
            "overlaps this cluster's pod CIDR",
        ),
        (
            with("c", 3, "2026-01-02T00:00:00Z", &["10.3.0.0/16", "10.2.128.0/17"]),
            "overlaps 10.2.0.0/16 of ClusterMeshPeer \"b\"",
        ),
        (
            with("c", 3, "2026-01-02T00:00:00Z", &["fd00::/16"]),
            "wider than /32",
        ),
        (
            with("c", 3, "2026-01-02T00:00:00Z", &["10.96.128.0/20"]),
            "overlaps this cluster's Service CIDR 10.96.0.0/12",
        ),
    ];
    let mut config = config;
    config.service_cidrs = vec!["10.96.0.0/12".into()];
    for (c, why) in cases {
        let plan = render(&config, &[b.clone(), c], &Default::default(), t0());
        assert_eq!(
            plan.accepted.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            ["b"],
            "{why}"
        );
        let ready = plan.peer_statuses["c"]
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap()
            .clone();
        assert_eq!(ready.status, "False");
        assert!(ready.message.contains(why), "{why}: {}", ready.message);
        assert!(
            secret_text(&plan, names::PEER_CONFIGS_SECRET, "c.yaml").is_none(),
            "a refused peer gets no config"
        );
    }
    let ok = with("c", 3, "2026-01-02T00:00:00Z", &["10.3.0.0/16", "fd00:3::/48"]);
    let plan = render(&config, &[b, ok], &Default::default(), t0());
    assert_eq!(plan.accepted.len(), 2);
}

/// Keys in the mesh apiserver's pod are readable by its own user only
/// (with the pod's fsGroup, the kubelet adds group read for that group).
#[test]
fn secret_volumes_are_mounted_owner_read_only() {
    let plan = render(&config_a(), &[], &Default::default(), t0());
    let volumes = plan
        .deployment
        .spec
        .unwrap()
        .template
        .spec
        .unwrap()
        .volumes
        .unwrap();
    let secrets: Vec<_> = volumes.iter().filter_map(|v| v.secret.as_ref()).collect();
    assert_eq!(secrets.len(), 5);
    for s in secrets {
        assert_eq!(s.default_mode, Some(0o400), "{:?}", s.secret_name);
    }
}

#[test]
fn a_peers_ca_bundle_holds_only_its_own_readable_certificates() {
    let config = config_a();
    let b = peer("b", "b", 2, "2026-01-01T00:00:00Z");
    let b_ca = b.ca.clone().unwrap();
    let with_bundle = |bundle: String| {
        let mut c = peer("c", "c", 3, "2026-01-02T00:00:00Z");
        c.spec.ca_bundle = Some(bundle.clone());
        c.ca = Ok(bundle);
        c
    };
    let c_ca = peer("c", "c", 3, "2026-01-02T00:00:00Z").ca.unwrap();
    let garbage = "-----BEGIN CERTIFICATE-----\nMAMCAQA=\n-----END CERTIFICATE-----\n";
    let cases = [
        (
            with_bundle(format!("{c_ca}{garbage}")),
            "certificate 2 is not X.509",
        ),
        (
            with_bundle(format!("{c_ca}{b_ca}")),
            "spec.caBundle holds the CA of ClusterMeshPeer \"b\"",
        ),
    ];
    for (c, why) in cases {
        let plan = render(&config, &[b.clone(), c], &Default::default(), t0());
        assert_eq!(
            plan.accepted.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            ["b"],
            "{why}: only c is refused"
        );
        let ready = plan.peer_statuses["c"]
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap()
            .clone();
        assert!(ready.message.contains(why), "{why}: {}", ready.message);
    }
    // A rolling peer's two CAs are fine.
    let c_next = peer("c", "c", 3, "2026-01-02T00:00:00Z").ca.unwrap();
    let plan = render(
        &config,
        &[b, with_bundle(format!("{c_ca}{c_next}"))],
        &Default::default(),
        t0(),
    );
    assert_eq!(plan.accepted.len(), 2);
}
