//! The zero-copy NIFs. Creating a region copies the caller's bytes once
//! (up to gigabytes) and directories are made and removed with file system
//! calls, so those run on dirty schedulers; the rest are O(1).

use std::path::PathBuf;

use rustler::{Atom, Binary, Encoder, Env, ResourceArc, Term};
use snakepit_core::shm;

use super::{create, live, ref_term, set_dir, Kind, Region};
use crate::atoms;
use crate::error::NifError;

/// Opens this application start's region directory under `base` (`nil`:
/// `/dev/shm`, else the temporary directory), first removing the
/// directories that killed VMs left. `{:ok, {dir, removed_stale}}`.
#[rustler::nif(schedule = "DirtyIo")]
fn zero_copy_open_dir(env: Env, base: Option<String>) -> Term {
    let base = base.map_or_else(shm::default_base, PathBuf::from);
    let removed = shm::remove_stale_dirs(&base);
    match shm::create_instance_dir(&base) {
        Ok(dir) => {
            let shown = dir.to_string_lossy().into_owned();
            if let Some(old) = set_dir(Some(dir)) {
                let _ = shm::remove_dir(&old);
            }
            (atoms::ok(), (shown, removed)).encode(env)
        }
        Err(err) => NifError::os(
            &err,
            &format!("cannot create a directory in {}", base.display()),
        )
        .encode(env),
    }
}

/// Removes the region directory and every region file in it; regions
/// still referenced keep their mappings but can no longer be sent.
#[rustler::nif(schedule = "DirtyIo")]
fn zero_copy_close_dir() -> Atom {
    if let Some(dir) = set_dir(None) {
        let _ = shm::remove_dir(&dir);
    }
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
        Err(err) => NifError::os(&err, "cannot create a shared-memory region").encode(env),
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

/// Releases the region's file; idempotent.
#[rustler::nif]
fn zero_copy_close(region: ResourceArc<Region>) -> Atom {
    region.close();
    atoms::ok()
}

/// `{closed, path | nil}` of one region, for tests and diagnostics.
#[rustler::nif]
fn zero_copy_region_info(env: Env, region: ResourceArc<Region>) -> Term {
    let path = region
        .file
        .as_ref()
        .map(|f| f.path.to_string_lossy().into_owned());
    (region.is_closed(), path).encode(env)
}

/// `{regions, bytes}` alive in this VM (closed ones still referenced
/// included: their memory is still held).
#[rustler::nif]
fn zero_copy_live() -> (u64, u64) {
    live()
}
