//! Where the `metrics` feature hooks into the stack. Without the feature every item here is
//! the identity, and the stack's types are the same as if this file did not exist.

#[cfg(feature = "metrics")]
mod on {
    use tower_layer::Layer;

    use crate::dead_letter::Sink;
    use crate::metrics::{AttemptMetricsLayer, CallMetricsLayer, MeteredSink};
    use crate::CircuitBreakerLayer;

    pub(crate) type Calls<S> = crate::metrics::CallMetrics<S>;
    pub(crate) type Attempts<S> = crate::metrics::AttemptMetrics<S>;

    /// The logical call, metered and traced; `circuit`: the stack has a breaker.
    pub(crate) fn calls<S>(inner: S, circuit: bool) -> Calls<S> {
        CallMetricsLayer::new().circuit(circuit).layer(inner)
    }

    /// Each attempt, metered and traced.
    pub(crate) fn attempts<S>(inner: S) -> Attempts<S> {
        AttemptMetricsLayer::new().layer(inner)
    }

    /// A preset's breaker, reporting its state changes.
    pub(crate) fn breaker(breaker: CircuitBreakerLayer) -> CircuitBreakerLayer {
        crate::metrics::watch(breaker)
    }

    /// A preset's dead-letter sink, metered.
    pub(crate) fn sink<S: Sink>(sink: S) -> impl Sink {
        MeteredSink::new(sink)
    }
}

#[cfg(not(feature = "metrics"))]
mod on {
    use crate::CircuitBreakerLayer;

    pub(crate) type Calls<S> = S;
    pub(crate) type Attempts<S> = S;

    pub(crate) fn calls<S>(inner: S, _circuit: bool) -> S {
        inner
    }

    pub(crate) fn attempts<S>(inner: S) -> S {
        inner
    }

    pub(crate) fn breaker(breaker: CircuitBreakerLayer) -> CircuitBreakerLayer {
        breaker
    }

    pub(crate) fn sink<S>(sink: S) -> S {
        sink
    }
}

pub(crate) use on::*;
