//! The node's network devices, over rtnetlink (no `ip` commands): the
//! collect-metadata VXLAN device the datapath encapsulates into, the
//! name → index and MAC table of every interface (pod veths are found by
//! the name their CNI result gives), and the routes the agent owns
//! (marked with [`ROUTE_PROTOCOL`], see [`crate::node_routes`]).

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::link::{InfoData, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol};
use rtnetlink::{Handle, LinkUnspec, LinkVxlan, RouteMessageBuilder};

use crate::datapath::state::Link;
use crate::{Error, Result};

/// Route protocol number of the routes the agent owns (`proto 75` in
/// `ip route`), so it never touches a route someone else made.
pub const ROUTE_PROTOCOL: u8 = 75;

/// UDP port of the mesh's VXLAN traffic (the Linux/Cilium default).
pub const VXLAN_PORT: u16 = 8472;

/// A netlink connection in the current network namespace.
pub struct NetDevices {
    pub(crate) handle: Handle,
}

pub(crate) fn netlink(action: &str) -> impl FnOnce(rtnetlink::Error) -> Error + '_ {
    move |source| Error::Netlink {
        action: action.to_owned(),
        source: Box::new(source),
    }
}

impl NetDevices {
    /// Opens the connection (its driver runs on the current tokio runtime).
    pub fn connect() -> Result<Self> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(|source| Error::Netlink {
            action: "open a netlink socket".into(),
            source: Box::new(source),
        })?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    /// A connection in the network namespace at `netns` (a pod's): the
    /// socket is opened on a thread that entered the namespace, and stays
    /// there when the thread ends.
    pub fn connect_in(netns: &str) -> Result<Self> {
        use std::os::fd::AsFd as _;
        let runtime = tokio::runtime::Handle::current();
        let path = netns.to_owned();
        let opened = std::thread::spawn(move || {
            let _runtime = runtime.enter();
            let file = std::fs::File::open(&path)?;
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)?;
            rtnetlink::new_connection()
        })
        .join()
        .map_err(|_| std::io::Error::other("the thread opening the socket panicked"))
        .and_then(|r| r);
        let (conn, handle, _) = opened.map_err(|source| Error::Netlink {
            action: format!("open a netlink socket in {netns}"),
            source: Box::new(source),
        })?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    /// One dump of every interface: `pick` reads what the caller needs
    /// from each link message; the result is keyed by interface name.
    async fn links<T>(&self, pick: impl Fn(&LinkMessage) -> Option<T>) -> Result<Vec<(String, T)>> {
        let mut links = self.handle.link().get().execute();
        let mut out = Vec::new();
        while let Some(msg) = links.try_next().await.map_err(netlink("list interfaces"))? {
            let name = msg.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            });
            if let (Some(name), Some(value)) = (name, pick(&msg)) {
                out.push((name, value));
            }
        }
        Ok(out)
    }

    /// Every interface's index and MAC by name.
    pub async fn interfaces(&self) -> Result<HashMap<String, Link>> {
        let links = self
            .links(|msg| {
                let mut link = Link {
                    index: msg.header.index,
                    mac: [0; 6],
                };
                for attr in &msg.attributes {
                    if let LinkAttribute::Address(a) = attr
                        && a.len() == 6
                    {
                        link.mac.copy_from_slice(a);
                    }
                }
                Some(link)
            })
            .await?;
        Ok(links.into_iter().collect())
    }

    /// Every interface's MTU by name.
    pub async fn mtus(&self) -> Result<HashMap<String, u32>> {
        let mtus = self
            .links(|msg| {
                msg.attributes.iter().find_map(|a| match a {
                    LinkAttribute::Mtu(m) => Some(*m),
                    _ => None,
                })
            })
            .await?;
        Ok(mtus.into_iter().collect())
    }

    /// Every VXLAN device's UDP port by name.
    pub async fn vxlan_ports(&self) -> Result<BTreeMap<String, u16>> {
        let ports = self
            .links(|msg| {
                msg.attributes.iter().find_map(|a| match a {
                    LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|info| match info {
                        LinkInfo::Data(InfoData::Vxlan(vx)) => vx.iter().find_map(|a| match a {
                            InfoVxlan::Port(p) => Some(*p),
                            _ => None,
                        }),
                        _ => None,
                    }),
                    _ => None,
                })
            })
            .await?;
        Ok(ports.into_iter().collect())
    }

    /// Creates (or keeps) the VXLAN device `name` in collect-metadata mode
    /// on `port`, up, and returns its index. A device of that name on
    /// another port is made again on `port`. Fails with
    /// [`Error::TunnelPortTaken`], naming the owner, when another device or
    /// a socket holds `port` ([`crate::tunnel_port`]).
    pub async fn ensure_vxlan(&self, name: &str, port: u16) -> Result<u32> {
        let ports = self.vxlan_ports().await?;
        if let Some((other, _)) = ports.iter().find(|(n, p)| **p == port && n.as_str() != name) {
            return Err(Error::TunnelPortTaken {
                port,
                owner: format!("the VXLAN device {other} (flannel.1 is flannel's, cilium_vxlan Cilium's)"),
            });
        }
        let interfaces = self.interfaces().await?;
        if let (Some(link), Some(old)) = (interfaces.get(name), ports.get(name))
            && *old != port
        {
            tracing::warn!(
                device = name,
                old,
                new = port,
                "the tunnel device is on another port: making it again"
            );
            self.handle
                .link()
                .del(link.index)
                .execute()
                .await
                .map_err(netlink("delete the tunnel device on the old port"))?;
        }
        let ours = ports.get(name) == Some(&port) && interfaces.contains_key(name);
        if !ours && let Some(owner) = crate::tunnel_port::socket_owner(port) {
            return Err(Error::TunnelPortTaken { port, owner });
        }
        if let Some(Link { index, .. }) = self.interfaces().await?.get(name) {
            self.handle
                .link()
                .set(LinkUnspec::new_with_index(*index).up().build())
                .execute()
                .await
                .map_err(netlink("set the tunnel device up"))?;
            return Ok(*index);
        }
        self.handle
            .link()
            .add(
                LinkVxlan::new(name, 0)
                    .port(port)
                    .collect_metadata(true)
                    .learning(false)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(netlink("create the tunnel device"))?;
        self.interfaces()
            .await?
            .get(name)
            .map(|l| l.index)
            .ok_or_else(|| Error::Netlink {
                action: "find the tunnel device after creating it".into(),
                source: format!("{name} is missing").into(),
            })
    }

    /// The IPv4 routes of the main table the agent owns: destination →
    /// gateway.
    pub async fn owned_routes(&self) -> Result<BTreeMap<Ipv4Net, Ipv4Addr>> {
        let mut routes = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        let mut out = BTreeMap::new();
        while let Some(msg) = routes.try_next().await.map_err(netlink("list routes"))? {
            if let Some((dst, gw)) = owned(&msg) {
                out.insert(dst, gw);
            }
        }
        Ok(out)
    }

    /// Every unicast IPv4 route of the main table (anyone's): destination
    /// and gateway (`None`: on-link).
    pub async fn main_routes(&self) -> Result<Vec<crate::routing::KernelRoute>> {
        use rtnetlink::packet_route::route::{RouteHeader, RouteType};
        let mut routes = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        let mut out = Vec::new();
        while let Some(msg) = routes.try_next().await.map_err(netlink("list routes"))? {
            let table = msg.attributes.iter().find_map(|a| match a {
                RouteAttribute::Table(t) => Some(*t),
                _ => None,
            });
            let table = table.unwrap_or(u32::from(msg.header.table));
            if table != u32::from(RouteHeader::RT_TABLE_MAIN) || msg.header.kind != RouteType::Unicast {
                continue;
            }
            let (mut dst, mut gateway) = (Ipv4Addr::UNSPECIFIED, None);
            for attr in &msg.attributes {
                match attr {
                    RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = *a,
                    RouteAttribute::Gateway(RouteAddress::Inet(a)) => gateway = Some(*a),
                    _ => {}
                }
            }
            if let Ok(dst) = Ipv4Net::new(dst, msg.header.destination_prefix_length) {
                out.push(crate::routing::KernelRoute { dst, gateway });
            }
        }
        Ok(out)
    }

    /// The interface holding the IPv4 address `ip`, if any.
    pub async fn interface_with_address(&self, ip: Ipv4Addr) -> Result<Option<String>> {
        use rtnetlink::packet_route::address::AddressAttribute;
        let mut addrs = self.handle.address().get().execute();
        let mut index = None;
        while let Some(msg) = addrs.try_next().await.map_err(netlink("list addresses"))? {
            let holds = msg
                .attributes
                .iter()
                .any(|a| matches!(a, AddressAttribute::Address(std::net::IpAddr::V4(v4)) if *v4 == ip));
            if holds {
                index = Some(msg.header.index);
            }
        }
        let Some(index) = index else {
            return Ok(None);
        };
        Ok(self
            .interfaces()
            .await?
            .into_iter()
            .find(|(_, link)| link.index == index)
            .map(|(name, _)| name))
    }

    /// Adds or replaces the route to `dst` via `gateway`, marked as ours.
    pub async fn replace_route(&self, dst: Ipv4Net, gateway: Ipv4Addr) -> Result<()> {
        self.handle
            .route()
            .add(owned_route(dst, gateway))
            .replace()
            .execute()
            .await
            .map_err(netlink("add a route to a node's pod CIDR"))
    }

    /// Deletes our route to `dst` via `gateway`.
    pub async fn delete_route(&self, dst: Ipv4Net, gateway: Ipv4Addr) -> Result<()> {
        self.handle
            .route()
            .del(owned_route(dst, gateway))
            .execute()
            .await
            .map_err(netlink("delete a route to a node's pod CIDR"))
    }
}

/// The route to `dst` via `gateway`, marked as the agent's.
fn owned_route(dst: Ipv4Net, gateway: Ipv4Addr) -> RouteMessage {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(dst.addr(), dst.prefix_len())
        .gateway(gateway)
        .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
        .build()
}

/// Destination and gateway of a main-table IPv4 route marked as ours.
fn owned(msg: &RouteMessage) -> Option<(Ipv4Net, Ipv4Addr)> {
    if msg.header.protocol != RouteProtocol::Other(ROUTE_PROTOCOL) {
        return None;
    }
    let (mut dst, mut gw) = (None, None);
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = Some(*a),
            RouteAttribute::Gateway(RouteAddress::Inet(a)) => gw = Some(*a),
            _ => {}
        }
    }
    Some((
        Ipv4Net::new(dst?, msg.header.destination_prefix_length).ok()?,
        gw?,
    ))
}
