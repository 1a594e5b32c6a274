//! The plugin's commands. [`run`] takes the invocation and stdin and
//! returns what to print: the result JSON (ADD, VERSION), nothing (DEL,
//! CHECK, STATUS, GC), or a [`CniError`]. The only side effects are on the
//! [`AttachmentStore`].
//!
//! Knit is a chained plugin: it never creates interfaces or addresses. On
//! ADD it reads the previous plugin's result: the container interface is
//! the one named `CNI_IFNAME` with a `sandbox`; the host side of its veth
//! is the host interface listed right before it (how `ptp`, `bridge` and
//! kindnet report a veth pair); the pod's addresses are the `ips` that
//! point at the container interface. The result passes through unchanged.

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::attachment::{Attachment, AttachmentStore, DEFAULT_STATE_DIR, check_names};
use crate::protocol::{
    CNI_VERSION, CniError, ErrorCode, Invocation, NetConf, ResultView, SUPPORTED_VERSIONS,
    VERSIONS_WITH_STATUS_AND_GC,
};

/// Runs one invocation. `Ok` holds what goes to stdout (possibly empty).
pub fn run(inv: &Invocation, stdin: &[u8]) -> Result<String, CniError> {
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
    run_conf(inv, &conf).map_err(|e| e.in_version(if version.is_empty() { CNI_VERSION } else { &version }))
}

fn run_conf(inv: &Invocation, conf: &NetConf) -> Result<String, CniError> {
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
        "ADD" => add(inv, conf, &store),
        "DEL" => del(inv, &store).map(|()| String::new()),
        "CHECK" => check(inv, conf, &store).map(|()| String::new()),
        "STATUS" => {
            needs_status_and_gc(conf, "STATUS")?;
            status(&store).map(|()| String::new())
        }
        "GC" => {
            needs_status_and_gc(conf, "GC")?;
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

fn needs_status_and_gc(conf: &NetConf, command: &str) -> Result<(), CniError> {
    if VERSIONS_WITH_STATUS_AND_GC.contains(&conf.cni_version.as_str()) {
        return Ok(());
    }
    Err(CniError::new(
        ErrorCode::IncompatibleVersion,
        format!(
            "{command} needs cniVersion 1.1.0; the config says {:?}",
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

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

/// Reads the attachment the previous plugin's result describes.
pub fn attachment_from_result(inv: &Invocation, prev: &Value) -> Result<Attachment, CniError> {
    let view: ResultView = serde_json::from_value(prev.clone()).map_err(|e| {
        CniError::new(
            ErrorCode::Decode,
            "prevResult is not a CNI result (interfaces, ips)",
        )
        .with_details(e.to_string())
    })?;
    let container = view
        .interfaces
        .iter()
        .position(|i| i.name == inv.ifname && i.sandbox.is_some())
        .ok_or_else(|| {
            CniError::new(
                ErrorCode::InvalidConfig,
                format!(
                    "the previous plugin's result has no interface {:?} inside the pod; put knit after the plugin that creates the pod's veth (ptp, bridge, kindnet)",
                    inv.ifname
                ),
            )
        })?;
    let host = view.interfaces[..container]
        .iter()
        .rposition(|i| i.sandbox.is_none())
        .ok_or_else(|| {
            CniError::new(
                ErrorCode::InvalidConfig,
                "the previous plugin's result lists no host-side interface before the pod's; knit attaches to a veth pair (ptp, bridge, kindnet), not to macvlan or ipvlan",
            )
        })?;
    let ips: Vec<_> = view
        .ips
        .iter()
        .filter(|ip| ip.interface.is_none_or(|i| i == container))
        .filter_map(|ip| ip.ip())
        .collect();
    if ips.is_empty() {
        return Err(CniError::new(
            ErrorCode::InvalidConfig,
            format!(
                "the previous plugin's result gives {:?} no address; chain an IPAM plugin (host-local) into the plugin before knit",
                inv.ifname
            ),
        ));
    }
    let (pod_namespace, pod_name) = inv.pod();
    Ok(Attachment {
        container_id: inv.container_id.clone(),
        ifname: inv.ifname.clone(),
        netns: inv.netns.clone(),
        pod_namespace,
        pod_name,
        host_interface: view.interfaces[host].name.clone(),
        host_mac: view.interfaces[host].mac.clone(),
        pod_mac: view.interfaces[container].mac.clone(),
        ips,
    })
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

fn add(inv: &Invocation, conf: &NetConf, store: &AttachmentStore) -> Result<String, CniError> {
    names(inv)?;
    if inv.netns.is_empty() {
        return Err(CniError::new(
            ErrorCode::InvalidEnvironment,
            "CNI_NETNS is not set; ADD needs the pod's network namespace",
        ));
    }
    let prev = prev_result(conf, "ADD")?;
    let attachment = attachment_from_result(inv, prev)?;
    store
        .put(&attachment)
        .map_err(|e| io_error("recording the attachment", e))?;
    let mut result = prev.clone();
    if let Some(obj) = result.as_object_mut() {
        obj.insert("cniVersion".into(), Value::String(conf.cni_version.clone()));
    }
    Ok(result.to_string())
}

fn del(inv: &Invocation, store: &AttachmentStore) -> Result<(), CniError> {
    names(inv)?;
    store
        .remove(&inv.container_id, &inv.ifname)
        .map(|_| ())
        .map_err(|e| io_error("removing the attachment", e))
}

fn check(inv: &Invocation, conf: &NetConf, store: &AttachmentStore) -> Result<(), CniError> {
    names(inv)?;
    let prev = prev_result(conf, "CHECK")?;
    let expected = attachment_from_result(inv, prev)?;
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
