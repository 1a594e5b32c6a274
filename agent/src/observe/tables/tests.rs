use std::collections::BTreeMap;

use knit_datapath_common::{EndpointValue, IpcacheValue, addr_be, port_be};

use super::*;
use crate::datapath::state::Direction;
use crate::observe::describe::PodName;

struct Fake;

impl Directory for Fake {
    fn cluster_name(&self, id: u32) -> Option<String> {
        Some(format!("cluster-{id}"))
    }
    fn identity_labels(&self, identity: u32) -> BTreeMap<String, String> {
        if identity == (1 << 15) | 9 {
            return BTreeMap::new();
        }
        BTreeMap::from([("app".to_owned(), identity.to_string())])
    }
    fn pod_at(&self, ip: Ipv4Addr) -> Option<PodName> {
        let o = ip.octets();
        Some(PodName {
            cluster: format!("cluster-{}", o[1]),
            namespace: "demo".into(),
            name: format!("pod-{}", o[3]),
        })
    }
    fn policies_selecting(&self, _: Ipv4Addr, _: Direction) -> Vec<String> {
        Vec::new()
    }
    fn service_at(&self, _: Ipv4Addr, port: u16) -> Option<String> {
        Some(format!("demo/web-{port}"))
    }
    fn affinity_at(&self, _: Ipv4Addr, _: u16) -> Option<String> {
        Some("local".into())
    }
    fn node_at(&self, t: Ipv4Addr) -> Option<String> {
        Some(format!("node-{}", t.octets()[3]))
    }
}

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

fn with_service(backends: &[Ipv4Addr]) -> MapContents {
    let mut m = MapContents::default();
    m.services.insert(
        ServiceKey {
            vip: addr_be(VIP),
            port: port_be(80),
            proto: 6,
            pad: 0,
        },
        ServiceValue {
            service_id: 3,
            count: backends.len() as u32,
        },
    );
    for (slot, b) in backends.iter().enumerate() {
        m.backends.insert(
            BackendKey {
                service_id: 3,
                slot: slot as u32,
            },
            BackendValue {
                addr: addr_be(*b),
                port: port_be(8080),
                pad: 0,
            },
        );
    }
    m
}

#[test]
fn services_list_backends_per_cluster_and_agree_when_nothing_differs() {
    let a = Ipv4Addr::new(10, 1, 0, 5);
    let b = Ipv4Addr::new(10, 2, 0, 7);
    let both = with_service(&[a, b, a]);
    let t = services("n0", &both, &both, &Fake);
    assert_eq!(t.differences, Vec::<String>::new());
    let s = &t.services[0];
    assert_eq!((s.vip, s.port, s.protocol.as_str()), (VIP, 80, "TCP"));
    assert_eq!(
        (s.name.as_deref(), s.affinity.as_deref()),
        (Some("demo/web-80"), Some("local"))
    );
    assert_eq!(s.backends.len(), 2, "a backend in two slots is listed once");
    assert_eq!(
        s.backends_per_cluster(),
        BTreeMap::from([("cluster-1".to_owned(), 1), ("cluster-2".to_owned(), 1)])
    );
    assert_eq!(s.backends[1].pod.as_deref(), Some("demo/pod-7"));
}

#[test]
fn services_report_what_the_datapath_lacks_or_keeps_beyond_the_kvstore() {
    let a = Ipv4Addr::new(10, 1, 0, 5);
    let b = Ipv4Addr::new(10, 2, 0, 7);
    let c = Ipv4Addr::new(10, 2, 0, 8);
    let kernel = with_service(&[a, b]);
    let rendered = with_service(&[a, c]);
    let t = services("n0", &kernel, &rendered, &Fake);
    assert_eq!(
        t.differences,
        vec![
            "frontend 10.96.0.10:80/TCP: backend 10.2.0.7:8080 is in the datapath but not in the kvstore's endpoints",
            "frontend 10.96.0.10:80/TCP: backend 10.2.0.8:8080 is in the kvstore's endpoints but not in the datapath",
        ]
    );
    let flags: Vec<(Ipv4Addr, bool)> = t.services[0]
        .backends
        .iter()
        .map(|b| (b.ip, b.in_datapath))
        .collect();
    assert_eq!(flags, vec![(a, true), (b, true), (c, false)]);
    let t = services("n0", &MapContents::default(), &rendered, &Fake);
    assert_eq!(
        t.differences,
        vec!["frontend 10.96.0.10:80/TCP is in the kvstore's services but not in the datapath"]
    );
}

#[test]
fn ipcache_and_identities_name_origins_and_flag_strangers() {
    let mut kernel = MapContents::default();
    let pod = Ipv4Addr::new(10, 2, 0, 7);
    kernel.ipcache.insert(
        (32, addr_be(pod)),
        IpcacheValue {
            identity: (2 << 15) | 4,
            tunnel_endpoint: addr_be(Ipv4Addr::new(192, 168, 0, 12)),
        },
    );
    kernel.ipcache.insert(
        (24, addr_be(Ipv4Addr::new(10, 2, 1, 0))),
        IpcacheValue {
            identity: 0,
            tunnel_endpoint: addr_be(Ipv4Addr::new(192, 168, 0, 13)),
        },
    );
    let mut rendered = kernel.clone();
    rendered.ipcache.get_mut(&(32, addr_be(pod))).unwrap().identity = (2 << 15) | 5;
    kernel.endpoints.insert(
        addr_be(Ipv4Addr::new(10, 1, 0, 5)),
        EndpointValue {
            identity: (1 << 15) | 9,
            ..Default::default()
        },
    );
    let t = ipcache("n0", &kernel, &rendered, &Fake);
    assert_eq!(t.entries[0].prefix, "10.2.0.7/32");
    assert_eq!(t.entries[0].origin.as_deref(), Some("cluster-2 demo/pod-7"));
    assert_eq!(t.entries[1].origin.as_deref(), Some("node-13"));
    assert_eq!(
        t.differences,
        vec![
            "10.2.0.7/32: the datapath has identity 65540 via 192.168.0.12, the kvstore says identity 65541 via 192.168.0.12"
        ]
    );
    let ids = identities("n0", &kernel, &Fake);
    let listed: Vec<(u32, usize)> = ids.identities.iter().map(|i| (i.identity, i.addresses)).collect();
    assert_eq!(listed, vec![((1 << 15) | 9, 0), ((2 << 15) | 4, 1)]);
    assert_eq!(ids.identities[1].cluster.as_deref(), Some("cluster-2"));
    assert_eq!(
        ids.differences,
        vec!["identity 32777 is in the datapath but the kvstore has no labels for it"]
    );
}

#[test]
fn endpoints_show_enforcement_and_differ_from_the_render() {
    let mut kernel = MapContents::default();
    let ip = Ipv4Addr::new(10, 1, 0, 5);
    kernel.endpoints.insert(
        addr_be(ip),
        EndpointValue {
            ifindex: 7,
            identity: 9,
            flags: ENDPOINT_F_POLICY,
            ..Default::default()
        },
    );
    let t = endpoints("n0", &kernel, &kernel, &Fake);
    assert_eq!(t.differences, Vec::<String>::new());
    let e = &t.endpoints[0];
    assert_eq!(
        (e.ifindex, e.identity, e.ingress_enforced, e.egress_enforced),
        (7, 9, true, false)
    );
    assert_eq!(e.pod.as_deref(), Some("demo/pod-5"));
    let t = endpoints("n0", &MapContents::default(), &kernel, &Fake);
    assert_eq!(
        t.differences,
        vec!["pod 10.1.0.5 is rendered but not in the datapath"]
    );
}
