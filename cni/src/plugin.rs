//! The plugin's commands. [`run`] takes the invocation and stdin and
//! returns what to print: the result JSON (ADD, VERSION), nothing (DEL,
//! CHECK, STATUS, GC), or a [`CniError`]. The only side effects are on the
//! [`AttachmentStore`].
//!
//! Knit is a chained plugin: it never creates interfaces or addresses. On
//! ADD it reads the previous plugin's result ([`attachment_from_result`]):
//! the pod's veth, its host side and its addresses, asking the kernel
//! ([`LinkLookup`]) only for what a result leaves out. The result passes
//! through unchanged, in the config's version.
//!
//! ADD fails closed: it returns only once the agent has marked the
//! attachment attached (its programs, endpoint and policy are in), so no
//! workload runs before its policy does. Pods of Knit's own control-plane
//! namespace do not wait: the agent learns identities through them.

use std::net::IpAddr;
use std::path::PathBuf;

use serde_json::{Value, json};

use crate::attachment::{Attachment, AttachmentStore, DEFAULT_STATE_DIR, check_names};
use crate::error_chain::error_chain;
use crate::protocol::{
    CNI_VERSION, CniError, ErrorCode, Invocation, NetConf, ResultView, SUPPORTED_VERSIONS,
    VERSIONS_WITH_CHECK, VERSIONS_WITH_STATUS_AND_GC,
};

/// How long ADD waits for the agent unless `attachTimeoutSeconds` says.
pub const DEFAULT_ATTACH_TIMEOUT_SECONDS: u64 = 30;

/// Runs one invocation. `Ok` holds what goes to stdout (possibly empty).
/// `links` answers what a result leaves out ([`LinkLookup`]).
pub fn run(inv: &Invocation, stdin: &[u8], links: &dyn LinkLookup) -> Result<String, CniError> {
    if inv.command == "VERSION" {
        return Ok(version());
    }
    let conf: NetConf = serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(
            ErrorCode::Decode,
            "the network config on stdin is not valid JSON for the knit plugin",
        )
        .with_details(e.to_string())
    })?;
    let version = conf.cni_version.clone();
    run_conf(inv, &conf, links)
        .map_err(|e| e.in_version(if version.is_empty() { CNI_VERSION } else { &version }))
}

fn run_conf(inv: &Invocation, conf: &NetConf, links: &dyn LinkLookup) -> Result<String, CniError> {
    if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
        return Err(CniError::new(
            ErrorCode::IncompatibleVersion,
            format!(
                "cniVersion {:?} is not supported; set the conflist's cniVersion to one of {}",
                conf.cni_version,
                SUPPORTED_VERSIONS.join(", ")
            ),
        ));
    }
    let store = AttachmentStore::new(
        conf.state_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
    );
    match inv.command.as_str() {
        "ADD" => add(inv, conf, &store, links),
        "DEL" => del(inv, &store).map(|()| String::new()),
        "CHECK" => {
            needs(conf, "CHECK", &VERSIONS_WITH_CHECK)?;
            check(inv, conf, &store, links).map(|()| String::new())
        }
        "STATUS" => {
            needs(conf, "STATUS", &VERSIONS_WITH_STATUS_AND_GC)?;
            status(&store).map(|()| String::new())
        }
        "GC" => {
            needs(conf, "GC", &VERSIONS_WITH_STATUS_AND_GC)?;
            gc(conf, &store).map(|()| String::new())
        }
        "" => Err(CniError::new(
            ErrorCode::InvalidEnvironment,
            "CNI_COMMAND is not set: knit-cni is run by a container runtime (set CNI_COMMAND to ADD, DEL, CHECK, STATUS, GC or VERSION)",
        )),
        other => Err(CniError::new(
            ErrorCode::InvalidEnvironment,
            format!("CNI_COMMAND {other:?} is unknown; use ADD, DEL, CHECK, STATUS, GC or VERSION"),
        )),
    }
}

/// The VERSION answer.
pub fn version() -> String {
    json!({"cniVersion": CNI_VERSION, "supportedVersions": SUPPORTED_VERSIONS}).to_string()
}

fn needs(conf: &NetConf, command: &str, versions: &[&str]) -> Result<(), CniError> {
    if versions.contains(&conf.cni_version.as_str()) {
        return Ok(());
    }
    Err(CniError::new(
        ErrorCode::IncompatibleVersion,
        format!(
            "{command} needs cniVersion {}; the config says {:?}",
            versions.join(" or "),
            conf.cni_version
        ),
    ))
}

fn names(inv: &Invocation) -> Result<(), CniError> {
    check_names(&inv.container_id, &inv.ifname).map_err(|m| CniError::new(ErrorCode::InvalidEnvironment, m))
}

fn io_error(action: &str, e: crate::Error) -> CniError {
    CniError::new(
        ErrorCode::Io,
        format!("{action} failed; check that the state directory is writable by the runtime"),
    )
    .with_details(error_chain(&e))
}

/// What the previous result does not say and the node must: the pod's
/// interface inside `CNI_NETNS`, and a host interface's MAC. [`NodeLinks`]
/// asks the kernel; tests give values.
pub trait LinkLookup {
    /// The pod's interface in the network namespace at `netns`: the one
    /// named `ifname`, else the one holding one of `ips`. `None` when there
    /// is neither.
    fn pod_link(&self, netns: &str, ifname: &str, ips: &[IpAddr]) -> Result<Option<PodLink>, String>;
    /// The MAC of `name` in the plugin's own (the host's) namespace.
    fn host_mac(&self, name: &str) -> Result<Option<String>, String>;
}

/// An interface found inside the pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodLink {
    /// Its name.
    pub name: String,
    /// Its MAC.
    pub mac: Option<String>,
}

/// Reads the attachment the previous plugin's result describes.
///
/// Two result shapes are understood:
/// - a veth pair listed as host interface then pod interface (`ptp`,
///   `bridge`, kindnet, Cilium's chaining): the pod side is the interface
///   named `CNI_IFNAME` with a `sandbox`, the host side the host interface
///   right before it, the addresses those pointing at the pod side;
/// - only the host side (Calico's `cali…`, Cilium's `lxc…`): the host
///   interface is the first one without a `sandbox`, every address is the
///   pod's, and the pod side and the MACs the result leaves out come from
///   `links` (the kernel, on a real node).
pub fn attachment_from_result(
    inv: &Invocation,
    prev: &Value,
    links: &dyn LinkLookup,
) -> Result<Attachment, CniError> {
    let view: ResultView = serde_json::from_value(prev.clone()).map_err(|e| {
        CniError::new(
            ErrorCode::Decode,
            "prevResult is not a CNI result (interfaces, ips)",
        )
        .with_details(e.to_string())
    })?;
    let veth_pair = view
        .interfaces
        .iter()
        .position(|i| i.name == inv.ifname && i.sandbox.as_deref().is_some_and(|s| !s.is_empty()))
        .and_then(|pod| {
            let host = view.interfaces[..pod].iter().rposition(is_host_side)?;
            Some((pod, host))
        });
    let (host, pod_mac, ips) = match veth_pair {
        Some((pod, host)) => {
            let ips = addresses(&view, |i| i.is_none_or(|i| i == pod));
            (host, view.interfaces[pod].mac.clone(), ips)
        }
        None => {
            let host = view.interfaces.iter().position(is_host_side).ok_or_else(|| {
                CniError::new(
                    ErrorCode::InvalidConfig,
                    format!(
                        "the previous plugin's result lists neither the pod's interface {:?} nor a host-side interface; knit attaches to a veth pair (ptp, bridge, kindnet, Calico, Cilium), not to macvlan or ipvlan",
                        inv.ifname
                    ),
                )
            })?;
            let ips = addresses(&view, |_| true);
            let found = links
                .pod_link(&inv.netns, &inv.ifname, &ips)
                .map_err(|e| lookup_error("reading the pod's interface from CNI_NETNS", e))?
                .ok_or_else(|| {
                    CniError::new(
                        ErrorCode::InvalidConfig,
                        format!(
                            "the pod's network namespace {} has no interface {:?} and none holding {:?}; put knit after the plugin that creates the pod's interface",
                            inv.netns, inv.ifname, ips
                        ),
                    )
                })?;
            (host, found.mac, ips)
        }
    };
    if ips.is_empty() {
        return Err(CniError::new(
            ErrorCode::InvalidConfig,
            format!(
                "the previous plugin's result gives {:?} no address; chain an IPAM plugin (host-local) into the plugin before knit",
                inv.ifname
            ),
        ));
    }
    let host_interface = view.interfaces[host].name.clone();
    let host_mac = match &view.interfaces[host].mac {
        Some(mac) if !mac.is_empty() => Some(mac.clone()),
        _ => links
            .host_mac(&host_interface)
            .map_err(|e| lookup_error("reading the host interface's MAC", e))?,
    };
    let (pod_namespace, pod_name) = inv.pod();
    Ok(Attachment {
        container_id: inv.container_id.clone(),
        ifname: inv.ifname.clone(),
        netns: inv.netns.clone(),
        pod_namespace,
        pod_name,
        host_interface,
        host_mac,
        pod_mac,
        ips,
    })
}

fn is_host_side(i: &crate::protocol::ResultInterface) -> bool {
    i.sandbox.as_deref().is_none_or(str::is_empty)
}

fn addresses(view: &ResultView, keep: impl Fn(Option<usize>) -> bool) -> Vec<IpAddr> {
    view.ips
        .iter()
        .filter(|ip| keep(ip.interface))
        .filter_map(|ip| ip.ip())
        .collect()
}

fn lookup_error(action: &str, detail: String) -> CniError {
    CniError::new(
        ErrorCode::Io,
        format!(
            "{action} failed; knit-cni runs as root in the host's network namespace, as the runtime runs it"
        ),
    )
    .with_details(detail)
}

fn prev_result<'a>(conf: &'a NetConf, command: &str) -> Result<&'a Value, CniError> {
    conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            ErrorCode::InvalidConfig,
            format!(
                "{command} needs prevResult: knit is a chained plugin; list it after the plugin that creates the pod's interface in the conflist's \"plugins\""
            ),
        )
    })
}

fn add(
    inv: &Invocation,
    conf: &NetConf,
    store: &AttachmentStore,
    links: &dyn LinkLookup,
) -> Result<String, CniError> {
    names(inv)?;
    if inv.netns.is_empty() {
        return Err(CniError::new(
            ErrorCode::InvalidEnvironment,
            "CNI_NETNS is not set; ADD needs the pod's network namespace",
        ));
    }
    let prev = prev_result(conf, "ADD")?;
    let attachment = attachment_from_result(inv, prev, links)?;
    store
        .put(&attachment)
        .map_err(|e| io_error("recording the attachment", e))?;
    if let Err(e) = wait_attached(conf, store, &attachment) {
        let _ = store.remove(&attachment.container_id, &attachment.ifname);
        return Err(e);
    }
    let mut result = prev.clone();
    if let Some(obj) = result.as_object_mut() {
        obj.insert("cniVersion".into(), Value::String(conf.cni_version.clone()));
    }
    Ok(result.to_string())
}

/// Waits until the agent marks `a` attached, or fails with "try again
/// later" (the runtime retries the sandbox) naming what to check.
fn wait_attached(conf: &NetConf, store: &AttachmentStore, a: &Attachment) -> Result<(), CniError> {
    if a.pod_namespace.is_some() && a.pod_namespace == store.control_plane_namespace() {
        return Ok(());
    }
    let timeout = conf
        .attach_timeout_seconds
        .unwrap_or(DEFAULT_ATTACH_TIMEOUT_SECONDS);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(timeout);
    loop {
        if store.is_attached(&a.container_id, &a.ifname) {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            let agent = if store.datapath_ready() {
                "knit-agent runs on this node but has not attached it (see its log and /readyz)"
            } else {
                "knit-agent has never started on this node"
            };
            return Err(CniError::new(
                ErrorCode::TryAgainLater,
                format!(
                    "the pod's interface {} is not attached after {timeout}s, and a pod never runs before its network policy: {agent}",
                    a.host_interface
                ),
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn del(inv: &Invocation, store: &AttachmentStore) -> Result<(), CniError> {
    names(inv)?;
    store
        .remove(&inv.container_id, &inv.ifname)
        .map(|_| ())
        .map_err(|e| io_error("removing the attachment", e))
}

fn check(
    inv: &Invocation,
    conf: &NetConf,
    store: &AttachmentStore,
    links: &dyn LinkLookup,
) -> Result<(), CniError> {
    names(inv)?;
    let prev = prev_result(conf, "CHECK")?;
    let expected = attachment_from_result(inv, prev, links)?;
    let recorded = store
        .get(&inv.container_id, &inv.ifname)
        .map_err(|e| io_error("reading the attachment", e))?
        .ok_or_else(|| {
            CniError::new(
                ErrorCode::UnknownContainer,
                format!(
                    "knit has no attachment for container {} interface {}; the pod was not added through knit (delete and re-create the pod)",
                    inv.container_id, inv.ifname
                ),
            )
        })?;
    if recorded != expected {
        return Err(CniError::new(
            ErrorCode::AttachmentMismatch,
            format!(
                "knit's record of container {} differs from the runtime's result (host interface {} vs {}, addresses {:?} vs {:?}); delete and re-create the pod",
                inv.container_id,
                recorded.host_interface,
                expected.host_interface,
                recorded.ips,
                expected.ips
            ),
        ));
    }
    Ok(())
}

fn status(store: &AttachmentStore) -> Result<(), CniError> {
    if store.datapath_ready() {
        return Ok(());
    }
    Err(CniError::new(
        ErrorCode::NotAvailable,
        format!(
            "knit-agent has not loaded the datapath on this node yet ({} is missing); wait for the knit-agent pod to become ready",
            store.root().join(crate::attachment::READY_MARKER).display()
        ),
    ))
}

fn gc(conf: &NetConf, store: &AttachmentStore) -> Result<(), CniError> {
    let valid = conf.valid_attachments.as_deref().ok_or_else(|| {
        CniError::new(
            ErrorCode::InvalidConfig,
            "GC needs cni.dev/valid-attachments in the config",
        )
    })?;
    let (known, _) = store.list().map_err(|e| io_error("listing attachments", e))?;
    for a in known {
        let keep = valid
            .iter()
            .any(|v| v.container_id == a.container_id && v.ifname == a.ifname);
        if !keep {
            store
                .remove(&a.container_id, &a.ifname)
                .map_err(|e| io_error("removing a stale attachment", e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node whose pod namespace holds `eth0` with one MAC, and whose host
    /// interfaces all have another.
    struct Node;

    impl LinkLookup for Node {
        fn pod_link(&self, _: &str, ifname: &str, _: &[IpAddr]) -> Result<Option<PodLink>, String> {
            Ok((ifname == "eth0").then(|| PodLink {
                name: "eth0".into(),
                mac: Some("0a:00:00:00:00:01".into()),
            }))
        }
        fn host_mac(&self, _: &str) -> Result<Option<String>, String> {
            Ok(Some("ee:ee:ee:ee:ee:ee".into()))
        }
    }

    fn inv(command: &str) -> Invocation {
        Invocation {
            command: command.into(),
            container_id: "c1".into(),
            netns: "/run/netns/p".into(),
            ifname: "eth0".into(),
            args: Default::default(),
        }
    }

    fn conf(version: &str, prev: Value, state: &std::path::Path) -> Vec<u8> {
        json!({"cniVersion": version, "name": "k", "type": "knit", "stateDir": state, "prevResult": prev})
            .to_string()
            .into_bytes()
    }

    /// ptp's result at 0.3.1: `ips[].version`, interface indexes.
    fn ptp_031() -> Value {
        json!({"cniVersion": "0.3.1",
            "interfaces": [{"name": "veth1", "mac": "aa:00:00:00:00:01"},
                           {"name": "eth0", "mac": "aa:00:00:00:00:02", "sandbox": "/run/netns/p"}],
            "ips": [{"version": "4", "interface": 1, "address": "10.1.0.5/24", "gateway": "10.1.0.1"}],
            "dns": {}})
    }

    /// Calico's result: the host-side `cali…` veth only, no MAC, no index.
    fn calico() -> Value {
        json!({"cniVersion": "0.3.1",
            "interfaces": [{"name": "cali0123456789a"}],
            "ips": [{"version": "4", "address": "10.1.0.9/32"}],
            "dns": {}})
    }

    /// Plays the agent: marks the tests' attachment (`c1`, `eth0`) attached.
    fn agent_attached(dir: &std::path::Path) {
        AttachmentStore::new(dir).mark_attached("c1", "eth0").unwrap();
    }

    #[test]
    fn add_returns_only_once_the_agent_has_attached_the_pod() {
        let dir = std::env::temp_dir().join(format!("knit-cni-wait-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = AttachmentStore::new(&dir);
        let with_timeout = |secs: u64| {
            let mut c: Value = serde_json::from_slice(&conf("1.0.0", ptp_031(), &dir)).unwrap();
            c["attachTimeoutSeconds"] = json!(secs);
            c.to_string().into_bytes()
        };
        let mut shop = inv("ADD");
        shop.args.insert("K8S_POD_NAMESPACE".into(), "shop".into());

        // No agent: "try again later", naming why, and nothing left behind.
        let e = run(&shop, &with_timeout(0), &Node).unwrap_err();
        assert_eq!(e.code, ErrorCode::TryAgainLater as u32);
        assert!(e.msg.contains("never started"), "{}", e.msg);
        assert_eq!(store.get("c1", "eth0").unwrap(), None);

        // The agent attaches it a moment later: ADD returns then.
        let marker = dir.clone();
        let agent = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(200));
            agent_attached(&marker);
        });
        let started = std::time::Instant::now();
        run(&shop, &with_timeout(10), &Node).expect("ADD once attached");
        assert!(started.elapsed() >= std::time::Duration::from_millis(200));
        agent.join().unwrap();
        run(&inv("DEL"), &conf("1.0.0", Value::Null, &dir), &Node).unwrap();
        assert!(!store.is_attached("c1", "eth0"), "DEL removes the marker");

        // Knit's control plane never waits (identities come through it).
        store.mark_datapath_ready().unwrap();
        store.set_control_plane_namespace("knit-system").unwrap();
        let mut control = inv("ADD");
        control
            .args
            .insert("K8S_POD_NAMESPACE".into(), "knit-system".into());
        run(&control, &with_timeout(0), &Node).expect("a control-plane pod");
        let e = run(&shop, &with_timeout(0), &Node).unwrap_err();
        assert!(e.msg.contains("has not attached"), "{}", e.msg);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn every_version_is_accepted_and_answered_in_its_own_version() {
        let dir = std::env::temp_dir().join(format!("knit-cni-versions-{}", std::process::id()));
        for version in SUPPORTED_VERSIONS {
            let mut prev = ptp_031();
            prev["cniVersion"] = json!(version);
            agent_attached(&dir);
            let out = run(&inv("ADD"), &conf(version, prev.clone(), &dir), &Node).expect(version);
            let out: Value = serde_json::from_str(&out).unwrap();
            assert_eq!(out["cniVersion"], version);
            assert_eq!(out["ips"], prev["ips"], "{version}: the result passes through");
            let check = run(&inv("CHECK"), &conf(version, prev, &dir), &Node);
            if VERSIONS_WITH_CHECK.contains(&version) {
                check.expect("CHECK from 0.4.0");
            } else {
                let e = check.expect_err("no CHECK before 0.4.0");
                assert_eq!(e.code, ErrorCode::IncompatibleVersion as u32);
                assert_eq!(e.cni_version, version, "the error is in the config's version");
                assert!(e.msg.contains("0.4.0"), "{}", e.msg);
            }
            run(&inv("DEL"), &conf(version, Value::Null, &dir), &Node).expect("DEL");
        }
        let e = run(&inv("ADD"), &conf("0.2.0", ptp_031(), &dir), &Node).unwrap_err();
        assert_eq!(e.code, ErrorCode::IncompatibleVersion as u32);
        assert!(e.msg.contains("0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0"), "{}", e.msg);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_veth_pair_is_read_from_the_result_alone() {
        struct Nothing;
        impl LinkLookup for Nothing {
            fn pod_link(&self, _: &str, _: &str, _: &[IpAddr]) -> Result<Option<PodLink>, String> {
                Err("not asked".into())
            }
            fn host_mac(&self, _: &str) -> Result<Option<String>, String> {
                Err("not asked".into())
            }
        }
        let a = attachment_from_result(&inv("ADD"), &ptp_031(), &Nothing).unwrap();
        assert_eq!(a.host_interface, "veth1");
        assert_eq!(a.host_mac.as_deref(), Some("aa:00:00:00:00:01"));
        assert_eq!(a.pod_mac.as_deref(), Some("aa:00:00:00:00:02"));
        assert_eq!(a.ips, vec!["10.1.0.5".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn calico_and_cilium_shaped_results_take_the_rest_from_the_node() {
        let a = attachment_from_result(&inv("ADD"), &calico(), &Node).unwrap();
        assert_eq!(a.host_interface, "cali0123456789a");
        assert_eq!(a.host_mac.as_deref(), Some("ee:ee:ee:ee:ee:ee"));
        assert_eq!(a.pod_mac.as_deref(), Some("0a:00:00:00:00:01"));
        assert_eq!(a.ips, vec!["10.1.0.9".parse::<IpAddr>().unwrap()]);

        // Cilium's host-side lxc name with its MAC, and an address index
        // pointing at it.
        let cilium = json!({"cniVersion": "1.0.0",
            "interfaces": [{"name": "lxc12ab", "mac": "02:00:00:00:00:07", "sandbox": ""}],
            "ips": [{"interface": 0, "address": "10.1.0.10/32"}]});
        let a = attachment_from_result(&inv("ADD"), &cilium, &Node).unwrap();
        assert_eq!(a.host_interface, "lxc12ab");
        assert_eq!(a.host_mac.as_deref(), Some("02:00:00:00:00:07"));
        assert_eq!(a.pod_mac.as_deref(), Some("0a:00:00:00:00:01"));

        // A pod namespace without the interface: the error names it.
        let mut other = inv("ADD");
        other.ifname = "net1".into();
        let e = attachment_from_result(&other, &calico(), &Node).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidConfig as u32);
        assert!(e.msg.contains("\"net1\""), "{}", e.msg);

        // macvlan-like: only a sandbox interface of another name.
        let macvlan = json!({"interfaces": [{"name": "net1", "sandbox": "/run/netns/p"}],
            "ips": [{"address": "10.1.0.11/24", "interface": 0}]});
        let e = attachment_from_result(&inv("ADD"), &macvlan, &Node).unwrap_err();
        assert!(e.msg.contains("macvlan"), "{}", e.msg);
    }
}
