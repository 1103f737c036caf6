//! JSON for call payloads: Elixir terms to JSON bytes (in the NIF, before
//! anything is sent) and JSON bytes to terms (in tokio tasks, off the
//! schedulers). Integers stay integers; map keys come back as binaries,
//! never atoms.

use std::borrow::Cow;

use rustler::types::map::MapIterator;
use rustler::{Binary, Encoder, Env, ListIterator, ResourceArc, Term, TermType};
use serde_json::Value;

use crate::atoms;
use crate::zero_copy::{self, Region};
pub use snakepit_core::json::parse;

/// Why a term cannot travel as JSON, with the path to the offending value.
#[derive(Debug)]
pub struct EncodeError {
    /// Path segments (`[2]`, `.key`), innermost first: each level adds its
    /// own as the error passes back up, so a successful encode builds none.
    path: Vec<String>,
    what: String,
    /// A struct with no native encoding: the Elixir side may convert it
    /// (`Snakepit.JSONCompat`) and try again.
    pub is_struct: bool,
}

impl EncodeError {
    pub fn message(&self) -> String {
        if self.path.is_empty() {
            self.what.clone()
        } else {
            let path: String = self.path.iter().rev().map(String::as_str).collect();
            format!("{} at {}", self.what, path)
        }
    }

    fn within(mut self, segment: String) -> Self {
        self.path.push(segment);
        self
    }
}

pub fn encode(term: Term) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(64);
    write_term(term, &mut out)?;
    Ok(out)
}

fn fail(what: impl Into<String>) -> EncodeError {
    EncodeError {
        path: Vec::new(),
        what: what.into(),
        is_struct: false,
    }
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("writing to a Vec cannot fail");
}

fn utf8(term: Term<'_>) -> Result<&str, EncodeError> {
    let bin: Binary = term
        .decode()
        .map_err(|_| fail("bitstring that is not a whole binary"))?;
    std::str::from_utf8(bin.as_slice()).map_err(|_| fail("binary that is not valid UTF-8"))
}

fn write_term(term: Term, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    match term.get_type() {
        TermType::Atom => {
            let name = term.atom_to_string().map_err(|_| fail("unreadable atom"))?;
            match name.as_str() {
                "nil" => out.extend_from_slice(b"null"),
                "true" => out.extend_from_slice(b"true"),
                "false" => out.extend_from_slice(b"false"),
                // The non-finite floats, as Python's json module writes and
                // reads them (the worker decodes them as floats).
                "nan" => out.extend_from_slice(b"NaN"),
                "infinity" => out.extend_from_slice(b"Infinity"),
                "neg_infinity" => out.extend_from_slice(b"-Infinity"),
                other => write_str(out, other),
            }
        }
        TermType::Binary => write_str(out, utf8(term)?),
        TermType::Integer => {
            let written = if let Ok(i) = term.decode::<i64>() {
                serde_json::to_writer(&mut *out, &i)
            } else if let Ok(u) = term.decode::<u64>() {
                serde_json::to_writer(&mut *out, &u)
            } else {
                // Beyond 64 bits: its digits (a valid JSON number; Python
                // reads it as an int).
                let big: rustler::BigInt = term.decode().map_err(|_| fail("unreadable integer"))?;
                out.extend_from_slice(big.to_string().as_bytes());
                return Ok(());
            };
            written.expect("writing to a Vec cannot fail");
        }
        TermType::Float => {
            let f: f64 = term.decode().map_err(|_| fail("unreadable float"))?;
            serde_json::to_writer(&mut *out, &f).expect("finite float");
        }
        TermType::List => {
            let items: ListIterator = term.decode().map_err(|_| fail("improper list"))?;
            write_seq(items, out)?;
        }
        TermType::Tuple => {
            let items =
                rustler::types::tuple::get_tuple(term).map_err(|_| fail("unreadable tuple"))?;
            write_seq(items.into_iter(), out)?;
        }
        TermType::Map => write_map(term, out)?,
        TermType::Pid => return Err(fail("a pid cannot be encoded as JSON")),
        TermType::Port => return Err(fail("a port cannot be encoded as JSON")),
        TermType::Ref => return Err(fail("a reference cannot be encoded as JSON")),
        TermType::Fun => return Err(fail("a function cannot be encoded as JSON")),
        TermType::Unknown => return Err(fail("a term of unknown type")),
    }
    Ok(())
}

fn write_seq<'a>(
    items: impl Iterator<Item = Term<'a>>,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    out.push(b'[');
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_term(item, out).map_err(|e| e.within(format!("[{i}]")))?;
    }
    out.push(b']');
    Ok(())
}

fn map_key(key: Term<'_>) -> Result<Cow<'_, str>, EncodeError> {
    match key.get_type() {
        TermType::Binary => Ok(Cow::Borrowed(utf8(key)?)),
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

fn write_map(term: Term, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    if let Ok(name) = term.map_get(rustler::types::atom::__struct__()) {
        if name == atoms::zero_copy_ref_module().to_term(term.get_env()) {
            return zero_copy::write_marker(term, out).map_err(fail);
        }
        let name = name.atom_to_string().unwrap_or_default();
        let name = name.strip_prefix("Elixir.").unwrap_or(&name);
        let mut err = fail(format!(
            "a %{name}{{}} struct cannot be encoded as JSON; implement JSON.Encoder for it, or \
             convert it to a map or string first"
        ));
        err.is_struct = true;
        return Err(err);
    }
    let iter = MapIterator::new(term).ok_or_else(|| fail("unreadable map"))?;
    out.push(b'{');
    for (i, (key, value)) in iter.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let key = map_key(key)?;
        write_str(out, &key);
        out.push(b':');
        write_term(value, out).map_err(|e| e.within(format!(".{key}")))?;
    }
    out.push(b'}');
    Ok(())
}

/// Builds the Elixir term for a JSON value: objects become maps with
/// binary keys, `null` becomes `nil`.
pub fn to_term<'a>(env: Env<'a>, value: &Value) -> Term<'a> {
    to_term_with(env, value, &mut std::iter::empty())
}

/// `to_term`, with each zero-copy marker replaced by the next of `regions`
/// (`zero_copy::adopt_all` of the same value), as a `%Snakepit.ZeroCopyRef{}`.
pub fn to_term_with<'a>(
    env: Env<'a>,
    value: &Value,
    regions: &mut dyn Iterator<Item = ResourceArc<Region>>,
) -> Term<'a> {
    match value {
        Value::Null => atoms::nil().encode(env),
        Value::Bool(b) => b.encode(env),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.encode(env)
            } else if let Some(u) = n.as_u64() {
                u.encode(env)
            } else {
                n.as_f64().unwrap_or(f64::NAN).encode(env)
            }
        }
        Value::String(s) => s.as_str().encode(env),
        Value::Array(items) => {
            let terms: Vec<Term<'a>> = items
                .iter()
                .map(|v| to_term_with(env, v, regions))
                .collect();
            terms.encode(env)
        }
        Value::Object(map) => {
            if zero_copy::marker_body(map).is_some() {
                if let Some(region) = regions.next() {
                    return zero_copy::ref_term(env, region);
                }
            }
            if let Some(number) = special_number(env, map) {
                return number;
            }
            let keys: Vec<Term<'a>> = map.keys().map(|k| k.as_str().encode(env)).collect();
            let values: Vec<Term<'a>> = map
                .values()
                .map(|v| to_term_with(env, v, regions))
                .collect();
            Term::map_from_term_arrays(env, &keys, &values)
                .unwrap_or_else(|_| rustler::types::map::map_new(env))
        }
    }
}

/// Numbers JSON cannot hold, as the worker's serializer marks them: an
/// integer beyond 64 bits (`{"__snakepit_int__": "<digits>"}`) becomes an
/// Elixir integer, a non-finite float (`{"__snakepit_float__": "nan" |
/// "infinity" | "neg_infinity"}`) the atom of that name.
fn special_number<'a>(env: Env<'a>, map: &serde_json::Map<String, Value>) -> Option<Term<'a>> {
    if map.len() != 1 {
        return None;
    }
    let (key, value) = map.iter().next()?;
    let text = value.as_str()?;
    match key.as_str() {
        "__snakepit_int__" => text
            .parse::<rustler::BigInt>()
            .ok()
            .map(|big| big.encode(env)),
        "__snakepit_float__" => match text {
            "nan" => Some(atoms::nan().encode(env)),
            "infinity" => Some(atoms::infinity().encode(env)),
            "neg_infinity" => Some(atoms::neg_infinity().encode(env)),
            _ => None,
        },
        _ => None,
    }
}

/// A worker's JSON reply as a term builder: its zero-copy regions are
/// adopted now (off the schedulers), the term is built in the reply env.
pub fn reply_term(raw: &[u8], value: Value) -> Result<crate::reply::Payload, String> {
    // Only a reply that names the marker key can hold a region: most do not,
    // and a byte search is cheaper than walking the parsed value.
    let regions = if zero_copy::mentions_marker(raw) {
        zero_copy::adopt_all(&value)?
    } else {
        Vec::new()
    };
    Ok(Box::new(move |env| {
        to_term_with(env, &value, &mut regions.into_iter())
    }))
}
