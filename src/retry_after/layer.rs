use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::{Gate, RetryAfter};

/// Holds every request back while the upstream has asked for a pause. See the
/// [module docs](super).
///
/// Clones of the layer, and every service it makes, share one gate.
#[derive(Clone, Debug)]
pub struct RetryAfterLayer {
    gate: Arc<Gate>,
}

impl Default for RetryAfterLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl RetryAfterLayer {
    /// A gate that holds requests for up to 60 s and fails faster than that.
    pub fn new() -> Self {
        RetryAfterLayer {
            gate: Arc::new(Gate::new(Duration::from_secs(60))),
        }
    }

    /// The longest a request waits at the closed gate (default 60 s). When the gate stays
    /// closed longer, requests fail at once with [`Kind::RateLimited`](crate::error::Kind)
    /// carrying the remaining wait. Zero makes every request fail fast while the gate is closed.
    pub fn max_wait(self, wait: Duration) -> Self {
        RetryAfterLayer {
            gate: Arc::new(Gate::new(wait)),
        }
    }

    /// How long the gate stays closed from now, or `None` when it is open.
    pub fn closed_for(&self) -> Option<Duration> {
        self.gate.closed_for()
    }

    /// The gate's counters.
    pub fn stats(&self) -> super::GateStats {
        self.gate.stats()
    }
}

impl<S> Layer<S> for RetryAfterLayer {
    type Service = RetryAfter<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RetryAfter::new(inner, self.gate.clone())
    }
}
