//! An error and its causes on one line, for logs and status messages.
//!
//! std only: the static `knit-cni` compiles this same file (it takes no
//! workspace crate that brings tokio), every other crate calls
//! `knit_telemetry::error_chain`.

/// `e` and each of its sources, joined by `": "`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}
