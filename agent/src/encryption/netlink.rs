//! The kernel side of encryption, over rtnetlink: the WireGuard interface
//! up at its MTU, the rule that sends the tunnel's UDP port to Knit's
//! table, and that table's routes (each remote tunnel endpoint with a key)
//! into the interface. Routes are marked as the agent's
//! ([`crate::netdev::ROUTE_PROTOCOL`]), so nothing else is touched.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use futures::TryStreamExt as _;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::IpProtocol;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RulePortRange};
use rtnetlink::{LinkUnspec, RouteMessageBuilder};

use crate::netdev::{NetDevices, ROUTE_PROTOCOL, netlink};
use crate::{Error, Result};

/// Routing table of the tunnel endpoints reached through WireGuard.
pub const WIREGUARD_TABLE: u32 = 75;

/// Priority of the rule sending the tunnel's UDP port to
/// [`WIREGUARD_TABLE`]: after `local` (0), before `main` (32766).
pub const TUNNEL_RULE_PRIORITY: u32 = 75;

/// `EEXIST`, as netlink reports an identical rule already there.
const EEXIST: i32 = 17;

impl NetDevices {
    /// Makes the kernel WireGuard interface `name`, or keeps the one a
    /// previous agent left; an error where the kernel has no WireGuard.
    pub async fn ensure_kernel_wireguard(&self, name: &str) -> Result<()> {
        if self.interfaces().await?.contains_key(name) {
            return Ok(());
        }
        self.handle
            .link()
            .add(rtnetlink::LinkWireguard::new(name).build())
            .execute()
            .await
            .map_err(netlink("make a kernel WireGuard interface"))
    }

    /// Sets interface `name` up at `mtu`; its index.
    pub async fn set_up(&self, name: &str, mtu: u32) -> Result<u32> {
        let index = self
            .interfaces()
            .await?
            .get(name)
            .map(|l| l.index)
            .ok_or_else(|| Error::Netlink {
                action: format!("find interface {name}"),
                source: format!("{name} is missing").into(),
            })?;
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().mtu(mtu).build())
            .execute()
            .await
            .map_err(netlink("set the WireGuard interface up"))?;
        Ok(index)
    }

    /// Adds the rule `ipproto udp dport <port> lookup 75` unless it is
    /// there.
    pub async fn ensure_tunnel_rule(&self, port: u16) -> Result<()> {
        let mut request = self
            .handle
            .rule()
            .add()
            .v4()
            .table_id(WIREGUARD_TABLE)
            .priority(TUNNEL_RULE_PRIORITY)
            // Without an action the kernel takes the rule as "unspec" and
            // fails every lookup it matches with EINVAL.
            .action(RuleAction::ToTable);
        request.message_mut().attributes.extend([
            RuleAttribute::IpProtocol(IpProtocol::Udp),
            RuleAttribute::DestinationPortRange(RulePortRange {
                start: port,
                end: port,
            }),
        ]);
        match request.execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -EEXIST => Ok(()),
            Err(e) => Err(netlink("add the rule routing the tunnel port into WireGuard")(e)),
        }
    }

    /// Adds (or keeps) `unreachable default` in [`WIREGUARD_TABLE`]: in
    /// strict mode, VXLAN to a node without a WireGuard route fails its
    /// route lookup (counted as `knit_vxlan`'s carrier errors) instead of
    /// falling through to the main table in plaintext. Not tied to the
    /// WireGuard interface, it outlives the agent.
    pub async fn ensure_strict_default(&self) -> Result<()> {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
            .kind(RouteType::Unreachable)
            .table_id(WIREGUARD_TABLE)
            .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
            .build();
        self.handle
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(netlink("add the strict-mode default route"))
    }

    /// The agent's routes of [`WIREGUARD_TABLE`] into the interface (the
    /// strict-mode default is not one of them).
    pub async fn wireguard_routes(&self) -> Result<BTreeSet<Ipv4Net>> {
        let mut routes = self
            .handle
            .route()
            .get(
                RouteMessageBuilder::<Ipv4Addr>::new()
                    .table_id(WIREGUARD_TABLE)
                    .build(),
            )
            .execute();
        let mut out = BTreeSet::new();
        while let Some(msg) = routes
            .try_next()
            .await
            .map_err(netlink("list the WireGuard routes"))?
        {
            if let Some(dst) = wireguard_route(&msg) {
                out.insert(dst);
            }
        }
        Ok(out)
    }

    /// Routes `dst` into interface `ifindex` in [`WIREGUARD_TABLE`].
    pub async fn replace_wireguard_route(&self, dst: Ipv4Net, ifindex: u32) -> Result<()> {
        self.handle
            .route()
            .add(table_route(dst, ifindex))
            .replace()
            .execute()
            .await
            .map_err(netlink("route a tunnel endpoint into WireGuard"))
    }

    /// Deletes the route of `dst` from [`WIREGUARD_TABLE`].
    pub async fn delete_wireguard_route(&self, dst: Ipv4Net, ifindex: u32) -> Result<()> {
        self.handle
            .route()
            .del(table_route(dst, ifindex))
            .execute()
            .await
            .map_err(netlink("delete a tunnel endpoint's WireGuard route"))
    }
}

/// `dst` through interface `ifindex`, on-link (as `ip route add … dev`
/// makes it: a route of universe scope without a gateway fails every
/// lookup with EINVAL).
fn table_route(dst: Ipv4Net, ifindex: u32) -> RouteMessage {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(dst.addr(), dst.prefix_len())
        .output_interface(ifindex)
        .scope(RouteScope::Link)
        .table_id(WIREGUARD_TABLE)
        .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
        .build()
}

/// The destination of a route of [`WIREGUARD_TABLE`] marked as ours.
fn wireguard_route(msg: &RouteMessage) -> Option<Ipv4Net> {
    if msg.header.protocol != RouteProtocol::Other(ROUTE_PROTOCOL) || msg.header.kind != RouteType::Unicast {
        return None;
    }
    let table = msg
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(msg.header.table));
    if table != WIREGUARD_TABLE {
        return None;
    }
    msg.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(ip)) => {
            Ipv4Net::new(*ip, msg.header.destination_prefix_length).ok()
        }
        _ => None,
    })
}
