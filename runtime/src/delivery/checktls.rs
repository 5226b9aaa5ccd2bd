//! The TLS connectivity test (T8).
