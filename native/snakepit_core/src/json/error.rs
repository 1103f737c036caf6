//! Why JSON could not be read, and the messages naming a limit and the
//! path of the value past it.

use std::fmt;

/// Why JSON could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// Not JSON (what was wrong and where).
    Syntax(String),
    /// Valid JSON beyond a limit: the message names the limit and the path.
    Limit(String),
}

impl Error {
    pub fn message(&self) -> &str {
        match self {
            Error::Syntax(m) | Error::Limit(m) => m,
        }
    }

    pub fn is_limit(&self) -> bool {
        matches!(self, Error::Limit(_))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for Error {}

/// The message of a value nested past `limit`, at `path`.
pub fn too_deep(path: &str, limit: usize) -> String {
    let at = if path.is_empty() { "the top" } else { path };
    format!("a value at {at} is nested deeper than max_nesting_depth ({limit})")
}

/// The message of an integer of `digits` digits past `limit`, at `path`.
pub fn too_many_digits(path: &str, digits: usize, limit: usize) -> String {
    let at = if path.is_empty() { "the top" } else { path };
    format!("an integer of {digits} digits at {at} is longer than max_integer_digits ({limit})")
}

/// Checks the digits of an integer written as text (an optional `-`, then
/// digits) against `limit`.
pub fn check_int_text(text: &str, limit: usize, path: &str) -> Result<(), String> {
    let digits = text.strip_prefix('-').unwrap_or(text).len();
    if digits > limit {
        Err(too_many_digits(path, digits, limit))
    } else {
        Ok(())
    }
}
