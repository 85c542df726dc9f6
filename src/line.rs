//! The line of held calls, shared by the breaker (calls held while their circuit is open), the
//! Retry-After gate (requests held while their upstream asked for a pause) and the concurrency
//! limit (calls waiting for a place among those in flight): who waits, in
//! what order, who was woken, and how many may leave before the next answer comes back.
//!
//! Mechanism only, kept under the owner's lock: the breaker and the gate decide when a line
//! starts to leave ([`release`](Line::release)), when it grows ([`grow`](Line::grow)) and when
//! it stops ([`stop`](Line::stop)); the line keeps the places and the wakes. A place that
//! leaves with a wake it did not use passes it to the next in line, so a dropped call never
//! strands the ones behind it.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::time::{Instant, Sleep};

/// Calls held in arrival order, and how many may leave before the next answer.
#[derive(Debug, Default)]
pub(crate) struct Line {
    waiting: BTreeMap<u64, Place>,
    next: u64,
    /// While the line is released: how many may still go before another answer comes back.
    allowance: u32,
}

#[derive(Debug, Default)]
struct Place {
    waker: Option<Waker>,
    /// Woken and not polled since: if this call leaves now, it owes the wake to the next.
    woken: bool,
}

impl Line {
    /// A place at the end of the line.
    pub(crate) fn join(&mut self) -> u64 {
        let ticket = self.next;
        self.next = self.next.wrapping_add(1);
        self.waiting.insert(ticket, Place::default());
        ticket
    }

    /// The call of `ticket` is being polled: any wake it was given is used.
    pub(crate) fn polled(&mut self, ticket: u64) {
        if let Some(place) = self.waiting.get_mut(&ticket) {
            place.woken = false;
        }
    }

    /// The call of `ticket` waits: wake it with `waker`.
    pub(crate) fn wait(&mut self, ticket: u64, waker: &Waker) {
        if let Some(place) = self.waiting.get_mut(&ticket) {
            match &mut place.waker {
                Some(known) if known.will_wake(waker) => {}
                slot => *slot = Some(waker.clone()),
            }
        }
    }

    /// The call of `ticket` leaves the line (`false`: it was not in line); a wake it did not
    /// use goes to the next call.
    pub(crate) fn leave(&mut self, ticket: u64, wake: &mut Vec<Waker>) -> bool {
        let Some(place) = self.waiting.remove(&ticket) else {
            return false;
        };
        if place.woken {
            self.wake(1, wake);
        }
        true
    }

    /// Wakes the first `n` calls in line not woken yet.
    pub(crate) fn wake(&mut self, n: u32, wake: &mut Vec<Waker>) {
        let mut left = n;
        for place in self.waiting.values_mut() {
            if left == 0 {
                break;
            }
            if place.woken {
                continue;
            }
            if let Some(waker) = place.waker.take() {
                place.woken = true;
                wake.push(waker);
                left -= 1;
            }
        }
    }

    /// Wakes every call in line, to look at a new state.
    pub(crate) fn wake_all(&mut self, wake: &mut Vec<Waker>) {
        self.wake(u32::MAX, wake);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Calls in line.
    pub(crate) fn len(&self) -> usize {
        self.waiting.len()
    }

    /// The line starts to leave: `first` calls may go at once.
    pub(crate) fn release(&mut self, first: u32, wake: &mut Vec<Waker>) {
        self.allowance = first;
        self.wake(first, wake);
    }

    /// An answer came back while the line is released: `n` more may go.
    pub(crate) fn grow(&mut self, n: u32, wake: &mut Vec<Waker>) {
        self.allowance = self.allowance.saturating_add(n);
        self.wake(n, wake);
    }

    /// Takes one release for whichever call asks, if there is one left.
    pub(crate) fn take(&mut self) -> bool {
        let some = self.allowance > 0;
        self.allowance = self.allowance.saturating_sub(1);
        some
    }

    /// Takes one release for the call of `ticket` if the releases left reach its place: the
    /// calls ahead of it come first, so the line leaves in arrival order whatever order its
    /// calls are polled in.
    pub(crate) fn take_in_turn(&mut self, ticket: u64) -> bool {
        let allowance = usize::try_from(self.allowance).unwrap_or(usize::MAX);
        let ahead = self.waiting.range(..ticket).take(allowance).count();
        if ahead >= allowance {
            return false;
        }
        self.allowance -= 1;
        true
    }

    /// Whether the call of `ticket` is in line and among its first `n`.
    pub(crate) fn among_first(&self, ticket: u64, n: usize) -> bool {
        n > 0
            && self.waiting.contains_key(&ticket)
            && self.waiting.range(..ticket).take(n).count() < n
    }

    /// Takes one release for a call that is not in line: it may pass only when the releases
    /// left cover every call in line and it too.
    pub(crate) fn take_behind(&mut self) -> bool {
        let allowance = usize::try_from(self.allowance).unwrap_or(usize::MAX);
        if allowance <= self.waiting.len() {
            return false;
        }
        self.allowance -= 1;
        true
    }

    /// Releases left before the next answer.
    #[cfg(all(test, not(tower_outbound_loom)))]
    pub(crate) fn allowance(&self) -> u32 {
        self.allowance
    }

    /// The line stops leaving: releases left are void.
    pub(crate) fn stop(&mut self) {
        self.allowance = 0;
    }
}

/// The timer of a held call: made on its first wait, moved when the instant it waits for
/// changes.
#[derive(Debug, Default)]
pub(crate) struct HoldTimer(Option<Pin<Box<Sleep>>>);

impl HoldTimer {
    /// Polls the timer for `until`.
    pub(crate) fn poll_until(&mut self, until: Instant, cx: &mut Context<'_>) -> Poll<()> {
        let timer = self
            .0
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(until)));
        if timer.deadline() != until {
            timer.as_mut().reset(until);
        }
        timer.as_mut().poll(cx)
    }
}

#[cfg(all(test, not(tower_outbound_loom)))]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    use super::*;

    use crate::testing::Count;

    fn waker() -> Waker {
        Waker::from(Arc::new(Count(AtomicUsize::new(0))))
    }

    #[test]
    fn releases_go_to_the_calls_in_turn_whatever_order_they_ask_in() {
        let mut line = Line::default();
        let tickets: Vec<u64> = (0..4).map(|_| line.join()).collect();
        let w = waker();
        for &t in &tickets {
            line.wait(t, &w);
        }
        let mut wake = Vec::new();
        line.release(1, &mut wake);
        assert_eq!(wake.len(), 1, "the first in line is woken");
        // The last asks first: not its turn.
        assert!(!line.take_in_turn(tickets[3]));
        assert!(line.take_in_turn(tickets[0]));
        line.leave(tickets[0], &mut wake);
        assert!(!line.take_in_turn(tickets[1]), "no release left");
        line.grow(2, &mut wake);
        // Two releases reach the next two places, not the third.
        assert!(!line.take_in_turn(tickets[3]));
        assert!(line.take_in_turn(tickets[2]));
        assert!(line.take_in_turn(tickets[1]));
        assert_eq!(line.allowance(), 0);
    }

    #[test]
    fn a_call_not_in_line_passes_only_when_the_releases_cover_the_line() {
        let mut line = Line::default();
        let first = line.join();
        let mut wake = Vec::new();
        line.release(1, &mut wake);
        assert!(!line.take_behind(), "one release, one call in line");
        line.grow(1, &mut wake);
        assert!(line.take_behind());
        assert!(line.take_in_turn(first));
        assert!(!line.take_behind());
    }

    #[test]
    fn a_wake_not_used_passes_to_the_next_in_line() {
        let mut line = Line::default();
        let (a, b, c) = (line.join(), line.join(), line.join());
        let w = waker();
        for t in [a, b, c] {
            line.wait(t, &w);
        }
        let mut wake = Vec::new();
        line.release(1, &mut wake);
        assert_eq!(wake.len(), 1);
        line.leave(a, &mut wake);
        assert_eq!(wake.len(), 2, "a's wake went to b");
        line.leave(c, &mut wake);
        assert_eq!(wake.len(), 2, "c was not woken: it owes nothing");
        assert!(line.take());
        line.leave(b, &mut wake);
        assert!(line.is_empty());
    }
}
