//! SMTP command parsing (sans-IO).
