//! Test harness for Knit's datapath: the local mesh (network namespaces,
//! pods made through the CNI, agents with their eBPF programs), a real
//! container runtime, and the control-plane kit of `knit-testkit`
//! (re-exported: real etcd with mTLS and RBAC, processes, temp dirs).
//!
//! Every process is started under `setpriv --pdeathsig KILL`, so it dies
//! with the test even when the test itself is killed, and is stopped by PID
//! on drop. Directories are removed on drop.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod capture;
pub mod chart;
pub mod cni;
pub mod conformance;
pub mod connectivity;
pub mod container;
pub mod mesh;
pub mod netns;
pub mod path_bench;
pub mod previous;
pub mod progress;

pub use knit_testkit::{
    ChildProcess, Placement, TempDir, TestCluster, cluster, free_port, manifests, process,
};
