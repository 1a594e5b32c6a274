//! Logs, traces, metrics and health endpoints shared by every Knit binary.
//!
//! [`init_tracing`] installs structured `tracing` logs (text, or JSON when
//! `KNIT_LOG_FORMAT=json`) filtered by `RUST_LOG`, plus an OpenTelemetry
//! exporter when the standard `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
//! [`serve`] exposes a Prometheus registry on `/metrics` and the process's
//! [`Health`] on `/healthz` (alive) and `/readyz` (ready to serve).
//! [`until_shutdown`] runs a binary until SIGTERM/SIGINT ([`shutdown_signal`]).
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

mod error_chain;
mod health;
mod server;
mod shutdown;
mod tracing_setup;

pub use error_chain::error_chain;
pub use health::Health;
pub use prometheus_client;
pub use server::{router, serve, serve_registry};
pub use shutdown::{AbortOnDrop, shutdown_signal, until_shutdown};
pub use tracing_setup::{TracingGuard, init_tracing, trace_id};

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Installing the global tracing subscriber failed.
    #[error("installing the tracing subscriber")]
    InstallSubscriber(#[source] tracing_subscriber::util::TryInitError),
    /// Building the OTLP exporter from `OTEL_EXPORTER_OTLP_*` failed.
    #[error("building the OpenTelemetry OTLP exporter (check OTEL_EXPORTER_OTLP_ENDPOINT)")]
    BuildOtlpExporter(#[source] opentelemetry_otlp::ExporterBuildError),
    /// Binding the metrics and health listener failed.
    #[error("binding the metrics/health listener on {addr}")]
    BindListener {
        /// The address that could not be bound.
        addr: std::net::SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Serving HTTP failed.
    #[error("serving metrics/health")]
    Serve(#[source] std::io::Error),
    /// Installing the SIGTERM/SIGINT handler failed.
    #[error("installing the SIGTERM/SIGINT handler")]
    InstallSignalHandler(#[source] std::io::Error),
}

/// Result of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Parses a command-line duration: `100ms`, `30s` (or `30`), `2m`, `12h`,
/// `7d`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let (num, unit) = s
        .trim()
        .split_at(s.trim().find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 100ms, 30s, 2m or 7d"))?;
    match unit {
        "ms" => Ok(std::time::Duration::from_millis(n)),
        "s" | "" => Ok(std::time::Duration::from_secs(n)),
        "m" => Ok(std::time::Duration::from_secs(n * 60)),
        "h" => Ok(std::time::Duration::from_secs(n * 3600)),
        "d" => Ok(std::time::Duration::from_secs(n * 86_400)),
        _ => Err(format!("{s:?} has an unknown unit; use ms, s, m, h or d")),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::parse_duration;

    #[test]
    fn durations_read_in_every_unit_and_a_bad_one_names_the_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(43_200)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert!(parse_duration("3w").unwrap_err().contains("use ms, s, m, h or d"));
    }
}
