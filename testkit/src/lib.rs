//! Test kit for Knit's control plane: real etcd servers with mTLS and RBAC,
//! with certificates and peer configs from `knitctl render`'s code, builders
//! of the Kubernetes manifests the sources read, and child processes and
//! temporary directories tied to the test.
//!
//! It carries nothing of the datapath (no agent, no eBPF build), so the
//! apiserver's and kvstore's tests build without them; `knit-e2e` adds the
//! local mesh on top.
//!
//! Every process is started under `setpriv --pdeathsig KILL`, so it dies
//! with the test even when the test itself is killed, and is stopped by PID
//! on drop. Directories are removed on drop.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod bench;
pub mod bpffs;
pub mod cluster;
pub mod manifests;
pub mod process;

pub use cluster::TestCluster;
pub use process::{ChildProcess, Placement, TempDir, free_port, unix_seconds};
