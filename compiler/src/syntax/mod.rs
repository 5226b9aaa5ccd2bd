//! From text to syntax tree: [`lexer`] (nom) splits the text into tokens,
//! [`parser`] builds the [`crate::ast`] and reports syntax errors,
//! [`value`] (nom) reads the values inside words (durations, addresses,
//! routes), [`suggest`] finds the keyword a typo meant.

pub mod lexer;
pub mod parser;
pub mod suggest;
pub mod value;

pub use parser::parse;
