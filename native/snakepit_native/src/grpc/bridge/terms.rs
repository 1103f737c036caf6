//! Request terms for Elixir, built in the dispatcher message's env.

use std::collections::HashMap;

use rustler::{Atom, Encoder, Env, Term};
use tonic::Request;

use crate::wire::pb::ToolSpec;
use crate::{atoms, json};

/// The gRPC metadata key a worker puts its id under.
const WORKER_ID_HEADER: &str = "x-snakepit-worker-id";

pub(super) fn map<'a>(env: Env<'a>, pairs: &[(Atom, Term<'a>)]) -> Term<'a> {
    Term::map_from_pairs(env, pairs).expect("atom keys are unique")
}

pub(super) fn binary_map<'a>(env: Env<'a>, binaries: &HashMap<String, Vec<u8>>) -> Term<'a> {
    let keys: Vec<Term> = binaries.keys().map(|k| k.encode(env)).collect();
    let values: Vec<Term> = binaries
        .values()
        .map(|v| crate::reply::binary(env, v))
        .collect();
    Term::map_from_term_arrays(env, &keys, &values).expect("keys come from a map")
}

/// The worker id a request came with, from its metadata.
pub(super) fn worker_header<T>(request: &Request<T>) -> String {
    request
        .metadata()
        .get(WORKER_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// The worker id of a request: its own field, else the worker-id header.
pub(super) fn request_worker<T>(request: &Request<T>, field: impl Fn(&T) -> &String) -> String {
    let own = field(request.get_ref());
    if own.is_empty() {
        worker_header(request)
    } else {
        own.clone()
    }
}

pub(super) fn spec_term<'a>(env: Env<'a>, spec: &ToolSpec) -> Term<'a> {
    let params: Vec<Term> = spec
        .parameters
        .iter()
        .map(|p| {
            let mut pairs = vec![
                (atoms::name(), p.name.encode(env)),
                (atoms::type_(), p.r#type.encode(env)),
                (atoms::required(), p.required.encode(env)),
                (atoms::description(), p.description.encode(env)),
            ];
            if !p.default_json.is_empty() {
                if let Ok(value) = json::parse(p.default_json.as_bytes()) {
                    pairs.push((atoms::default(), json::to_term(env, &value)));
                }
            }
            map(env, &pairs)
        })
        .collect();
    map(
        env,
        &[
            (atoms::name(), spec.name.encode(env)),
            (atoms::description(), spec.description.encode(env)),
            (atoms::parameters(), params.encode(env)),
            (
                atoms::supports_streaming(),
                spec.supports_streaming.encode(env),
            ),
            (atoms::metadata(), spec.metadata.encode(env)),
        ],
    )
}
