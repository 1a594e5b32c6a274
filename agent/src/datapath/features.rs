//! What the datapath needs from the kernel, checked before anything loads,
//! so a node too old for Knit gets one sentence naming the missing feature
//! and the first Linux version that has it, never a verifier dump.
//!
//! Each [`Requirement`] is probed the way libbpf does (aya's
//! `is_program_supported`, `is_map_supported`, `is_helper_supported`: a
//! minimal program or map is loaded and the kernel's answer read); the
//! socket hooks that exist only as attach types are judged by the kernel
//! version. [`missing`] takes the probe as a function, so the error for
//! each feature is tested without an old kernel. Linux 5.10 is the oldest
//! kernel with everything (`bpf_redirect_peer`); TCX (6.6) is optional,
//! see [`super::tc`].

use aya::maps::MapType;
use aya::programs::ProgramType;
use aya::sys::BpfHelper;
use aya::util::KernelVersion;

use crate::{Error, Result};

/// How a requirement is probed.
#[derive(Clone, Copy, Debug)]
pub enum Probe {
    /// A program type loads.
    Program(ProgramType),
    /// A map type can be created.
    Map(MapType),
    /// A helper may be called from a program type.
    Helper(ProgramType, BpfHelper),
    /// The kernel is at least this version (attach types the kernel cannot
    /// be asked about without attaching).
    Kernel(u8, u8),
}

/// One kernel feature the datapath uses.
#[derive(Clone, Copy, Debug)]
pub struct Requirement {
    /// What it is, in words.
    pub feature: &'static str,
    /// The first Linux version with it.
    pub minimum: &'static str,
    /// How to find out.
    pub probe: Probe,
}

/// Everything `ebpf/knit.bpf.c` and the loader use, oldest first.
pub const REQUIRED: [Requirement; 11] = [
    Requirement {
        feature: "tc BPF programs (sched_cls)",
        minimum: "4.1",
        probe: Probe::Program(ProgramType::SchedClassifier),
    },
    Requirement {
        feature: "bpf_skb_set_tunnel_key in tc programs",
        minimum: "4.3",
        probe: Probe::Helper(
            ProgramType::SchedClassifier,
            BpfHelper::BPF_FUNC_skb_set_tunnel_key,
        ),
    },
    Requirement {
        feature: "bpf_skb_change_type in tc programs",
        minimum: "4.8",
        probe: Probe::Helper(ProgramType::SchedClassifier, BpfHelper::BPF_FUNC_skb_change_type),
    },
    Requirement {
        feature: "LRU hash maps",
        minimum: "4.10",
        probe: Probe::Map(MapType::LruHash),
    },
    Requirement {
        feature: "LPM trie maps",
        minimum: "4.11",
        probe: Probe::Map(MapType::LpmTrie),
    },
    Requirement {
        feature: "cgroup socket address programs (cgroup/connect4, sendmsg4)",
        minimum: "4.17",
        probe: Probe::Program(ProgramType::CgroupSockAddr),
    },
    Requirement {
        feature: "bpf_get_socket_cookie in socket address programs",
        minimum: "4.12",
        probe: Probe::Helper(ProgramType::CgroupSockAddr, BpfHelper::BPF_FUNC_get_socket_cookie),
    },
    Requirement {
        feature: "BPF links for cgroups (pinned, updated in place)",
        minimum: "5.7",
        probe: Probe::Kernel(5, 7),
    },
    Requirement {
        feature: "the cgroup/getpeername4 hook",
        minimum: "5.8",
        probe: Probe::Kernel(5, 8),
    },
    Requirement {
        feature: "BPF ring buffers (flow events)",
        minimum: "5.8",
        probe: Probe::Map(MapType::RingBuf),
    },
    Requirement {
        feature: "bpf_redirect_peer in tc programs",
        minimum: "5.10",
        probe: Probe::Helper(ProgramType::SchedClassifier, BpfHelper::BPF_FUNC_redirect_peer),
    },
];

/// The first requirement `present` says is missing.
pub fn missing(present: impl Fn(&Probe) -> bool) -> Option<Requirement> {
    REQUIRED.into_iter().find(|r| !present(&r.probe))
}

/// Asks this kernel. A probe that cannot tell (an unexpected error) counts
/// as present, so loading goes on and fails with the kernel's own words.
pub fn probe(p: &Probe) -> bool {
    match *p {
        Probe::Program(t) => aya::sys::is_program_supported(t).unwrap_or(true),
        Probe::Map(t) => aya::sys::is_map_supported(t).unwrap_or(true),
        Probe::Helper(t, h) => aya::sys::is_helper_supported(t, h).unwrap_or(true),
        Probe::Kernel(major, minor) => {
            KernelVersion::current().map_or(true, |v| v >= KernelVersion::new(major, minor, 0))
        }
    }
}

/// Fails with the first missing feature of this kernel.
pub fn check() -> Result<()> {
    match missing(probe) {
        None => Ok(()),
        Some(r) => Err(Error::KernelFeature {
            feature: r.feature,
            minimum: r.minimum,
            fix: "Knit's datapath needs Linux 5.10 or later; upgrade the node's kernel",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_feature_is_named_with_its_kernel() {
        let without_redirect_peer =
            |p: &Probe| !matches!(p, Probe::Helper(_, h) if *h == BpfHelper::BPF_FUNC_redirect_peer);
        let r = missing(without_redirect_peer).expect("missing");
        assert_eq!(
            (r.feature, r.minimum),
            ("bpf_redirect_peer in tc programs", "5.10")
        );
        let on_5_4 = |p: &Probe| match p {
            Probe::Kernel(major, minor) => (*major, *minor) <= (5, 4),
            _ => true,
        };
        assert_eq!(missing(on_5_4).unwrap().minimum, "5.7");
        assert!(missing(|_| true).is_none());
    }

    #[test]
    fn the_message_says_what_and_since_when() {
        let r = REQUIRED[10];
        let e = Error::KernelFeature {
            feature: r.feature,
            minimum: r.minimum,
            fix: "upgrade",
        };
        assert_eq!(
            e.to_string(),
            "this kernel has no bpf_redirect_peer in tc programs (Linux 5.10 or later has it); upgrade"
        );
    }

    /// Needs root, like the rest of the privileged suite: this machine's
    /// kernel has every feature.
    #[test]
    fn this_kernel_has_everything() {
        assert!(missing(probe).is_none(), "{:?}", missing(probe));
    }
}
