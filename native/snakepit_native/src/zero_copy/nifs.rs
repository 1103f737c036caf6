//! The zero-copy NIFs. Creating a region copies the caller's bytes once
//! (up to gigabytes), so that runs on a dirty scheduler; the rest are O(1).

use rustler::{Atom, Binary, Encoder, Env, ResourceArc, Term};

use super::{create, live, ref_term, Kind, Region, RegionError};
use crate::atoms;
use crate::error::NifError;

/// Turns zero copy on for this application start: `{:ok, limit}`, the
/// most shared regions alive at once (`max_live`, lowered to what the
/// process's descriptor and mapping limits allow). Regions under
/// `inline_below` bytes stay on the heap; workers may hand over at most
/// `max_bytes` (0: no limit).
#[rustler::nif]
fn zero_copy_enable(max_live: u64, inline_below: u64, max_bytes: u64) -> (Atom, u64) {
    (
        atoms::ok(),
        super::enable(max_live, inline_below, max_bytes),
    )
}

/// Turns zero copy off: new regions live on the heap, and the shared
/// regions of the start that ends can no longer be sent.
#[rustler::nif]
fn zero_copy_disable() -> Atom {
    super::disable();
    atoms::ok()
}

/// A new region of `kind` (`:dlpack` or `:arrow`) holding a copy of
/// `data`, described by `dtype` and `shape`: `{:ok, %Snakepit.ZeroCopyRef{}}`.
/// The caller has checked the description against the bytes.
#[rustler::nif(schedule = "DirtyCpu")]
fn zero_copy_create<'a>(
    env: Env<'a>,
    kind: Atom,
    data: Binary<'a>,
    dtype: Option<String>,
    shape: Option<Vec<u64>>,
) -> Term<'a> {
    let kind = if kind == atoms::arrow() {
        Kind::Arrow
    } else if kind == atoms::dlpack() {
        Kind::Dlpack
    } else {
        return NifError::invalid("kind must be :dlpack or :arrow").encode(env);
    };
    match create(kind, data.as_slice()) {
        Ok(mut region) => {
            region.dtype = dtype;
            region.shape = shape;
            (atoms::ok(), ref_term(env, ResourceArc::new(region))).encode(env)
        }
        Err(err @ RegionError::Exhausted(_)) => {
            NifError::new(atoms::resource_exhausted(), err.to_string()).encode(env)
        }
        Err(RegionError::Io(err)) => {
            NifError::os(&err, "cannot create a shared-memory region").encode(env)
        }
    }
}

fn closed_error() -> NifError {
    NifError::new(atoms::closed(), "the zero-copy ref was closed")
}

/// The region's bytes as a binary backed by the region itself (no copy):
/// it stays valid while referenced, after `close` too.
#[rustler::nif]
fn zero_copy_binary(env: Env, region: ResourceArc<Region>) -> Term {
    if region.is_closed() {
        return closed_error().encode(env);
    }
    let binary = region.make_binary(env, |r| r.bytes());
    (atoms::ok(), binary).encode(env)
}

/// Closes the region's memory file (it can no longer be sent); idempotent.
#[rustler::nif]
fn zero_copy_close(region: ResourceArc<Region>) -> Atom {
    region.close();
    atoms::ok()
}

/// `{closed, path | nil}` of one region, for tests and diagnostics.
#[rustler::nif]
fn zero_copy_region_info(env: Env, region: ResourceArc<Region>) -> Term {
    (region.is_closed(), region.path()).encode(env)
}

/// `{regions, bytes, shared, limit}`: regions alive in this VM (closed
/// ones still referenced included: their memory is still held), their
/// bytes, how many of them are shared, and the most shared ones allowed.
#[rustler::nif]
fn zero_copy_live() -> (u64, u64, u64, u64) {
    live()
}
