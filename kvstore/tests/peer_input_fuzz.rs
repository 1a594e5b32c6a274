//! Everything a peer can send, fuzzed (proptest): keys, the record JSON of
//! every kind, and the draining logic fed arbitrary key sequences. No input
//! may panic; a rejected record is rejected, an accepted one satisfies the
//! peer's bounds.
//!
//! `make test` runs the default number of cases (256 per property);
//! `make fuzz` sets `PROPTEST_CASES` high.

use std::net::IpAddr;

use knit_kvstore::PeerIdentity;
use knit_kvstore::drain::StaleKeys;
use knit_kvstore::keys::{Key, RelativeKey};
use knit_kvstore::records::{EndpointRecord, NodeRecord, ServiceRecord, identity_cluster};
use knit_kvstore::validate::PeerValidator;
use proptest::prelude::*;
use serde_json::{Value, json};

fn validator() -> PeerValidator {
    PeerValidator::new(&PeerIdentity {
        cluster_name: "b".into(),
        cluster_id: 2,
        pod_cidrs: vec!["10.2.0.0/16".into()],
        limits: Default::default(),
    })
}

/// Key-shaped strings: mostly the schema's own segments, shuffled.
fn key_like() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        Just("knit".to_owned()),
        Just("v1".to_owned()),
        Just("clusters".to_owned()),
        Just("cache".to_owned()),
        Just("synced".to_owned()),
        Just("services".to_owned()),
        Just("endpoints".to_owned()),
        Just("nodes".to_owned()),
        Just("identities".to_owned()),
        Just("config".to_owned()),
        Just("local".to_owned()),
        Just("mesh-status".to_owned()),
        Just("..".to_owned()),
        Just(String::new()),
        "[a-z0-9.\\-]{1,12}",
        ".{0,8}",
    ];
    prop::collection::vec(segment, 0..8).prop_map(|s| s.join("/"))
}

/// JSON values shaped like records, with fields added, dropped or of the
/// wrong type.
fn record_like() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u32>().prop_map(Value::from),
        "[0-9.:/a-f]{0,20}".prop_map(Value::from),
        Just(json!("b")),
        Just(json!("10.2.0.5")),
        Just(json!("10.9.0.5")),
        Just(json!("TCP")),
        Just(json!("local")),
    ];
    let value = leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("ip".to_owned()),
                    Just("cluster".to_owned()),
                    Just("identity".to_owned()),
                    Just("ports".to_owned()),
                    Just("backends".to_owned()),
                    "[a-zA-Z]{1,8}"
                ],
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    let base = prop_oneof![
        Just(
            json!({"ip": "10.2.0.5", "cluster": "b", "identity": 65543, "node": "n1", "namespace": "x", "pod": "p"})
        ),
        Just(
            json!({"name": "n1", "cluster": "b", "underlayIps": ["192.168.50.20"], "podCIDRs": ["10.2.1.0/24"], "tunnelEndpoint": "192.168.50.20"})
        ),
        Just(
            json!({"cluster": "b", "namespace": "shop", "name": "web", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
            "backends": [{"ip": "10.2.0.5", "ports": {"http": 8080}, "ready": true}], "export": true, "import": true, "affinity": "none"})
        ),
        Just(json!({"id": 65543, "cluster": "b", "labels": {"app": "web"}})),
        Just(json!({"name": "b", "id": 2, "podCIDRs": ["10.2.0.0/16"]})),
    ];
    (base, prop::collection::vec(("[a-zA-Z]{1,10}", value), 0..4)).prop_map(|(mut base, edits)| {
        if let Value::Object(map) = &mut base {
            for (field, v) in edits {
                map.insert(field, v);
            }
        }
        base
    })
}

fn in_bounds(ip: IpAddr) -> bool {
    "10.2.0.0/16".parse::<ipnet::IpNet>().unwrap().contains(&ip)
}

proptest! {
    #[test]
    fn any_key_parses_without_panic_and_round_trips(key in key_like()) {
        if let Some(parsed) = Key::parse(&key) {
            prop_assert_eq!(Key::parse(&parsed.to_string()), Some(parsed));
        }
        let _ = RelativeKey::parse(&key);
    }

    #[test]
    fn arbitrary_bytes_are_rejected_without_panic(rel in key_like(), value in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = validator().check(&rel, &value);
    }

    #[test]
    fn accepted_records_stay_inside_the_peers_bounds(
        kind in prop_oneof![Just("endpoints"), Just("nodes"), Just("services"), Just("identities"), Just("config")],
        name in prop_oneof![Just("10.2.0.5".to_owned()), Just("n1".to_owned()), Just("shop/web".to_owned()), Just("65543".to_owned()), "[a-z0-9.]{1,10}"],
        record in record_like(),
    ) {
        let rel = if kind == "config" { "config".to_owned() } else { format!("{kind}/{name}") };
        let bytes = serde_json::to_vec(&record).unwrap();
        if validator().check(&rel, &bytes).is_ok() {
            match kind {
                "endpoints" => {
                    let ep: EndpointRecord = serde_json::from_slice(&bytes).unwrap();
                    prop_assert_eq!(ep.cluster.as_str(), "b");
                    prop_assert!(in_bounds(ep.ip));
                    prop_assert_eq!(identity_cluster(ep.identity), 2);
                }
                "nodes" => {
                    let node: NodeRecord = serde_json::from_slice(&bytes).unwrap();
                    prop_assert_eq!(node.cluster.as_str(), "b");
                }
                "services" => {
                    let svc: ServiceRecord = serde_json::from_slice(&bytes).unwrap();
                    prop_assert_eq!(svc.cluster.as_str(), "b");
                    prop_assert!(svc.backends.iter().all(|b| in_bounds(b.ip)));
                }
                _ => {}
            }
        }
    }

    #[test]
    fn draining_never_panics_and_never_releases_what_was_written_back(
        stale in prop::collection::vec(key_like().prop_map(|k| format!("knit/v1/{k}")), 0..20),
        puts in prop::collection::vec(key_like().prop_map(|k| format!("knit/v1/{k}")), 0..20),
    ) {
        let mut s = StaleKeys::default();
        let forgotten = s.after_list(stale.clone(), []);
        prop_assert!(forgotten.iter().all(|k| stale.contains(k)));
        for key in &puts {
            let released = s.on_put(key);
            prop_assert!(released.iter().all(|k| stale.contains(k)));
            prop_assert!(!released.contains(key));
        }
    }
}
