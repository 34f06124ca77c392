//! Top-level orchestration.
