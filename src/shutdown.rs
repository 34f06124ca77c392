//! Signals and the root cancellation token.
