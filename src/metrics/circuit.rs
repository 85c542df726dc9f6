//! The breaker's state gauge and its changes, through the breaker's public listener.

use crate::circuit::{CircuitState, StateChange};
use crate::CircuitBreakerLayer;

use super::{names, upstream};

/// Records one state change of a circuit breaker: sets `outbound_circuit_state{upstream}`
/// (0 closed, 1 half-open, 2 open) and counts `outbound_circuit_transitions_total{upstream,
/// from, to}`. Pass it to [`CircuitBreakerLayer::on_state_change`]; [`watch`] does that.
///
/// The `upstream` label is the breaker's partition key (`scheme://host:port` with the default
/// partition), under the same cap as every other series; a breaker shared by every upstream
/// ([`Scope::Global`](crate::partition::Scope::Global)) is labelled `none`.
pub fn record_circuit_change(change: &StateChange) {
    let key = change
        .key
        .as_ref()
        .and_then(|k| std::str::from_utf8(k.as_bytes()).ok());
    let upstream = upstream::of_key(key);
    upstream.circuit_state(gauge_value(change.to));
    metrics::counter!(
        names::CIRCUIT_TRANSITIONS,
        "upstream" => upstream.label.clone(),
        "from" => state_name(change.from),
        "to" => state_name(change.to),
    )
    .increment(1);
}

/// `breaker` reporting its state changes to [`record_circuit_change`].
///
/// It replaces any listener set before on `breaker`, and, like every setter of the breaker,
/// gives it breakers of its own: call it when building the layer, before taking clones.
pub fn watch<C, P>(breaker: CircuitBreakerLayer<C, P>) -> CircuitBreakerLayer<C, P> {
    breaker.on_state_change(record_circuit_change)
}

/// The value of `outbound_circuit_state` for a state.
pub fn gauge_value(state: CircuitState) -> u8 {
    match state {
        CircuitState::Closed => 0,
        CircuitState::HalfOpen => 1,
        CircuitState::Open => 2,
    }
}

/// The label of a state: `closed`, `half_open`, `open`.
pub(crate) fn state_name(state: CircuitState) -> &'static str {
    match state {
        CircuitState::Closed => "closed",
        CircuitState::HalfOpen => "half_open",
        CircuitState::Open => "open",
    }
}
