//! The thin Kubernetes layer: watchers that trigger renders, and the
//! server-side apply of their results. Everything decided here is decided
//! by [`crate::render`] and [`crate::gsp`]; this module only reads inputs and
//! writes outputs, with one field manager (`knit-operator`).

pub mod apply;
pub mod gsp_controller;
pub mod lease;
pub mod mcs_controller;
pub mod mesh;
pub mod mesh_status;

pub use apply::Applier;
