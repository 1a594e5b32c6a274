//! knit-agent: the node datapath (index → BPF maps, tunnel device, routes).
//! Not built yet; see DESIGN.md and the agent issue.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]
