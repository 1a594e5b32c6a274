//! The node's network devices, over rtnetlink (no `ip` commands): the
//! collect-metadata VXLAN device the datapath encapsulates into, and the
//! name → index and MAC table of every interface (pod veths are found by
//! the name their CNI result gives).

use std::collections::HashMap;

use futures::TryStreamExt;
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::{Handle, LinkUnspec, LinkVxlan};

use crate::datapath::state::Link;
use crate::{Error, Result};

/// UDP port of the mesh's VXLAN traffic (the Linux/Cilium default).
pub const VXLAN_PORT: u16 = 8472;

/// A netlink connection in the current network namespace.
pub struct NetDevices {
    handle: Handle,
}

fn netlink(action: &str) -> impl FnOnce(rtnetlink::Error) -> Error + '_ {
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

    /// Every interface's index and MAC by name.
    pub async fn interfaces(&self) -> Result<HashMap<String, Link>> {
        let mut links = self.handle.link().get().execute();
        let mut out = HashMap::new();
        while let Some(msg) = links.try_next().await.map_err(netlink("list interfaces"))? {
            let mut name = None;
            let mut link = Link {
                index: msg.header.index,
                mac: [0; 6],
            };
            for attr in &msg.attributes {
                match attr {
                    LinkAttribute::IfName(n) => name = Some(n.clone()),
                    LinkAttribute::Address(a) if a.len() == 6 => link.mac.copy_from_slice(a),
                    _ => {}
                }
            }
            if let Some(name) = name {
                out.insert(name, link);
            }
        }
        Ok(out)
    }

    /// Creates (or keeps) the VXLAN device `name` in collect-metadata mode
    /// on `port`, up, and returns its index.
    pub async fn ensure_vxlan(&self, name: &str, port: u16) -> Result<u32> {
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
}
