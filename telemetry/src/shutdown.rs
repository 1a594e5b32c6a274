//! The stop signal of every Knit binary. In a pod the binary is PID 1, for
//! which the kernel ignores signals without a handler, and the kubelet stops
//! it with SIGTERM (SIGKILL after the grace period); a terminal sends
//! SIGINT. Either one starts a clean shutdown. [`AbortOnDrop`] ends a
//! component's helper tasks with it.

use std::future::Future;

/// A spawned task that is aborted when this guard is dropped, so a
/// component's helper tasks end with it.
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

use tokio::signal::unix::{SignalKind, signal};

/// Installs the SIGTERM and SIGINT handlers now (so a signal that arrives
/// while the binary still starts is not lost) and returns a future that
/// resolves to the name of the first signal received.
///
/// # Errors
/// [`crate::Error::InstallSignalHandler`] when a handler cannot be
/// installed (no signal driver in the runtime).
pub fn shutdown_signal() -> crate::Result<impl Future<Output = &'static str> + Send + 'static> {
    let mut term = signal(SignalKind::terminate()).map_err(crate::Error::InstallSignalHandler)?;
    let mut int = signal(SignalKind::interrupt()).map_err(crate::Error::InstallSignalHandler)?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    })
}

/// Runs `work` until it ends, or until SIGTERM or SIGINT arrives: then
/// `work` is dropped, `stopping` is logged with the signal, and the result
/// is `Ok(())`. The handlers are installed before `work` first runs.
///
/// # Errors
/// `work`'s error, or [`crate::Error::InstallSignalHandler`].
pub async fn until_shutdown<E>(work: impl Future<Output = Result<(), E>>, stopping: &str) -> Result<(), E>
where
    E: From<crate::Error>,
{
    let stop = shutdown_signal()?;
    tokio::select! {
        r = work => r,
        signal = stop => {
            tracing::info!(signal, "{stopping}");
            Ok(())
        }
    }
}
