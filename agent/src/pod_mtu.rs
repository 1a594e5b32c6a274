//! Pods too large for the tunnel. On a node where Knit is chained into the
//! cluster's CNI, the pods' MTU is that CNI's, and a pod at the underlay's
//! full MTU sends packets the VXLAN tunnel must fragment (or, where
//! fragments are dropped, loses). The agent compares each attached pod's
//! host-side interface MTU with the underlay's MTU less the tunnel's 50
//! bytes ([`knit_cni::conflist::pod_mtu`]; the underlay is the interface
//! of the node's default route), and reports the pods over it:
//! `knit_agent_pods_over_tunnel_mtu` and a warning naming them and the fix.
//! [`over_tunnel_mtu`] is pure.

use std::collections::HashMap;

use knit_cni::attachment::Attachment;

/// A pod whose interface is larger than the tunnel carries whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OversizedPod {
    /// `namespace/name`, or the container ID when the runtime gave no name.
    pub pod: String,
    /// Its host-side interface.
    pub interface: String,
    /// That interface's MTU.
    pub mtu: u32,
}

/// The attached pods whose host-side interface MTU (from `mtus`, by
/// interface name) exceeds `limit`.
pub fn over_tunnel_mtu(
    attachments: &[Attachment],
    mtus: &HashMap<String, u32>,
    limit: u32,
) -> Vec<OversizedPod> {
    attachments
        .iter()
        .filter_map(|a| {
            let mtu = *mtus.get(&a.host_interface)?;
            (mtu > limit).then(|| OversizedPod {
                pod: match (&a.pod_namespace, &a.pod_name) {
                    (Some(ns), Some(name)) => format!("{ns}/{name}"),
                    _ => a.container_id.clone(),
                },
                interface: a.host_interface.clone(),
                mtu,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attachment(name: &str, interface: &str) -> Attachment {
        Attachment {
            container_id: format!("c-{name}"),
            ifname: "eth0".into(),
            netns: "/run/netns/x".into(),
            pod_namespace: Some("shop".into()),
            pod_name: Some(name.into()),
            host_interface: interface.into(),
            host_mac: None,
            pod_mac: None,
            ips: vec!["10.1.0.5".parse().unwrap()],
        }
    }

    #[test]
    fn pods_over_the_limit_are_named() {
        let pods = [
            attachment("small", "veth1"),
            attachment("big", "cali2"),
            attachment("gone", "veth9"),
        ];
        let mtus = HashMap::from([("veth1".to_owned(), 1450), ("cali2".to_owned(), 1500)]);
        assert_eq!(
            over_tunnel_mtu(&pods, &mtus, 1450),
            vec![OversizedPod {
                pod: "shop/big".into(),
                interface: "cali2".into(),
                mtu: 1500
            }]
        );
        assert!(over_tunnel_mtu(&pods, &mtus, 1500).is_empty());
    }
}
