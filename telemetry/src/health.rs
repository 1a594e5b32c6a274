//! Liveness and readiness flags a component flips as it starts and stops.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Shared health of one process: alive from creation, ready once the
/// component has done its first sync.
#[derive(Clone, Debug)]
pub struct Health {
    alive: Arc<AtomicBool>,
    ready: Arc<AtomicBool>,
    waiting_for: Arc<Mutex<String>>,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            alive: Arc::new(AtomicBool::new(true)),
            ready: Arc::new(AtomicBool::new(false)),
            waiting_for: Arc::new(Mutex::new("the first sync".into())),
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

    /// Says what the process waits for before it can be ready; `/readyz`
    /// answers with it.
    pub fn set_waiting_for(&self, what: &str) {
        *self.waiting_for.lock().unwrap_or_else(|p| p.into_inner()) = what.to_owned();
    }

    /// What the process waits for (meaningful while not ready).
    pub fn waiting_for(&self) -> String {
        self.waiting_for.lock().unwrap_or_else(|p| p.into_inner()).clone()
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
