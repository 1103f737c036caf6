//! Regions as Elixir sees them: the `%Snakepit.ZeroCopyRef{}` struct, and
//! a worker's reply with a struct in place of each of its markers.

use rustler::{Encoder, Env, ResourceArc, Term};
use serde_json::Value;

use super::marker::marker_body;
use super::{Owner, Region};
use crate::atoms;
use crate::json::term::{to_term, to_term_with};

/// `dtype` as a fixed atom when it is one of the known element types (never
/// an atom made from data), else as a string.
fn dtype_term<'a>(env: Env<'a>, dtype: &str) -> Term<'a> {
    let atom = match dtype {
        "float16" => atoms::float16(),
        "bfloat16" => atoms::bfloat16(),
        "float32" => atoms::float32(),
        "float64" => atoms::float64(),
        "int8" => atoms::int8(),
        "int16" => atoms::int16(),
        "int32" => atoms::int32(),
        "int64" => atoms::int64(),
        "uint8" => atoms::uint8(),
        "uint16" => atoms::uint16(),
        "uint32" => atoms::uint32(),
        "uint64" => atoms::uint64(),
        "bool" => atoms::bool_(),
        "complex64" => atoms::complex64(),
        "complex128" => atoms::complex128(),
        other => return other.encode(env),
    };
    atom.encode(env)
}

/// The `%Snakepit.ZeroCopyRef{}` for `region`.
pub fn ref_term<'a>(env: Env<'a>, region: ResourceArc<Region>) -> Term<'a> {
    let nil = atoms::nil().encode(env);
    let dtype = region.dtype.as_deref().map_or(nil, |d| dtype_term(env, d));
    let shape = region.shape.as_ref().map_or(nil, |dims| {
        let dims: Vec<Term> = dims.iter().map(|d| d.encode(env)).collect();
        rustler::types::tuple::make_tuple(env, &dims)
    });
    let metadata = region.metadata.as_ref().map_or(nil, |m| to_term(env, m));
    let owner = match region.owner {
        Owner::Elixir => atoms::elixir(),
        Owner::Python => atoms::python(),
    };
    let pairs: [(Term, Term); 10] = [
        (
            rustler::types::atom::__struct__().encode(env),
            atoms::zero_copy_ref_module().encode(env),
        ),
        (atoms::bytes().encode(env), region.bytes().len().encode(env)),
        (atoms::copy().encode(env), (!region.is_shared()).encode(env)),
        (atoms::device().encode(env), atoms::cpu().encode(env)),
        (atoms::dtype().encode(env), dtype),
        (atoms::kind().encode(env), region.kind.atom().encode(env)),
        (atoms::metadata().encode(env), metadata),
        (atoms::owner().encode(env), owner.encode(env)),
        (atoms::ref_().encode(env), region.encode(env)),
        (atoms::shape().encode(env), shape),
    ];
    let (keys, values): (Vec<Term>, Vec<Term>) = pairs.into_iter().unzip();
    Term::map_from_term_arrays(env, &keys, &values).unwrap_or(nil)
}

/// The term of a worker's reply `value`, with each zero-copy marker
/// replaced by the next of `regions` (`marker::adopt_all` of the same
/// value, which found them in the order `to_term_with` meets them).
pub fn with_regions<'a>(
    env: Env<'a>,
    value: &Value,
    regions: Vec<ResourceArc<Region>>,
) -> Term<'a> {
    let mut regions = regions.into_iter();
    to_term_with(env, value, &mut |map| {
        marker_body(map)?;
        regions.next().map(|region| ref_term(env, region))
    })
}
