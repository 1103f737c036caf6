//! The two limits on JSON values (`max_nesting_depth`,
//! `max_integer_digits`) with their defaults and bounds, and the keys of
//! Snakepit's own wrappers, which the limits count as the scalars they
//! stand for.

use std::sync::atomic::{AtomicUsize, Ordering};

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
