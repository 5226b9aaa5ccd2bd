//! SMTP reply parsing (sans-IO).
