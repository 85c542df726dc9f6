//! The Lehnz recommendation API: a typed client for it and, behind the `sim` feature, a
//! [simulator](sim) of it.
//!
//! The simulator is a real HTTP server on 127.0.0.1 that enforces what Lehnz documents (keys,
//! limits, validation) and can misbehave on purpose, so an integration can be tested on one
//! machine.

#[cfg(feature = "sim")]
pub mod sim;
