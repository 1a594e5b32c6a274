//! Test harness for Knit: real etcd servers with mTLS and RBAC, with
//! certificates and peer configs from `knitctl render`'s code, and helpers
//! that keep child processes and temporary directories tied to the test.
//!
//! Every process is started under `setpriv --pdeathsig KILL`, so it dies
//! with the test even when the test itself is killed, and is stopped by PID
//! on drop. Directories are removed on drop.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod cluster;
pub mod cni;
pub mod container;
pub mod manifests;
pub mod mesh;
pub mod netns;
pub mod process;

pub use cluster::TestCluster;
pub use process::{ChildProcess, Placement, TempDir, free_port};
