//! Local multi-cluster harness in network namespaces. Not built yet; see the
//! e2e issue. The kind suite lives in `e2e/kind/`.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]
