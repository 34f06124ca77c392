//! Command-line flags (clap derive).
