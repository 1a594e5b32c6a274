//! Liveness and readiness flags a component flips as it starts and stops.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Shared health of one process: alive from creation, ready once the
/// component has done its first sync.
#[derive(Clone, Debug)]
pub struct Health {
    alive: Arc<AtomicBool>,
    ready: Arc<AtomicBool>,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            alive: Arc::new(AtomicBool::new(true)),
            ready: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl Health {
    /// Marks the process ready (or not) to do its job.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Marks the process broken beyond recovery; `/healthz` then fails so
    /// the kubelet restarts it.
    pub fn set_alive(&self, alive: bool) {
        self.alive.store(alive, Ordering::Relaxed);
    }

    /// Whether `/readyz` succeeds.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Whether `/healthz` succeeds.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Relaxed)
    }
}
