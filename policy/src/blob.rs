//! Signed blob format (in progress).
