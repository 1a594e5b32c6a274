//! Progress of a long benchmark on stderr: one line per step with its
//! number, what it measures, the time so far and a countdown estimated
//! from the steps already done, so `make bench` never sits silent.

use std::time::{Duration, Instant};

/// Steps of one benchmark phase.
pub struct Progress {
    phase: &'static str,
    total: usize,
    done: usize,
    started: Instant,
}

impl Progress {
    /// A phase of `total` steps, starting now.
    pub fn new(phase: &'static str, total: usize) -> Self {
        Self {
            phase,
            total,
            done: 0,
            started: Instant::now(),
        }
    }

    /// Announces the next step.
    pub fn step(&mut self, what: &str) {
        let elapsed = self.started.elapsed();
        let left = remaining(elapsed, self.done, self.total);
        self.done += 1;
        let eta = match left {
            Some(left) => format!(", about {}s left", left.as_secs()),
            None => String::new(),
        };
        eprintln!(
            "[{} {}/{}] {what} ({}s so far{eta})",
            self.phase,
            self.done,
            self.total,
            elapsed.as_secs()
        );
    }
}

/// Time left after `done` of `total` equal steps took `elapsed`; unknown
/// before the first step is done.
fn remaining(elapsed: Duration, done: usize, total: usize) -> Option<Duration> {
    (done > 0).then(|| elapsed / done as u32 * total.saturating_sub(done) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_countdown_scales_with_the_steps_done() {
        assert_eq!(remaining(Duration::from_secs(10), 0, 4), None);
        assert_eq!(
            remaining(Duration::from_secs(10), 1, 4),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            remaining(Duration::from_secs(30), 3, 4),
            Some(Duration::from_secs(10))
        );
        assert_eq!(remaining(Duration::from_secs(40), 4, 4), Some(Duration::ZERO));
    }
}
