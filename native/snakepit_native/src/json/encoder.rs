//! Elixir terms to JSON bytes, in the NIF, before anything is sent.
//!
//! The encoder does not recurse on the data: it keeps an explicit stack of
//! open containers, so a term nested 100,000 deep costs heap, never native
//! stack. A value nested deeper than `max_nesting_depth`, or an integer
//! longer than `max_integer_digits`, is refused with its path; encoding
//! also stops as soon as the output passes `max_message_bytes`, checking
//! each binary's size before it reads it, so an oversized argument is
//! refused before the work of encoding it.

use std::borrow::Cow;

use rustler::types::map::MapIterator;
use rustler::{Binary, Term, TermType};
use snakepit_core::json::{self as core, Limits};

use crate::atoms;
use crate::wire::limits::max_message_bytes;
use crate::zero_copy::marker;

/// What kind of term cannot travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Problem {
    /// A term JSON cannot hold (a pid, invalid UTF-8, ...).
    Invalid,
    /// A struct with no native encoding.
    Struct,
    /// Past `max_nesting_depth` or `max_integer_digits`.
    Limit,
    /// The output passed its byte budget.
    TooLarge,
}

/// Why a term cannot travel as JSON, with the path to the offending value.
#[derive(Debug)]
pub struct EncodeError {
    path: String,
    what: String,
    problem: Problem,
    /// A struct with no native encoding: the Elixir side may convert it
    /// (`Snakepit.JSONCompat`) and try again.
    pub is_struct: bool,
}

impl EncodeError {
    pub fn message(&self) -> String {
        match self.problem {
            // These name their path themselves.
            Problem::Limit | Problem::TooLarge => self.what.clone(),
            _ if self.path.is_empty() => self.what.clone(),
            _ => format!("{} at {}", self.what, self.path),
        }
    }

    /// The output passed its byte budget (`max_message_bytes`).
    pub fn is_too_large(&self) -> bool {
        self.problem == Problem::TooLarge
    }
}

/// Encodes `term` under the configured limits, within `max_message_bytes`.
pub fn encode(term: Term) -> Result<Vec<u8>, EncodeError> {
    encode_within(term, max_message_bytes())
}

/// Encodes `term` under the configured limits; the output may take at
/// most `budget` bytes.
pub fn encode_within(term: Term, budget: usize) -> Result<Vec<u8>, EncodeError> {
    let mut encoder = JsonEncoder {
        out: Vec::with_capacity(64),
        stack: Vec::new(),
        limits: Limits::current(),
        budget,
    };
    encoder.run(term)?;
    Ok(encoder.out)
}

/// An open container being written.
enum Frame<'a> {
    /// `rest`: the cells not yet written (walked cell by cell, so an
    /// improper tail is an error, never a panic of rustler's iterator).
    List {
        rest: Term<'a>,
        next: usize,
    },
    Tuple {
        items: Vec<Term<'a>>,
        next: usize,
    },
    /// `key`: the key of the value being written (none while the key
    /// itself is read). The iterator is boxed: it is several times the
    /// size of the other variants.
    Map {
        items: Box<MapIterator<'a>>,
        next: usize,
        key: Option<Term<'a>>,
    },
}

impl Frame<'_> {
    /// The path segment of the value being written inside this container.
    fn segment(&self) -> Option<String> {
        match self {
            Frame::List { next, .. } | Frame::Tuple { next, .. } => {
                Some(core::index_segment(next.saturating_sub(1)))
            }
            Frame::Map { key, .. } => key
                .and_then(|k| map_key(k).ok())
                .map(|k| core::key_segment(&k)),
        }
    }
}

/// What to write next.
enum Step<'a> {
    Value(Term<'a>),
    Entry(Term<'a>, Term<'a>),
    Close(u8),
    /// A list whose tail is not a list.
    Improper,
    Done,
}

struct JsonEncoder<'a> {
    out: Vec<u8>,
    stack: Vec<Frame<'a>>,
    limits: Limits,
    budget: usize,
}

fn fail(what: impl Into<String>) -> (Problem, String) {
    (Problem::Invalid, what.into())
}

impl<'a> JsonEncoder<'a> {
    fn run(&mut self, term: Term<'a>) -> Result<(), EncodeError> {
        let mut next = Some(term);
        loop {
            if let Some(term) = next.take() {
                self.value(term).map_err(|e| self.error(e))?;
            }
            if self.out.len() > self.budget {
                return Err(self.too_large());
            }
            match self.step() {
                Step::Done => return Ok(()),
                Step::Improper => {
                    return Err(self.error(fail("an improper list cannot be encoded as JSON")))
                }
                Step::Value(term) => next = Some(term),
                Step::Close(byte) => {
                    self.out.push(byte);
                    self.stack.pop();
                }
                Step::Entry(key, value) => {
                    let name = map_key(key).map_err(|e| self.error(e))?;
                    write_str(&mut self.out, &name);
                    self.out.push(b':');
                    if let Some(Frame::Map { key: current, .. }) = self.stack.last_mut() {
                        *current = Some(key);
                    }
                    next = Some(value);
                }
            }
        }
    }

    /// Advances the innermost open container, writing the separator.
    fn step(&mut self) -> Step<'a> {
        let Some(frame) = self.stack.last_mut() else {
            return Step::Done;
        };
        let (first, step) = match frame {
            Frame::List { rest, next } => {
                if rest.is_empty_list() {
                    return Step::Close(b']');
                }
                match rest.list_get_cell() {
                    Ok((item, tail)) => {
                        *rest = tail;
                        *next += 1;
                        (*next == 1, Step::Value(item))
                    }
                    Err(_) => return Step::Improper,
                }
            }
            Frame::Tuple { items, next } => match items.get(*next) {
                Some(&item) => {
                    *next += 1;
                    (*next == 1, Step::Value(item))
                }
                None => return Step::Close(b']'),
            },
            Frame::Map { items, next, key } => match items.next() {
                Some((k, v)) => {
                    *next += 1;
                    *key = None;
                    (*next == 1, Step::Entry(k, v))
                }
                None => return Step::Close(b'}'),
            },
        };
        if !first {
            self.out.push(b',');
        }
        step
    }

    fn path(&self) -> String {
        let segments: Vec<String> = self.stack.iter().filter_map(Frame::segment).collect();
        core::format_path(&segments)
    }

    fn error(&self, (problem, what): (Problem, String)) -> EncodeError {
        EncodeError {
            path: self.path(),
            what,
            problem,
            is_struct: problem == Problem::Struct,
        }
    }

    fn too_large(&self) -> EncodeError {
        self.error(self.too_large_parts())
    }

    fn too_large_parts(&self) -> (Problem, String) {
        let at = match self.path() {
            p if p.is_empty() => String::new(),
            p => format!(" (refused at {p}, before encoding the rest)"),
        };
        (
            Problem::TooLarge,
            format!(
                "larger than max_message_bytes ({}){at}",
                max_message_bytes()
            ),
        )
    }

    /// Opens a container, if the depth allows one more level.
    fn open(&mut self, frame: Frame<'a>, byte: u8) -> Result<(), (Problem, String)> {
        if self.stack.len() >= self.limits.depth {
            return Err((
                Problem::Limit,
                core::too_deep(&self.path(), self.limits.depth),
            ));
        }
        self.out.push(byte);
        self.stack.push(frame);
        Ok(())
    }

    /// Writes a scalar, or opens a container.
    fn value(&mut self, term: Term<'a>) -> Result<(), (Problem, String)> {
        match term.get_type() {
            TermType::Atom => {
                let name = term.atom_to_string().map_err(|_| fail("unreadable atom"))?;
                match name.as_str() {
                    "nil" => self.out.extend_from_slice(b"null"),
                    "true" => self.out.extend_from_slice(b"true"),
                    "false" => self.out.extend_from_slice(b"false"),
                    // The non-finite floats, as Python's json module writes
                    // and reads them (the worker decodes them as floats).
                    "nan" => self.out.extend_from_slice(b"NaN"),
                    "infinity" => self.out.extend_from_slice(b"Infinity"),
                    "neg_infinity" => self.out.extend_from_slice(b"-Infinity"),
                    other => write_str(&mut self.out, other),
                }
            }
            TermType::Binary => {
                let bin: Binary = term
                    .decode()
                    .map_err(|_| fail("bitstring that is not a whole binary"))?;
                // Refused by its size before a byte of it is read.
                let room = self.budget.saturating_sub(self.out.len());
                if bin.len().saturating_add(2) > room
                    || (bin.len().saturating_mul(6) > room && escaped_len(bin.as_slice()) > room)
                {
                    return Err(self.too_large_parts());
                }
                let text = std::str::from_utf8(bin.as_slice())
                    .map_err(|_| fail("binary that is not valid UTF-8"))?;
                write_str(&mut self.out, text);
            }
            TermType::Integer => {
                if let Ok(i) = term.decode::<i64>() {
                    self.out.extend_from_slice(i.to_string().as_bytes());
                } else if let Ok(u) = term.decode::<u64>() {
                    self.out.extend_from_slice(u.to_string().as_bytes());
                } else {
                    self.big_int(term)?;
                }
            }
            TermType::Float => {
                let f: f64 = term.decode().map_err(|_| fail("unreadable float"))?;
                serde_json::to_writer(&mut self.out, &f).expect("finite float");
            }
            TermType::List => {
                self.open(
                    Frame::List {
                        rest: term,
                        next: 0,
                    },
                    b'[',
                )?;
            }
            TermType::Tuple => {
                let items =
                    rustler::types::tuple::get_tuple(term).map_err(|_| fail("unreadable tuple"))?;
                self.open(Frame::Tuple { items, next: 0 }, b'[')?;
            }
            TermType::Map => {
                if let Ok(name) = term.map_get(rustler::types::atom::__struct__()) {
                    return self.write_struct(term, name);
                }
                let items = MapIterator::new(term).ok_or_else(|| fail("unreadable map"))?;
                self.open(
                    Frame::Map {
                        items: Box::new(items),
                        next: 0,
                        key: None,
                    },
                    b'{',
                )?;
            }
            TermType::Pid => return Err(fail("a pid cannot be encoded as JSON")),
            TermType::Port => return Err(fail("a port cannot be encoded as JSON")),
            TermType::Ref => return Err(fail("a reference cannot be encoded as JSON")),
            TermType::Fun => return Err(fail("a function cannot be encoded as JSON")),
            TermType::Unknown => return Err(fail("a term of unknown type")),
        }
        Ok(())
    }

    /// An integer beyond 64 bits, as its digits (a valid JSON number;
    /// Python reads it as an int), when it has at most `max_integer_digits`.
    /// Its size is judged from its bits before any decimal conversion (which
    /// is quadratic: the VM's largest integers have 1.3 million digits).
    fn big_int(&mut self, term: Term<'a>) -> Result<(), (Problem, String)> {
        let big: rustler::BigInt = term.decode().map_err(|_| fail("unreadable integer"))?;
        let limit = self.limits.int_digits;
        let (at_least, _) = core::decimal_digit_bounds(big.bits());
        if at_least > limit as u64 {
            let at = match self.path() {
                p if p.is_empty() => "the top".to_string(),
                p => p,
            };
            return Err((
                Problem::Limit,
                format!(
                    "an integer of at least {at_least} digits at {at} is longer than \
                     max_integer_digits ({limit})"
                ),
            ));
        }
        let digits = big.to_string();
        core::check_int_text(&digits, limit, &self.path()).map_err(|m| (Problem::Limit, m))?;
        self.out.extend_from_slice(digits.as_bytes());
        Ok(())
    }

    fn write_struct(&mut self, term: Term<'a>, name: Term<'a>) -> Result<(), (Problem, String)> {
        if name == atoms::zero_copy_ref_module().to_term(term.get_env()) {
            return marker::write_marker(term, &mut self.out).map_err(|e| (Problem::Invalid, e));
        }
        let name = name.atom_to_string().unwrap_or_default();
        let name = name.strip_prefix("Elixir.").unwrap_or(&name);
        Err((
            Problem::Struct,
            format!(
                "a %{name}{{}} struct cannot be encoded as JSON; implement JSON.Encoder for \
                 it, or convert it to a map or string first"
            ),
        ))
    }
}

/// How many bytes `bytes` take as a JSON string, quotes included (as
/// serde_json escapes: two bytes for the short escapes, six for other
/// control characters).
fn escaped_len(bytes: &[u8]) -> usize {
    bytes
        .iter()
        .map(|&b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum::<usize>()
        + 2
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("writing to a Vec cannot fail");
}

fn map_key(key: Term<'_>) -> Result<Cow<'_, str>, (Problem, String)> {
    match key.get_type() {
        TermType::Binary => {
            let bin: Binary = key
                .decode()
                .map_err(|_| fail("bitstring that is not a whole binary"))?;
            std::str::from_utf8(bin.as_slice())
                .map(Cow::Borrowed)
                .map_err(|_| fail("binary that is not valid UTF-8"))
        }
        TermType::Atom => key
            .atom_to_string()
            .map(Cow::Owned)
            .map_err(|_| fail("unreadable atom key")),
        TermType::Integer => key
            .decode::<i64>()
            .map(|i| Cow::Owned(i.to_string()))
            .map_err(|_| fail("integer key outside the 64-bit range")),
        _ => Err(fail("map key that is not a string, atom or integer")),
    }
}

#[cfg(test)]
mod tests {
    //! These tests run in the NIF crate's own test binary, which links
    //! thanks to `test_shims.rs` (the `enif_*` functions the VM would
    //! supply). What runs here must not touch an `Env` or a term; the
    //! term-walking halves are exercised by the ExUnit suites.
    use super::escaped_len;
    use proptest::prelude::*;

    const CASES: u32 = 512;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(CASES))]

        #[test]
        fn escaped_length_matches_serde_json(s in ".{0,64}") {
            prop_assert_eq!(escaped_len(s.as_bytes()), serde_json::to_vec(&s).unwrap().len());
        }
    }
}
