//! The agent's bounded history of flow events: the newest
//! [`FlowLog::capacity`] events as the ring buffer delivered them, numbered
//! in arrival order. Pure: the reader pushes, the API reads pages.

use std::collections::VecDeque;

use knit_datapath_common::FlowEvent;

/// Events kept by default (about 3 MiB).
pub const DEFAULT_CAPACITY: usize = 65_536;

/// One event as it arrived: its number and when it happened (nanoseconds
/// since the Unix epoch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoggedEvent {
    /// Sequence number, from 1.
    pub seq: u64,
    /// Wall-clock time.
    pub time_unix_nanos: u128,
    /// The event.
    pub event: FlowEvent,
}

/// A page of the history: what came after a sequence number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    /// Events after the asked number that are still held, oldest first.
    pub events: Vec<LoggedEvent>,
    /// The number to ask for next.
    pub next: u64,
    /// Events after the asked number no longer held.
    pub missed: u64,
}

/// The newest events, at most `capacity`.
#[derive(Debug)]
pub struct FlowLog {
    events: VecDeque<LoggedEvent>,
    capacity: usize,
    last: u64,
}

impl FlowLog {
    /// An empty log keeping `capacity` events.
    pub fn new(capacity: usize) -> Self {
        Self {
            events: VecDeque::with_capacity(capacity.min(4096)),
            capacity: capacity.max(1),
            last: 0,
        }
    }

    /// How many events it keeps.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Appends an event, forgetting the oldest when full.
    pub fn push(&mut self, time_unix_nanos: u128, event: FlowEvent) -> u64 {
        if self.events.len() == self.capacity {
            self.events.pop_front();
        }
        self.last += 1;
        self.events.push_back(LoggedEvent {
            seq: self.last,
            time_unix_nanos,
            event,
        });
        self.last
    }

    /// Up to `limit` events numbered after `since`. A number beyond the
    /// last one (a reader of an agent since restarted) starts over.
    pub fn since(&self, since: u64, limit: usize) -> Page {
        let since = if since > self.last { 0 } else { since };
        let first = self.events.front().map_or(self.last + 1, |e| e.seq);
        let missed = first
            .saturating_sub(since + 1)
            .min(self.last.saturating_sub(since));
        let skip = (since + 1).saturating_sub(first) as usize;
        let events: Vec<LoggedEvent> = self.events.iter().skip(skip).take(limit).copied().collect();
        let next = events.last().map_or(since.max(first - 1), |e| e.seq);
        Page { events, next, missed }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(reason: u8) -> FlowEvent {
        FlowEvent {
            reason,
            ..Default::default()
        }
    }

    fn reasons(page: &Page) -> Vec<u8> {
        page.events.iter().map(|e| e.event.reason).collect()
    }

    #[test]
    fn pages_continue_where_the_last_one_ended() {
        let mut log = FlowLog::new(10);
        for r in 1..=5 {
            log.push(u128::from(r), event(r));
        }
        let first = log.since(0, 3);
        assert_eq!((reasons(&first), first.next, first.missed), (vec![1, 2, 3], 3, 0));
        let second = log.since(first.next, 100);
        assert_eq!((reasons(&second), second.next, second.missed), (vec![4, 5], 5, 0));
        let empty = log.since(second.next, 100);
        assert_eq!((reasons(&empty), empty.next, empty.missed), (vec![], 5, 0));
        assert_eq!(second.events[0].time_unix_nanos, 4);
    }

    #[test]
    fn a_full_log_forgets_the_oldest_and_says_how_many_a_reader_missed() {
        let mut log = FlowLog::new(3);
        for r in 1..=7 {
            log.push(0, event(r));
        }
        // Held: 5, 6, 7. A reader at 1 missed 2, 3 and 4.
        let page = log.since(1, 100);
        assert_eq!((reasons(&page), page.next, page.missed), (vec![5, 6, 7], 7, 3));
        let fresh = log.since(0, 100);
        assert_eq!((reasons(&fresh), fresh.missed), (vec![5, 6, 7], 4));
        // A reader ahead of the log (the agent restarted) starts over.
        let ahead = log.since(100, 100);
        assert_eq!((reasons(&ahead), ahead.next), (vec![5, 6, 7], 7));
    }
}
