//! JSON of call payloads, read without recursion on the data.
//!
//! Everything that crosses between the VM and a worker as JSON (arguments,
//! results, stream chunks, tool-bridge calls, telemetry envelopes) is read
//! here. Nothing in this module recurses on the data: the parser keeps its
//! own stack of open containers, the walks over parsed values keep explicit
//! stacks, and a deep value is taken apart iteratively when it is dropped
//! (`Parsed`). A worker or a user can make the data as deep as they like;
//! the native stack of the thread that reads it (a dirty scheduler has
//! 320 KB) never grows with it.
//!
//! Two limits apply, one documented setting each (`config :snakepit`,
//! set once at start through `set_limits`):
//!
//! * `max_nesting_depth` (default 1000): how deep values may nest. Depth
//!   counts containers (lists, tuples, maps / arrays, objects) from the top,
//!   the outermost being 1; scalars add nothing. Snakepit's own wrappers
//!   (`{"__snakepit_int__": ..}`, `{"__snakepit_float__": ..}`, zero-copy
//!   markers) count as the scalars they stand for. On the wire the JSON may
//!   be `WRAPPER_SLACK` levels deeper than that, for those wrappers; the
//!   parser refuses anything deeper before it builds it.
//! * `max_integer_digits` (default 4300, Python's own default for int/str
//!   conversion): the longest integer, in decimal digits, either way.

mod error;
mod limits;
mod parser;
mod path;
mod walk;

#[cfg(test)]
mod tests;

use std::ops::Deref;

use serde_json::Value;

pub use error::{check_int_text, too_deep, too_many_digits, Error};
pub use limits::{
    decimal_digit_bounds, set_limits, Limits, DEFAULT_MAX_DEPTH, DEFAULT_MAX_INT_DIGITS, FLOAT_KEY,
    INT_KEY, MAX_DEPTH_CEILING, MAX_INT_DIGITS_CEILING, MIN_INT_DIGITS, WRAPPER_SLACK,
    ZERO_COPY_KEY,
};
pub use path::{format_path, index_segment, key_segment};
pub use walk::{dispose, tagged_objects, user_depth_violation};

/// Values at most this deep are dropped the ordinary (recursive) way: a few
/// dozen frames of drop glue cost nothing.
const SHALLOW: usize = 64;

/// A parsed JSON value, checked against the limits. It derefs to the
/// `Value`; dropping it takes a deep value apart without recursion.
#[derive(Debug)]
pub struct Parsed {
    value: Value,
    depth: usize,
}

impl Parsed {
    /// Wraps a value built elsewhere, `depth` deep at most.
    pub fn new(value: Value, depth: usize) -> Parsed {
        Parsed { value, depth }
    }

    /// How deep the JSON is (containers, the outermost being 1).
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// The value, to own; the caller drops it (`dispose` when it may be
    /// deep).
    pub fn into_value(mut self) -> Value {
        std::mem::take(&mut self.value)
    }
}

impl Deref for Parsed {
    type Target = Value;

    fn deref(&self) -> &Value {
        &self.value
    }
}

impl Drop for Parsed {
    fn drop(&mut self) {
        if self.depth > SHALLOW {
            dispose(std::mem::take(&mut self.value));
        }
    }
}

/// Parses JSON bytes under the configured limits. Empty input is `null`.
pub fn parse(bytes: &[u8]) -> Result<Parsed, Error> {
    parse_with(bytes, Limits::current())
}

/// Parses JSON bytes under `limits`: the JSON may be `WRAPPER_SLACK` levels
/// deeper than `limits.depth` (refused as it is read, before anything
/// deeper is built); the value, wrappers counted as scalars, may not; no
/// number marker may hold more than `limits.int_digits` digits.
pub fn parse_with(bytes: &[u8], limits: Limits) -> Result<Parsed, Error> {
    if bytes.is_empty() {
        return Ok(Parsed::new(Value::Null, 0));
    }
    let (value, depth) = parser::parse(bytes, limits.json_depth(), limits.depth)?;
    let parsed = Parsed::new(value, depth);
    if depth > limits.depth {
        if let Some(path) = user_depth_violation(&parsed, limits.depth) {
            return Err(Error::Limit(too_deep(&path, limits.depth)));
        }
    }
    if mentions(bytes, INT_KEY) {
        walk::check_int_markers(&parsed, limits.int_digits).map_err(Error::Limit)?;
    }
    Ok(parsed)
}

/// Whether `bytes` hold `key` as a JSON string (`"key"`) anywhere.
pub fn mentions(bytes: &[u8], key: &str) -> bool {
    if key == INT_KEY {
        static FINDER: once_cell::sync::Lazy<memchr::memmem::Finder<'static>> =
            once_cell::sync::Lazy::new(|| memchr::memmem::Finder::new(b"\"__snakepit_int__\""));
        return FINDER.find(bytes).is_some();
    }
    let needle = format!("\"{key}\"");
    memchr::memmem::find(bytes, needle.as_bytes()).is_some()
}
