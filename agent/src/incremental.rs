//! Incremental render: what one change to the mesh costs is proportional to
//! the change, not to the mesh.
//!
//! The agent notes each [`IndexChange`] here. The two that dominate churn,
//! one endpoint's route and one service's frontends, are redone alone by
//! [`IncrementalRender::try_patch`], which updates the last rendered
//! [`DatapathState`] in place and returns the [`StatePatch`] the datapath
//! writes. Everything else (policies, CNI attachments, interfaces, nodes,
//! identities, canaries, nodes failing their probes) asks for a full
//! [`render`], and so does any case where a patch could differ from it:
//! an endpoint on this node (its policy and map entry), a frontend two
//! services render, a full ipcache, a node whose pod CIDR is a `/32`. The
//! property test below holds the patch to exactly what a full render gives.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};
use knit_cni::attachment::Attachment;

use crate::datapath::patch::StatePatch;
use crate::datapath::state::{DatapathState, Frontend};
use crate::index::{IndexChange, MeshIndex};
use crate::policy::PolicyRules;
use crate::render::{RenderOptions, endpoint_route, frontends_of, render, service_frontends};

/// The last rendered state and what changed since.
#[derive(Debug, Default)]
pub struct IncrementalRender {
    last: Option<DatapathState>,
    full: bool,
    routes: BTreeSet<Ipv4Addr>,
    services: BTreeSet<String>,
    /// Frontends each service rendered at the last full render or patch.
    frontends: HashMap<String, Vec<Frontend>>,
    /// The service rendering each frontend, when only one does.
    owners: HashMap<Frontend, String>,
    /// Frontends more than one service renders (the last by name wins).
    shared: HashSet<Frontend>,
    /// This node's pods' addresses.
    attached: HashSet<Ipv4Addr>,
    /// Some node's pod CIDR is a `/32`, which an endpoint route may shadow.
    host_cidr: bool,
}

impl IncrementalRender {
    /// Nothing rendered yet: the first render is full.
    pub fn new() -> Self {
        Self {
            full: true,
            ..Self::default()
        }
    }

    /// Records what an index event changed.
    pub fn note(&mut self, change: &IndexChange) {
        match change {
            IndexChange::EndpointRoute(IpAddr::V4(ip)) => {
                self.routes.insert(*ip);
            }
            // The render routes IPv4 only.
            IndexChange::EndpointRoute(IpAddr::V6(_)) => {}
            IndexChange::Service(name) => {
                self.services.insert(name.clone());
            }
            IndexChange::Other => self.full = true,
        }
    }

    /// Something outside the index changed: the next render is full.
    pub fn invalidate(&mut self) {
        self.full = true;
    }

    /// The state last rendered or patched.
    pub fn last(&self) -> Option<&DatapathState> {
        self.last.as_ref()
    }

    /// Renders everything and starts tracking changes from it.
    pub fn render_full(
        &mut self,
        index: &MeshIndex,
        policies: &[PolicyRules<'_>],
        node: &str,
        attachments: &[Attachment],
        options: &RenderOptions,
    ) -> &DatapathState {
        let state = render(index, policies, node, attachments, options);
        self.full = false;
        self.routes.clear();
        self.services.clear();
        self.frontends.clear();
        self.owners.clear();
        self.shared.clear();
        for (name, own) in &index.local_services {
            let frontends = frontends_of(own);
            for f in &frontends {
                if self.owners.insert(*f, name.clone()).is_some() {
                    self.shared.insert(*f);
                }
            }
            self.frontends.insert(name.clone(), frontends);
        }
        self.attached = attachments
            .iter()
            .flat_map(|a| a.ips.iter())
            .filter_map(|ip| match ip {
                IpAddr::V4(v) => Some(*v),
                IpAddr::V6(_) => None,
            })
            .collect();
        self.host_cidr = std::iter::once(&index.local)
            .chain(index.peers.values())
            .flat_map(|v| v.nodes.values())
            .flat_map(|n| n.pod_cidrs.iter())
            .any(|c| matches!(c, IpNet::V4(n) if n.prefix_len() == 32));
        self.last.insert(state)
    }

    /// The noted changes as a patch of the last state (which it updates),
    /// or `None` when only [`IncrementalRender::render_full`] is right.
    pub fn try_patch(
        &mut self,
        index: &MeshIndex,
        node: &str,
        options: &RenderOptions,
    ) -> Option<StatePatch> {
        let state = self.last.as_ref()?;
        if self.full
            || !options.failing.is_empty()
            || self.host_cidr
            || state.routes.len() + self.routes.len() >= knit_datapath_common::IPCACHE_CAPACITY
            || self.routes.iter().any(|ip| self.attached.contains(ip))
        {
            return None;
        }
        let no_failing = BTreeSet::new();
        let mut rendered = Vec::new();
        let mut claimed: HashMap<Frontend, &str> = HashMap::new();
        for name in &self.services {
            let new = service_frontends(index, name, &no_failing);
            let old = self.frontends.get(name).map(Vec::as_slice).unwrap_or_default();
            let mut contested = |f: &Frontend| {
                self.shared.contains(f)
                    || self.owners.get(f).is_some_and(|o| o != name)
                    || claimed.insert(*f, name).is_some_and(|o| o != name)
            };
            if old.iter().any(|f| self.shared.contains(f)) || new.iter().any(|(f, _)| contested(f)) {
                return None;
            }
            rendered.push((name.clone(), new));
        }

        let state = self.last.as_mut()?;
        let mut patch = StatePatch::default();
        for ip in std::mem::take(&mut self.routes) {
            let net = Ipv4Net::new(ip, 32).expect("/32 is a valid prefix");
            match endpoint_route(index, node, ip) {
                Some(r) if state.routes.get(&net) != Some(&r) => {
                    state.routes.insert(net, r);
                    patch.routes.push((net, Some(r)));
                }
                Some(_) => {}
                None if state.routes.remove(&net).is_some() => patch.routes.push((net, None)),
                None => {}
            }
        }
        self.services.clear();
        for (name, new) in rendered {
            let old = self.frontends.remove(&name).unwrap_or_default();
            for f in old.iter().filter(|f| !new.iter().any(|(n, _)| n == *f)) {
                self.owners.remove(f);
                if state.services.remove(f).is_some() {
                    patch.services.push((*f, None));
                }
            }
            let mut frontends = Vec::with_capacity(new.len());
            for (f, backends) in new {
                self.owners.insert(f, name.clone());
                frontends.push(f);
                if state.services.get(&f) != Some(&backends) {
                    state.services.insert(f, backends.clone());
                    patch.services.push((f, Some(backends)));
                }
            }
            if !frontends.is_empty() {
                self.frontends.insert(name, frontends);
            }
        }
        Some(patch)
    }
}

#[cfg(test)]
mod tests;
