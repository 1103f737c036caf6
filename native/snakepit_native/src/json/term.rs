//! Parsed JSON to Elixir terms, in tokio tasks and the lane reader, off
//! the callers' schedulers. Integers stay integers; map keys come back as
//! binaries, never atoms. Containers are built bottom-up from an explicit
//! stack, so a value nested 100,000 deep costs heap, never native stack.

use rustler::{Encoder, Env, Term};
use serde_json::{Map, Value};
use snakepit_core::json::{self as core, Limits};

use crate::atoms;

/// Builds the Elixir term for a JSON value: objects become maps with
/// binary keys, `null` becomes `nil`.
pub fn to_term<'a>(env: Env<'a>, value: &Value) -> Term<'a> {
    to_term_with(env, value, &mut |_| None)
}

/// A container whose term is being built.
enum Building<'v, 'a> {
    List {
        items: std::slice::Iter<'v, Value>,
        terms: Vec<Term<'a>>,
    },
    Map {
        entries: serde_json::map::Iter<'v>,
        keys: Vec<Term<'a>>,
        values: Vec<Term<'a>>,
    },
}

/// `to_term`, with each object for which `replace` gives a term replaced
/// by that term (`zero_copy::refs` puts regions in place of their markers
/// this way). Objects are offered in the order a depth-first walk meets
/// them.
pub fn to_term_with<'a>(
    env: Env<'a>,
    value: &Value,
    replace: &mut dyn FnMut(&Map<String, Value>) -> Option<Term<'a>>,
) -> Term<'a> {
    let mut stack: Vec<Building<'_, 'a>> = Vec::new();
    let mut current = value;
    loop {
        // The term of `current`, unless it opens a container.
        let mut done = match current {
            Value::Null => Some(atoms::nil().encode(env)),
            Value::Bool(b) => Some(b.encode(env)),
            Value::Number(n) => Some(number_term(env, n)),
            Value::String(s) => Some(s.as_str().encode(env)),
            Value::Array(items) => {
                stack.push(Building::List {
                    items: items.iter(),
                    terms: Vec::with_capacity(items.len()),
                });
                None
            }
            Value::Object(map) => {
                if let Some(term) = replace(map) {
                    Some(term)
                } else if let Some(number) = special_number(env, map) {
                    Some(number)
                } else {
                    stack.push(Building::Map {
                        entries: map.iter(),
                        keys: Vec::with_capacity(map.len()),
                        values: Vec::with_capacity(map.len()),
                    });
                    None
                }
            }
        };
        // Hand finished terms to their containers until one has another
        // value to build.
        loop {
            if let Some(term) = done.take() {
                match stack.last_mut() {
                    None => return term,
                    Some(Building::List { terms, .. }) => terms.push(term),
                    Some(Building::Map { values, .. }) => values.push(term),
                }
            }
            let next = match stack.last_mut() {
                Some(Building::List { items, .. }) => items.next(),
                Some(Building::Map { entries, keys, .. }) => entries.next().map(|(k, v)| {
                    keys.push(k.as_str().encode(env));
                    v
                }),
                None => unreachable!("the top value returns above"),
            };
            match next {
                Some(v) => {
                    current = v;
                    break;
                }
                None => {
                    done = Some(match stack.pop() {
                        Some(Building::List { terms, .. }) => terms.encode(env),
                        Some(Building::Map { keys, values, .. }) => {
                            Term::map_from_term_arrays(env, &keys, &values)
                                .unwrap_or_else(|_| rustler::types::map::map_new(env))
                        }
                        None => unreachable!("a container was open"),
                    });
                }
            }
        }
    }
}

fn number_term<'a>(env: Env<'a>, n: &serde_json::Number) -> Term<'a> {
    if let Some(i) = n.as_i64() {
        i.encode(env)
    } else if let Some(u) = n.as_u64() {
        u.encode(env)
    } else {
        n.as_f64().unwrap_or(f64::NAN).encode(env)
    }
}

/// Numbers JSON cannot hold, as the worker's serializer marks them: an
/// integer beyond 64 bits (`{"__snakepit_int__": "<digits>"}`) becomes an
/// Elixir integer, a non-finite float (`{"__snakepit_float__": "nan" |
/// "infinity" | "neg_infinity"}`) the atom of that name. The digits were
/// held to `max_integer_digits` when the JSON was parsed; longer ones (a
/// value that was not parsed here) stay a map.
fn special_number<'a>(env: Env<'a>, map: &Map<String, Value>) -> Option<Term<'a>> {
    if map.len() != 1 {
        return None;
    }
    let (key, value) = map.iter().next()?;
    let text = value.as_str()?;
    match key.as_str() {
        core::INT_KEY => {
            let limit = Limits::current().int_digits;
            core::check_int_text(text, limit, "").ok()?;
            text.parse::<rustler::BigInt>()
                .ok()
                .map(|big| big.encode(env))
        }
        core::FLOAT_KEY => match text {
            "nan" => Some(atoms::nan().encode(env)),
            "infinity" => Some(atoms::infinity().encode(env)),
            "neg_infinity" => Some(atoms::neg_infinity().encode(env)),
            _ => None,
        },
        _ => None,
    }
}
