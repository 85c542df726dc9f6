//! The settings and shared state of one [`Outbound`](super::Outbound) stack, as its calls read
//! them: the policies the composed call drives.

use std::sync::Arc;
use std::time::Duration;

use crate::circuit::Registry as Breakers;
use crate::concurrency::Registry as Limits;
use crate::dead_letter::Config as DeadLetters;
use crate::idempotency::IdempotencyKeyLayer;
use crate::partition::Scope;
use crate::retry::{Config as Retry, RetryBudget};
use crate::retry_after::Gates;
use crate::throttle::Shared as Throttle;

/// What every call of one stack reads: each step's settings and the state shared by every
/// upstream (counters, the dead-letter writer). Per-upstream state is in the
/// [`Record`](super::record::Record)s.
#[derive(Debug)]
pub(crate) struct Stack {
    pub(crate) keys: Option<IdempotencyKeyLayer>,
    /// The retry policy, with the deadline and the retry budget of the stack.
    pub(crate) retry: Retry,
    pub(crate) budget: Option<RetryBudget>,
    pub(crate) breaker: Option<Arc<Breakers>>,
    pub(crate) gates: Arc<Gates>,
    pub(crate) concurrency: Option<Arc<Limits>>,
    pub(crate) throttle: Option<Arc<Throttle>>,
    pub(crate) hedge: Option<Arc<crate::hedge::Shared>>,
    pub(crate) attempt_timeout: Option<Duration>,
    pub(crate) dead_letters: Option<Arc<DeadLetters>>,
    pub(crate) scope: Scope,
}
