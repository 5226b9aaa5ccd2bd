//! Sans-IO SMTP protocol pieces.

pub mod command;
pub mod reply;
