//! JSON for call payloads: Elixir terms to JSON bytes (`encoder`, in the
//! NIF, before anything is sent) and parsed JSON to terms (`term`, in tokio
//! tasks and the lane reader, off the callers' schedulers).
//!
//! Neither direction recurses on the data: both keep an explicit stack of
//! open containers, so a term or a reply nested 100,000 deep costs heap,
//! never native stack (a dirty scheduler has 320 KB of it). Both apply the
//! same limits (`snakepit_core::json::Limits`): a value nested deeper than
//! `max_nesting_depth`, or an integer longer than `max_integer_digits`, is
//! refused with its path.

mod encoder;
pub mod term;

use snakepit_core::json as core;

pub use encoder::{encode, encode_within};
pub use snakepit_core::json::{parse, Error};
pub use term::to_term;

/// Sets `max_nesting_depth` and `max_integer_digits` (clamped to their
/// bounds, see `snakepit_core::json`); returns `{depth, digits}` as applied.
#[rustler::nif]
fn set_value_limits(depth: usize, int_digits: usize) -> (usize, usize) {
    let applied = core::set_limits(depth, int_digits);
    (applied.depth, applied.int_digits)
}
