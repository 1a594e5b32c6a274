//! Transparent encryption between nodes with WireGuard.
//!
//! - [`keys`]: the node's key pair; the private key stays on the node.
//! - [`uapi`]: WireGuard's configuration protocol, rendered and parsed
//!   without I/O (peers in, `set=1` transactions out; `get=1` answers in,
//!   handshakes and byte counts out).
//! - [`device`]: a userspace interface (boringtun on TUN) that speaks it.
//! - [`kernel`]: the kernel's WireGuard, the same transactions carried as
//!   generic netlink messages.
//! - [`peers`]: the peers and routes a node wants, from the mesh index
//!   (pure).
//! - [`netlink`]: the interface up, the tunnel-port rule, the routes of
//!   Knit's table, the strict-mode default.
//! - [`status`]: per remote node, the tunnel up or down and its last
//!   handshake, from the device's state (pure).
//! - [`node`]: the running encryption of this node: started once, then
//!   kept in step with the index by the agent loop.
//!
//! The tunnel stays the identity carrier: VXLAN packets to another node are
//! routed into the WireGuard interface by a rule on the tunnel's UDP port,
//! so VXLAN travels inside WireGuard and WireGuard's own UDP on the
//! underlay (docs/encryption.md).

pub mod device;
pub mod kernel;
pub mod keys;
pub mod netlink;
pub mod node;
pub mod peers;
pub mod status;
pub mod uapi;
