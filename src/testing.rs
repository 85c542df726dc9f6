//! Helpers shared by the crate's unit tests and loom models.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Wake;

/// A waker's count of its wakes: `Waker::from(Arc::new(Count(AtomicUsize::new(0))))`.
#[derive(Debug, Default)]
pub(crate) struct Count(pub(crate) AtomicUsize);

impl Wake for Count {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}
