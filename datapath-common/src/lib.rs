//! What Knit's eBPF programs (`ebpf/knit.bpf.c`, C) and user space (the
//! agent, the datapath tests) share, in one place, following aya's
//! integration-common pattern: the map layouts ([`layout`]), and the names,
//! drop reasons, flags and verdicts ([`constants`]). The build runs a probe
//! compiled from `ebpf/knit.h` with the host compiler; tests here compare
//! every size, offset, enum value and flag with it, so C and Rust cannot
//! drift apart.
#![deny(rust_2018_idioms)]
// aya's `Pod` impls in `layout` are `unsafe impl`; nothing else is unsafe.
#![deny(unsafe_code)]

pub mod constants;
pub mod layout;

pub use constants::*;
pub use layout::*;

/// What the layout probe printed: `name value` per line (sizes, offsets,
/// enum values and flags of `ebpf/knit.h`).
#[cfg(test)]
pub(crate) const C_LAYOUT: &str = include_str!(concat!(env!("OUT_DIR"), "/c_layout.txt"));
