//! tc attachments, in whichever of the kernel's two ways the node has:
//! - **TCX** (Linux 6.6 and later): a BPF link, pinned under
//!   `<pin dir>/links/<name>`; a new agent swaps the program inside the
//!   pinned link (`bpf_link_update`).
//! - **netlink** `cls_bpf` on a `clsact` qdisc (every kernel Knit
//!   supports): a filter of priority [`TC_PRIORITY`] and handle
//!   [`TC_HANDLE`], remembered as the symlink `<pin dir>/links/<name>_nl`
//!   whose target is `<direction>:<interface>` (bpffs holds pins,
//!   directories and symlinks, and no name with a dot); the filter is left in the kernel when the
//!   agent exits, and a new agent replaces its program in place (a
//!   `RTM_NEWTFILTER` on the same priority and handle), so no packet ever
//!   runs without a program in either mode.
//!
//! [`TcAttach::resolve`] picks the mode: `auto` probes the kernel for TCX
//! (`BPF_PROG_QUERY` on a TCX hook, which kernels before 6.6 refuse), and
//! `tcx` / `netlink` force one. A link name has one attachment at a time:
//! attaching in one mode removes what the other mode left under that name.

use std::io;
use std::path::{Path, PathBuf};

use aya::programs::links::{FdLink, Link, PinnedLink};
use aya::programs::tc::{NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle, qdisc_add_clsact};
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType};

use crate::{Error, Result};

/// Priority of Knit's netlink filters (`tc filter show` prints it as
/// `pref`).
pub const TC_PRIORITY: u16 = 1;
/// Handle of Knit's netlink filters: "KN", so they are told apart from
/// another loader's filter at the same priority.
pub const TC_HANDLE: TcHandle = TcHandle::new(0, 0x4b4e);
/// Suffix of the record of a netlink attachment.
const NETLINK_RECORD: &str = "_nl";

/// How to attach tc programs (`--tc-attach`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum TcAttach {
    /// TCX where the kernel has it, netlink otherwise.
    #[default]
    Auto,
    /// TCX links (Linux 6.6+); fails on older kernels.
    Tcx,
    /// netlink `cls_bpf` filters on a `clsact` qdisc.
    Netlink,
}

/// The way tc programs are attached on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcMode {
    /// BPF links (TCX).
    Tcx,
    /// netlink `cls_bpf` filters.
    Netlink,
}

impl std::fmt::Display for TcMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Tcx => "tcx",
            Self::Netlink => "netlink",
        })
    }
}

/// Whether the kernel has TCX hooks: `BPF_PROG_QUERY` on `lo`'s TCX
/// ingress, which kernels before 6.6 answer with `EINVAL`.
pub fn tcx_supported() -> bool {
    SchedClassifier::query_tcx("lo", TcAttachType::Ingress).is_ok()
}

impl TcAttach {
    /// The mode to use on this kernel; `tcx` on a kernel without it is an
    /// error naming the fix.
    pub fn resolve(self) -> Result<TcMode> {
        match self {
            Self::Netlink => Ok(TcMode::Netlink),
            Self::Auto if tcx_supported() => Ok(TcMode::Tcx),
            Self::Auto => Ok(TcMode::Netlink),
            Self::Tcx if tcx_supported() => Ok(TcMode::Tcx),
            Self::Tcx => Err(Error::KernelFeature {
                feature: "TCX (tc BPF links)",
                minimum: "6.6",
                fix: "run the agent with --tc-attach=auto or --tc-attach=netlink",
            }),
        }
    }
}

fn record_path(links_dir: &Path, name: &str) -> PathBuf {
    links_dir.join(format!("{name}{NETLINK_RECORD}"))
}

fn link_err(action: String) -> impl FnOnce(Box<dyn std::error::Error + Send + Sync>) -> Error {
    move |source| Error::Link { action, source }
}

fn direction_name(direction: TcAttachType) -> &'static str {
    match direction {
        TcAttachType::Egress => "egress",
        _ => "ingress",
    }
}

/// Attaches `prog` to tc `direction` of `interface` as `name` in `mode`,
/// replacing the program of the attachment `name` already has.
pub(super) fn attach(
    prog: &mut SchedClassifier,
    mode: TcMode,
    links_dir: &Path,
    interface: &str,
    direction: TcAttachType,
    name: &str,
) -> Result<()> {
    match mode {
        TcMode::Tcx => {
            attach_tcx(prog, links_dir, interface, direction, name)?;
            remove_netlink(links_dir, name)
        }
        TcMode::Netlink => {
            attach_netlink(prog, links_dir, interface, direction, name)?;
            remove_tcx(links_dir, name)
        }
    }
}

fn attach_tcx(
    prog: &mut SchedClassifier,
    links_dir: &Path,
    interface: &str,
    direction: TcAttachType,
    name: &str,
) -> Result<()> {
    let path = links_dir.join(name);
    let reused = match PinnedLink::from_pin(&path) {
        Ok(old) => {
            let fd = old.unpin().map_err(|source| Error::Pin {
                action: "unpin a tc link".into(),
                source,
            })?;
            // A link whose device went away cannot take a new program.
            SchedClassifierLink::try_from(fd)
                .ok()
                .and_then(|link| prog.attach_to_link(link).ok())
        }
        Err(_) => None,
    };
    let id = match reused {
        Some(id) => id,
        None => prog
            .attach_with_options(
                interface,
                direction,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .map_err(|e| Error::program(name, e))?,
    };
    let link = prog.take_link(id).map_err(|e| Error::program(name, e))?;
    let fd: FdLink = link.try_into().map_err(|e: aya::programs::links::LinkError| {
        link_err(format!("pin the tc link of {interface}"))(Box::new(e))
    })?;
    fd.pin(&path)
        .map_err(|e| link_err(format!("pin the tc link of {interface}"))(Box::new(e)))?;
    Ok(())
}

fn attach_netlink(
    prog: &mut SchedClassifier,
    links_dir: &Path,
    interface: &str,
    direction: TcAttachType,
    name: &str,
) -> Result<()> {
    // EEXIST when the qdisc is there; any other failure shows at attach.
    let _ = qdisc_add_clsact(interface);
    let replaced = SchedClassifierLink::attached(interface, direction, TC_PRIORITY, TC_HANDLE, None)
        .ok()
        .and_then(|ours| prog.attach_to_link(ours).ok());
    let id = match replaced {
        Some(id) => id,
        None => prog
            .attach_with_options(
                interface,
                direction,
                TcAttachOptions::Netlink(NlOptions {
                    priority: TC_PRIORITY,
                    handle: TC_HANDLE,
                    classid: None,
                }),
            )
            .map_err(|e| Error::program(name, e))?,
    };
    let link = prog.take_link(id).map_err(|e| Error::program(name, e))?;
    // Dropping the link would delete the filter: it must outlive the agent.
    std::mem::forget(link);
    let path = record_path(links_dir, name);
    let record = format!("{}:{interface}", direction_name(direction));
    if std::fs::read_link(&path).is_ok_and(|r| r.as_os_str() == record.as_str()) {
        return Ok(());
    }
    let _ = std::fs::remove_file(&path);
    std::os::unix::fs::symlink(&record, &path).map_err(|source| Error::Pin {
        action: format!("record the tc filter of {interface}"),
        source,
    })
}

fn remove_tcx(links_dir: &Path, name: &str) -> Result<()> {
    match std::fs::remove_file(links_dir.join(name)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::Pin {
            action: "remove a link pin".into(),
            source: e,
        }),
        _ => Ok(()),
    }
}

fn remove_netlink(links_dir: &Path, name: &str) -> Result<()> {
    let path = record_path(links_dir, name);
    let record = match std::fs::read_link(&path) {
        Ok(r) => r.to_string_lossy().into_owned(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(Error::Pin {
                action: "read a tc filter record".into(),
                source,
            });
        }
    };
    if let Some((direction, interface)) = record.split_once(':') {
        let direction = if direction == "egress" {
            TcAttachType::Egress
        } else {
            TcAttachType::Ingress
        };
        // A device that went away took its filter with it.
        if let Ok(ours) = SchedClassifierLink::attached(interface, direction, TC_PRIORITY, TC_HANDLE, None) {
            let _ = ours.detach();
        }
    }
    std::fs::remove_file(&path).map_err(|source| Error::Pin {
        action: "remove a tc filter record".into(),
        source,
    })
}

/// Detaches the attachment `name`, in whichever mode it was made.
pub(super) fn detach(links_dir: &Path, name: &str) -> Result<()> {
    remove_tcx(links_dir, name)?;
    remove_netlink(links_dir, name)
}

/// The name of an entry of the links directory: records of netlink
/// filters are named like TCX pins.
pub(super) fn link_name(file_name: &str) -> &str {
    file_name.strip_suffix(NETLINK_RECORD).unwrap_or(file_name)
}

#[cfg(test)]
mod tests {
    use aya::util::KernelVersion;

    use super::*;

    /// Needs root. On this machine's kernel and on the older ones
    /// `make test-kernels` boots: auto is TCX exactly from Linux 6.6.
    #[test]
    fn auto_picks_tcx_exactly_where_the_kernel_has_it() {
        let v = KernelVersion::current().expect("kernel version");
        let want = if v >= KernelVersion::new(6, 6, 0) {
            TcMode::Tcx
        } else {
            TcMode::Netlink
        };
        assert_eq!(TcAttach::Auto.resolve().unwrap(), want, "kernel {v:?}");
        assert_eq!(TcAttach::Netlink.resolve().unwrap(), TcMode::Netlink);
        match TcAttach::Tcx.resolve() {
            Ok(mode) => assert_eq!((mode, want), (TcMode::Tcx, TcMode::Tcx)),
            Err(e) => {
                assert_eq!(want, TcMode::Netlink);
                assert!(
                    e.to_string().contains("6.6") && e.to_string().contains("--tc-attach"),
                    "{e}"
                );
            }
        }
    }

    #[test]
    fn netlink_records_are_listed_under_the_link_name() {
        assert_eq!(link_name("pod-veth12_nl"), "pod-veth12");
        assert_eq!(link_name("tunnel"), "tunnel");
    }
}
