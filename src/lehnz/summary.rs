//! What a call did with its records, batch by batch.

use super::batch::{Batch, Rejected};
use super::error::LehnzError;

/// What one call did with the records it was given.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct Summary {
    /// Records Lehnz accepted (events queued, items or users upserted).
    pub accepted: usize,
    /// Records not accepted, each with its position, id and why (a streamed call lists the
    /// first [`IngestOptions::listed_rejections`](super::IngestOptions::listed_rejections)).
    pub rejected: Vec<Rejected>,
    /// Rejected records counted but not listed in [`rejected`](Self::rejected).
    pub rejected_unlisted: usize,
    /// Records whose batch failed and that the dead-letter sink confirmed it stored, to be
    /// replayed. A batch the sink failed to store is not counted here but in
    /// [`dead_letter_failed`](Self::dead_letter_failed).
    pub dead_lettered: usize,
    /// Records whose batch failed and whose dead letter the sink failed to store (disk
    /// full, Redis down): neither delivered nor kept. Each such batch is also in
    /// [`errors`](Self::errors).
    pub dead_letter_failed: usize,
    /// Records of batches Lehnz answered with a 2xx but counted fewer of as accepted than
    /// were sent: their fate is unknown.
    pub unaccounted: usize,
    /// Every record below this offset (a position in the input, counted from the call's
    /// start offset) is settled: accepted, stored as a dead letter, or rejected for good.
    pub settled: usize,
    /// Requests sent (batches), not counting retries.
    pub requests: usize,
    /// How long a streamed call left its source unread because the circuit was open (see
    /// [`StackConfig::circuit_max_wait`](super::StackConfig::circuit_max_wait)).
    pub paused: std::time::Duration,
    /// The error of each batch that failed.
    pub errors: Vec<LehnzError>,
}

impl Summary {
    /// Whether every record was accepted: nothing rejected, no batch failed, and every 2xx
    /// accounted for every record it was sent.
    pub fn is_complete(&self) -> bool {
        self.rejected.is_empty()
            && self.rejected_unlisted == 0
            && self.errors.is_empty()
            && self.unaccounted == 0
            && self.dead_letter_failed == 0
    }
}

/// What became of one batch.
pub(crate) struct Outcome {
    pub(crate) result: Result<usize, LehnzError>,
    /// The dead-letter receipt of a failed batch: `Some(true)` stored, `Some(false)` the sink
    /// failed, `None` no letter.
    pub(crate) stored: Option<bool>,
}

impl Summary {
    /// Counts one batch's outcome, the next in source order, and moves `settled` past it if
    /// it is settled (delivered, stored as a dead letter, or rejected for good) and every
    /// batch before it was. A wrong key is the error that stops the whole call.
    pub(crate) fn record(
        &mut self,
        batch: Batch,
        outcome: Outcome,
        listed: usize,
    ) -> Result<(), LehnzError> {
        let sent = batch.len();
        let (start, end) = (batch.start, batch.end);
        for rejected in batch.refused {
            self.reject(rejected, listed);
        }
        let settled = match outcome.result {
            Ok(accepted) => {
                self.accepted += accepted;
                self.unaccounted += sent.saturating_sub(accepted);
                true
            }
            // A wrong key fails every batch alike: stop at the first and say so.
            Err(err @ (LehnzError::Unauthorized { .. } | LehnzError::Forbidden { .. })) => {
                return Err(err)
            }
            Err(err) => {
                let settled = match outcome.stored {
                    Some(true) => {
                        self.dead_lettered += sent;
                        true
                    }
                    Some(false) => {
                        self.dead_letter_failed += sent;
                        false
                    }
                    // Not worth sending again as it is: rejected for good.
                    None => !err.is_transient(),
                };
                let mut reason = err.to_string();
                if outcome.stored == Some(false) {
                    reason.push_str("; the dead-letter sink failed to store the batch");
                }
                for (index, id) in batch.indices.into_iter().zip(batch.ids) {
                    self.reject(
                        Rejected {
                            index,
                            id,
                            reason: reason.clone(),
                        },
                        listed,
                    );
                }
                self.errors.push(err);
                settled
            }
        };
        if settled && self.settled == start {
            self.settled = end;
        }
        Ok(())
    }

    fn reject(&mut self, rejected: Rejected, listed: usize) {
        if self.rejected.len() < listed {
            self.rejected.push(rejected);
        } else {
            self.rejected_unlisted += 1;
        }
    }
}
