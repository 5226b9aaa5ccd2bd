//! Durable message storage.
