use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use tower_layer::Layer;

use super::{Gates, RetryAfter, Settings, MAX_SETTING};
use crate::partition::{ByUpstream, Scope};

/// Holds requests back while their upstream has asked for a pause. See the
/// [module docs](super).
///
/// Clones of the layer, and every service it makes, share the gates: one per upstream by
/// default.
///
/// | setting | default | out-of-range values |
/// |---|---|---|
/// | [`max_wait`](Self::max_wait) | 60 s | above a year: a year |
/// | [`max_pause`](Self::max_pause) | 15 min | above a year: a year |
/// | [`release`](Self::release) | 1 | zero: 1 |
/// | [`partition`](Self::partition) | [`Scope::Upstream`] | |
/// | [`max_partitions`](Self::max_partitions) | 1,024 | |
#[derive(Clone, Debug)]
pub struct RetryAfterLayer {
    gates: Arc<Gates>,
    scope: Scope,
}

impl Default for RetryAfterLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl RetryAfterLayer {
    /// Gates per upstream that hold requests for up to 60 s, fail faster than that, let the
    /// held requests go paced when they open (one at once, then two more per answer), and
    /// never stay closed longer than 15 minutes whatever the server asks.
    pub fn new() -> Self {
        RetryAfterLayer {
            gates: Arc::new(Gates::new(Settings::default())),
            scope: Scope::Upstream,
        }
    }

    fn update(self, f: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = self.gates.settings;
        f(&mut settings);
        RetryAfterLayer {
            gates: Arc::new(Gates::new(settings)),
            scope: self.scope,
        }
    }

    /// The longest a request waits at a closed gate, its patience (default 60 s; above a year:
    /// a year), counted from when it first met the closed gate. When the gate stays closed
    /// longer, requests fail at once with [`Kind::RateLimited`](crate::error::Kind) carrying
    /// the remaining wait; a held request whose gate is closed again past its patience fails
    /// then. While an open gate releases the requests it held ([`release`](Self::release)), a
    /// request whose patience runs out waiting for its turn goes: the server asked for no
    /// pause. Zero makes every request fail fast while the gate is closed. The breaker's
    /// [`max_wait`](crate::CircuitBreakerLayer::max_wait) is the same idea for an open circuit.
    pub fn max_wait(self, wait: Duration) -> Self {
        self.update(|s| s.max_wait = wait.min(MAX_SETTING))
    }

    /// The longest a server can close the gate (default 15 minutes: the seeds' advice is never
    /// to block on a `Retry-After` over 10–15 minutes). A longer pause closes it for this
    /// long; calls meanwhile fail fast with the server's own retry time
    /// ([`Error::retry_at`](crate::Error::retry_at)), and the first such pause per upstream is
    /// logged at WARN. Zero means no server can close the gate.
    pub fn max_pause(self, pause: Duration) -> Self {
        self.update(|s| s.max_pause = pause.min(MAX_SETTING))
    }

    /// How many held requests leave at once when their gate opens again (default 1; zero is
    /// raised to 1). The rest leave paced, in the order they arrived: each response through
    /// the gate that asks for no pause lets two more go, each request that ends without one
    /// (an error, a refusal the throttle doubted) one more — a slow start that doubles per
    /// round trip while the upstream answers, so a stack holding 500 requests after a
    /// `Retry-After: 30` does not send 500 at the same instant and collect a wave of 429s. A
    /// response that closes the gate again stops the release; the requests still held wait
    /// for the new time within their [`max_wait`](Self::max_wait), and one whose patience runs
    /// out during the release goes then. Requests that meet the gate while it releases line
    /// up behind the held ones. `u32::MAX` lets every held request go at once.
    pub fn release(self, first: u32) -> Self {
        self.update(|s| s.release = first.max(1))
    }

    /// One gate per upstream ([`Scope::Upstream`], the default: a pause asked by one host never
    /// holds calls to another) or one for every request ([`Scope::Global`]: for an API whose
    /// limits span several hosts). The gates stay shared with clones of this layer.
    pub fn partition(mut self, scope: Scope) -> Self {
        self.scope = scope;
        self
    }

    /// The most per-upstream gates kept (default 1,024). At the cap, open gates are forgotten
    /// first; if every gate is closed, a new upstream shares the default gate.
    pub fn max_partitions(self, max: usize) -> Self {
        self.update(|s| s.max_partitions = max)
    }

    /// How long the longest-closed gate stays closed from now, or `None` when every gate is
    /// open.
    pub fn closed_for(&self) -> Option<Duration> {
        self.gates.longest_closed()
    }

    /// How long the gate of `uri`'s upstream stays closed from now, or `None` when it is open.
    pub fn closed_for_upstream(&self, uri: &Uri) -> Option<Duration> {
        let key = match self.scope {
            Scope::Global => None,
            Scope::Upstream => ByUpstream::of(uri),
        };
        self.gates.closed_for(key.as_ref())
    }

    /// Requests held now at the gates: waiting for a closed gate, or for their turn while an
    /// open one releases the requests it held.
    pub fn held(&self) -> usize {
        self.gates.held()
    }

    /// The gates' counters.
    pub fn stats(&self) -> super::GateStats {
        self.gates.stats()
    }

    /// The gates, for a call that passes them itself.
    pub(crate) fn gates(&self) -> &Arc<Gates> {
        &self.gates
    }
}

impl<S> Layer<S> for RetryAfterLayer {
    type Service = RetryAfter<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RetryAfter::new(inner, self.gates.clone(), self.scope)
    }
}
