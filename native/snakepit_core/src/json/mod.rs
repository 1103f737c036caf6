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

mod parser;
mod path;
mod walk;

#[cfg(test)]
mod tests;

use std::fmt;
use std::ops::Deref;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;

pub use path::{format_path, index_segment, key_segment};
pub use walk::{dispose, tagged_objects, user_depth_violation};

/// `max_nesting_depth` when none is configured. Deep enough for any real
/// document (Jackson's default limit is the same), shallow enough that the
/// recursive JSON codecs of the Python worker stay well within a thread's
/// stack, and that the few walks outside this module that still recurse
/// (a zero-copy ref's metadata) fit a dirty scheduler's 320 KB stack.
pub const DEFAULT_MAX_DEPTH: usize = 1000;

/// The largest `max_nesting_depth` accepted. Measured on this crate's
/// release build, cloning or dropping a `serde_json::Value` recursively
/// costs ~130 bytes of stack per level: 2,000 levels (plus the slack) fit a
/// dirty scheduler's 320 KB stack with room to spare.
pub const MAX_DEPTH_CEILING: usize = 2000;

/// Levels of JSON Snakepit's own wrappers may add over a value's depth: a
/// zero-copy marker is three deep (marker, body, shape) where its value is a
/// scalar; a number marker one.
pub const WRAPPER_SLACK: usize = 8;

/// `max_integer_digits` when none is configured: Python's default limit on
/// int/str conversion (`sys.int_info.default_max_str_digits`), so a worker
/// run outside Snakepit behaves the same.
pub const DEFAULT_MAX_INT_DIGITS: usize = 4300;

/// Bounds of `max_integer_digits`: every 64-bit integer fits the lower one;
/// the upper keeps the (quadratic) decimal conversions of the largest
/// accepted integer in milliseconds.
pub const MIN_INT_DIGITS: usize = 20;
pub const MAX_INT_DIGITS_CEILING: usize = 100_000;

/// The key of an integer beyond 64 bits, as the worker writes it.
pub const INT_KEY: &str = "__snakepit_int__";
/// The key of a non-finite float, as the worker writes it.
pub const FLOAT_KEY: &str = "__snakepit_float__";
/// The key of a zero-copy marker.
pub const ZERO_COPY_KEY: &str = "__snakepit_zero_copy__";

static MAX_DEPTH: AtomicUsize = AtomicUsize::new(DEFAULT_MAX_DEPTH);
static MAX_INT_DIGITS: AtomicUsize = AtomicUsize::new(DEFAULT_MAX_INT_DIGITS);

/// The limits values are read and written under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// `max_nesting_depth`.
    pub depth: usize,
    /// `max_integer_digits`.
    pub int_digits: usize,
}

impl Limits {
    /// The configured limits.
    pub fn current() -> Limits {
        Limits {
            depth: MAX_DEPTH.load(Ordering::Relaxed),
            int_digits: MAX_INT_DIGITS.load(Ordering::Relaxed),
        }
    }

    /// How deep the JSON itself may be: the depth plus the wrappers' slack.
    pub fn json_depth(&self) -> usize {
        self.depth + WRAPPER_SLACK
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            depth: DEFAULT_MAX_DEPTH,
            int_digits: DEFAULT_MAX_INT_DIGITS,
        }
    }
}

/// Sets both limits (clamped to their bounds) and returns what applies.
pub fn set_limits(depth: usize, int_digits: usize) -> Limits {
    let depth = depth.clamp(1, MAX_DEPTH_CEILING);
    let int_digits = int_digits.clamp(MIN_INT_DIGITS, MAX_INT_DIGITS_CEILING);
    MAX_DEPTH.store(depth, Ordering::Relaxed);
    MAX_INT_DIGITS.store(int_digits, Ordering::Relaxed);
    Limits { depth, int_digits }
}

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

/// Bounds on the decimal digits of an integer whose magnitude has `bits`
/// significant bits: `(at_least, at_most)`. An integer is known to fit a
/// digit limit without converting it when `at_most` does, and known not to
/// when `at_least` does not; only in between must its digits be counted.
pub fn decimal_digit_bounds(bits: u64) -> (u64, u64) {
    if bits == 0 {
        return (1, 1);
    }
    const LOG10_2: f64 = std::f64::consts::LOG10_2;
    // 2^(bits-1) <= n < 2^bits; the margins absorb floating-point error.
    let low = (((bits - 1) as f64) * LOG10_2 - 1e-6).floor().max(0.0) as u64 + 1;
    let high = ((bits as f64) * LOG10_2 + 1e-6).floor() as u64 + 1;
    (low, high)
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
