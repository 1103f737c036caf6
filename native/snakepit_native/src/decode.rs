//! Reading Elixir terms with messages that say what was wrong: the one set
//! of map-decoding helpers the crate uses (call options, bridge replies).

use std::collections::HashMap;

use rustler::types::map::MapIterator;
use rustler::{Atom, Decoder, Term};

use crate::atoms;

/// The value under the atom key `key` in the map `term` (`what` names the
/// map). `key` is a fixed name in this crate, never data.
pub fn field<'a>(term: Term<'a>, key: &str, what: &str) -> Result<Term<'a>, String> {
    let atom = Atom::from_str(term.get_env(), key).map_err(|_| "bad key name".to_string())?;
    if !term.is_map() {
        return Err(format!("{what} must be a map"));
    }
    term.map_get(atom)
        .map_err(|_| format!("{what} has no :{key} key"))
}

/// The optional value under `key`: absent or nil is `None`.
pub fn opt<'a, T: Decoder<'a>>(map: Term<'a>, key: Atom, name: &str) -> Result<Option<T>, String> {
    match map.map_get(key) {
        Ok(v) if v == atoms::nil().to_term(map.get_env()) => Ok(None),
        Ok(v) => v
            .decode()
            .map(Some)
            .map_err(|_| format!("option {name} has the wrong type")),
        Err(_) => Ok(None),
    }
}

/// A UTF-8 string.
pub fn string(term: Term, what: &str) -> Result<String, String> {
    term.decode::<String>()
        .map_err(|_| format!("{what} must be a UTF-8 string"))
}

/// A map with string (or atom) keys, each value read by `value`.
pub fn string_keyed<'a, V>(
    term: Term<'a>,
    what: &str,
    value: impl Fn(Term<'a>) -> Option<V>,
) -> Result<HashMap<String, V>, String> {
    let iter = MapIterator::new(term).ok_or_else(|| format!("{what} must be a map"))?;
    iter.map(|(k, v)| {
        let name: String = if k.is_atom() {
            k.atom_to_string()
                .map_err(|_| format!("bad key in {what}"))?
        } else {
            k.decode()
                .map_err(|_| format!("keys of {what} must be strings"))?
        };
        let v = value(v).ok_or_else(|| format!("{what}[{name}] has the wrong type"))?;
        Ok((name, v))
    })
    .collect()
}
