//! The retry queue: attempts, back-off, bounces.
