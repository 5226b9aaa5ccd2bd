//! Machine-local configuration (TOML).
