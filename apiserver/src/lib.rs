//! knit-apiserver: exports this cluster's state to its etcd and mirrors peers
//! (KVStoreMesh). Not built yet; see DESIGN.md and the apiserver issue. The
//! crate exists so the workspace layout matches the design from day one.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]
