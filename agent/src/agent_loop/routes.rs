//! The loop's routes and routing mode: the direct routes to other nodes'
//! pod CIDRs ([`crate::node_routes`], and [`crate::routing::peer_routes`]
//! in native mode), then which nodes the datapath reaches without the
//! tunnel ([`crate::routing::plan`] on the kernel's routes once they are
//! in), and, outside tunnel mode, the program on the underlay interface
//! that takes what other nodes send natively, and each pod's routes with
//! the tunnel's MTU ([`crate::pod_routes`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use knit_sources::Source;

use super::AgentLoop;
use crate::routing::{self, RoutingMode};
use crate::run::sync_node_routes;

impl<S: Source> AgentLoop<S> {
    /// Brings the routes, `knit_native_nodes` and the underlay program in
    /// line with the index; `false` when something is left to retry.
    pub(super) async fn sync_routing(&mut self) -> bool {
        let mode = self.settings.routing_mode;
        let direct = self.settings.direct_node_routes;
        let mut ok = self.sync_underlay_program(mode).await;
        if mode == RoutingMode::Tunnel && !direct {
            return self.write_native_paths(BTreeMap::new()) && ok;
        }
        let Some(routes) = self.kernel_routes().await else {
            return false;
        };
        let candidates = routing::candidates(&self.index, mode, &self.settings.node);
        let mut want = if direct {
            crate::node_routes::desired(&self.index, &self.source.state().nodes, &self.settings.node)
        } else {
            BTreeMap::new()
        };
        if mode == RoutingMode::Native {
            want.extend(routing::peer_routes(
                &candidates,
                self.index.local_cluster(),
                &routes,
            ));
        }
        ok &= sync_node_routes(&self.net, want, &self.metrics).await;
        if mode == RoutingMode::Tunnel {
            return self.write_native_paths(BTreeMap::new()) && ok;
        }
        let Some(routes) = self.kernel_routes().await else {
            return false;
        };
        let plan = routing::plan(mode, candidates, &routes);
        let unroutable: Vec<String> = plan
            .unroutable
            .iter()
            .map(|c| format!("{}/{}", c.cluster, c.node))
            .collect();
        if unroutable != self.unroutable_nodes {
            for c in &plan.unroutable {
                let cidrs: Vec<String> = c.pod_cidrs.iter().map(ToString::to_string).collect();
                let outcome = match mode {
                    RoutingMode::Native => "its pods are unreachable (dropped as no_route)",
                    _ => "its pods are reached through the tunnel",
                };
                tracing::error!(
                    node = %c.node,
                    cluster = %c.cluster,
                    endpoint = %c.endpoint,
                    pod_cidrs = %cidrs.join(","),
                    "routing mode {mode}: no route but the default covers the node's pod CIDRs, so {outcome}; put the nodes on one L2 segment (the agent then routes them), route the pod CIDRs in the underlay (BGP, cloud routes), or use routingMode hybrid"
                );
            }
            self.unroutable_nodes = unroutable;
        }
        self.metrics
            .native_unroutable_nodes
            .set(plan.unroutable.len() as i64);
        let routed = plan
            .paths
            .values()
            .filter(|p| **p == knit_datapath_common::NATIVE_PATH_ROUTED)
            .count();
        self.metrics.native_nodes.set(routed as i64);
        let tunnel = crate::pod_routes::tunnel_cidrs(&self.index, mode, &plan.unroutable);
        ok &= self.write_native_paths(plan.paths);
        self.sync_pod_routes(tunnel).await && ok
    }

    /// Gives every attached pod a route with the tunnel's MTU to each of
    /// `tunnel` (once per pod and change).
    async fn sync_pod_routes(&mut self, tunnel: BTreeSet<ipnet::Ipv4Net>) -> bool {
        let Some(iface) = self.underlay_program.clone() else {
            return true;
        };
        let mtu = match self.net.mtus().await {
            Ok(mtus) => mtus.get(&iface).copied(),
            Err(e) => {
                tracing::warn!(error = %knit_telemetry::error_chain(&e), "reading MTUs failed");
                None
            }
        };
        let Some(mtu) = mtu else {
            return false;
        };
        let want = (tunnel, mtu.saturating_sub(crate::pod_routes::TUNNEL_OVERHEAD));
        let live: BTreeSet<&str> = self.attachments.iter().map(|a| a.netns.as_str()).collect();
        self.pod_routes.retain(|netns, _| live.contains(netns.as_str()));
        let mut ok = true;
        for netns in live {
            if self.pod_routes.get(netns) == Some(&want) {
                continue;
            }
            match crate::pod_routes::sync(netns, &want.0, want.1).await {
                Ok(()) => {
                    self.pod_routes.insert(netns.to_owned(), want.clone());
                }
                Err(e) => {
                    tracing::warn!(%netns, error = %knit_telemetry::error_chain(&e), "setting a pod's tunnel routes failed");
                    ok = false;
                }
            }
        }
        ok
    }

    async fn kernel_routes(&self) -> Option<Vec<routing::KernelRoute>> {
        match self.net.main_routes().await {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(error = %knit_telemetry::error_chain(&e), "listing routes failed");
                None
            }
        }
    }

    fn write_native_paths(&mut self, paths: BTreeMap<std::net::Ipv4Addr, u32>) -> bool {
        match self.datapath.set_native_paths(&paths) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %knit_telemetry::error_chain(&e), "writing the native paths failed");
                false
            }
        }
    }

    /// Outside tunnel mode, `from_netdev` sits on the interface holding
    /// this node's underlay address (from its own node record).
    async fn sync_underlay_program(&mut self, mode: RoutingMode) -> bool {
        let want = if mode == RoutingMode::Tunnel {
            None
        } else {
            let own = self
                .index
                .local
                .nodes
                .get(&self.settings.node)
                .map(|n| n.tunnel_endpoint);
            let Some(IpAddr::V4(own)) = own else {
                // Not exported yet: the next node change brings it.
                return true;
            };
            match self.net.interface_with_address(own).await {
                Ok(Some(iface)) => Some(iface),
                Ok(None) => {
                    tracing::warn!(%own, "no interface holds this node's underlay address; native packets from other nodes go through the host stack");
                    return false;
                }
                Err(e) => {
                    tracing::warn!(error = %knit_telemetry::error_chain(&e), "listing addresses failed");
                    return false;
                }
            }
        };
        if want.is_some() && want == self.underlay_program {
            return true;
        }
        if want.is_none() && self.underlay_program_checked {
            return true;
        }
        match self.datapath.receive_natively(want.as_deref()) {
            Ok(()) => {
                if let Some(iface) = &want {
                    tracing::info!(interface = %iface, "taking pods' packets from other nodes on the underlay interface (routing mode {mode})");
                }
                self.underlay_program = want;
                self.underlay_program_checked = true;
                true
            }
            Err(e) => {
                tracing::warn!(error = %knit_telemetry::error_chain(&e), "attaching the underlay program failed");
                false
            }
        }
    }
}
