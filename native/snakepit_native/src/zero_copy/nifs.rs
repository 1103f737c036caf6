//! The zero-copy NIFs. Creating a region copies the caller's bytes once
//! (up to gigabytes), so that runs on a dirty scheduler; the rest are O(1).

use rustler::{Atom, Binary, Env, ResourceArc, Term};
use tonic::Code;

use super::refs::ref_term;
use super::{create, live, Kind, Region, RegionError};
use crate::atoms;
use crate::error::{self, NativeError};

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
) -> Result<Term<'a>, NativeError> {
    let kind = if kind == atoms::arrow() {
        Kind::Arrow
    } else if kind == atoms::dlpack() {
        Kind::Dlpack
    } else {
        return Err(NativeError::invalid("kind must be :dlpack or :arrow"));
    };
    let mut region = create(kind, data.as_slice()).map_err(|err| match err {
        RegionError::Exhausted(_) => NativeError::status(Code::ResourceExhausted, err.to_string()),
        RegionError::Io(err) => NativeError::os(&err, "cannot create a shared-memory region"),
    })?;
    region.dtype = dtype;
    region.shape = shape;
    Ok(ref_term(env, ResourceArc::new(region)))
}

/// The region's bytes as a binary backed by the region itself (no copy):
/// it stays valid while referenced, after `close` too.
#[rustler::nif]
fn zero_copy_binary(env: Env, region: ResourceArc<Region>) -> Result<Binary, NativeError> {
    if region.is_closed() {
        return Err(NativeError::new(
            error::Kind::Closed,
            "the zero-copy ref was closed",
        ));
    }
    Ok(region.make_binary(env, |r| r.bytes()))
}

/// Closes the region's memory file (it can no longer be sent); idempotent.
#[rustler::nif]
fn zero_copy_close(region: ResourceArc<Region>) -> Atom {
    region.close();
    atoms::ok()
}

/// `{closed, path | nil}` of one region, for tests and diagnostics.
#[rustler::nif]
fn zero_copy_region_info(region: ResourceArc<Region>) -> (bool, Option<String>) {
    (region.is_closed(), region.path())
}

/// `{regions, bytes, shared, limit}`: regions alive in this VM (closed
/// ones still referenced included: their memory is still held), their
/// bytes, how many of them are shared, and the most shared ones allowed.
#[rustler::nif]
fn zero_copy_live() -> (u64, u64, u64, u64) {
    live()
}
